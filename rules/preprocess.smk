rule preprocess:
    input:
        fixed=sample_value("fixed"),
        moving=sample_value("moving"),
    output:
        fixed=f"{OUTDIR}/{{sample}}/preprocess/fixed.npz",
        moving=f"{OUTDIR}/{{sample}}/preprocess/moving.npz",
        info=f"{OUTDIR}/{{sample}}/preprocess/preprocess.json",
    log:
        f"{OUTDIR}/logs/preprocess/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/preprocess/{{sample}}.tsv"
    # registrations first, the leaves (warp, points, qc) fill the cores after: the last
    # pair's chain does not start late and leave one core idle at the end
    priority: 10
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_preprocess,
        runtime=30,
    params:
        section=config["preprocess"],
        row=sample_row,
        code=library_hash("io", "formats", "channels", "preprocess", "runlog"),
    script:
        "../scripts/preprocess.py"
