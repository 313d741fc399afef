rule rigid:
    input:
        fixed=rules.preprocess.output.fixed,
        moving=rules.preprocess.output.moving,
        info=rules.preprocess.output.info,
    output:
        f"{OUTDIR}/{{sample}}/rigid.json",
    log:
        f"{OUTDIR}/logs/rigid/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/rigid/{{sample}}.tsv"
    # registrations first, the leaves (warp, points, qc) fill the cores after: the last
    # pair's chain does not start late and leave one core idle at the end
    priority: 10
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
