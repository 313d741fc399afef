rule flow:
    input:
        fixed=rules.preprocess.output.fixed,
        moving=rules.preprocess.output.moving,
        rigid=rules.rigid.output[0],
    output:
        transform=f"{OUTDIR}/{{sample}}/transform.npz",
        info=f"{OUTDIR}/{{sample}}/flow.json",
    params:
        section=config["flow"],
        code=library_hash("flow", "rigid", "transform", "metrics", "runlog"),
    log:
        f"{OUTDIR}/logs/flow/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/flow/{{sample}}.tsv"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=30,
    group:
        "sample"
    conda:
        "../envs/regflow.yaml"
    script:
        "../scripts/flow.py"
