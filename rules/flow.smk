rule flow:
    input:
        # chain mode: the neighbour's transform to the reference, composed with this step
        unpack(previous_transform),
        fixed=rules.preprocess.output.fixed,
        moving=rules.preprocess.output.moving,
        rigid=rules.rigid.output[0],
    output:
        # the coarse transform; refine adds the fine component (transform.npz)
        transform=f"{OUTDIR}/{{sample}}/flow/transform.npz",
        info=f"{OUTDIR}/{{sample}}/flow.json",
    log:
        f"{OUTDIR}/logs/flow/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/flow/{{sample}}.tsv"
    # registrations first, the leaves (warp, points, qc) fill the cores after: the last
    # pair's chain does not start late and leave one core idle at the end
    priority: 10
    group:
        "sample"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=30,
    params:
        section=config["flow"],
        code=library_hash("flow", "rigid", "transform", "metrics", "runlog"),
    script:
        "../scripts/flow.py"
