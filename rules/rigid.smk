rule rigid:
    input:
        fixed=rules.preprocess.output.fixed,
        moving=rules.preprocess.output.moving,
    output:
        f"{OUTDIR}/{{sample}}/rigid.json",
    log:
        f"{OUTDIR}/logs/rigid/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/rigid/{{sample}}.tsv"
    group:
        "sample"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        section=config["rigid"],
        code=library_hash("rigid", "metrics", "runlog"),
    script:
        "../scripts/rigid.py"
