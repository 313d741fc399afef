rule refine:
    input:
        unpack(refine_inputs),
    output:
        transform=f"{OUTDIR}/{{sample}}/transform.npz",
        info=f"{OUTDIR}/{{sample}}/refine.json",
    log:
        f"{OUTDIR}/logs/refine/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/refine/{{sample}}.tsv"
    priority: 10
    conda:
        "../envs/regflow.yaml"
    # tiles in parallel on the job's threads; memory: a tile per thread and the node grid
    threads: warp_threads
    resources:
        mem_mb=mem_mb_refine,
        runtime=60,
    params:
        section=config["refine"],
        code=library_hash(
            "refine", "flow", "formats", "preprocess", "transform", "runlog"
        ),
    script:
        "../scripts/refine.py"
