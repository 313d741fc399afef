rule rigid:
    input:
        fixed=rules.preprocess.output.fixed,
        moving=rules.preprocess.output.moving,
    output:
        f"{OUTDIR}/{{sample}}/rigid.json",
    params:
        section=config["rigid"],
        code=library_hash("rigid", "metrics", "runlog"),
    log:
        f"{OUTDIR}/logs/rigid/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/rigid/{{sample}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    group:
        "sample"
    conda:
        "../envs/regflow.yaml"
    script:
        "../scripts/rigid.py"
