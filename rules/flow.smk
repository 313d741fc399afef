rule flow:
    input:
        fixed=rules.preprocess.output.fixed,
        moving=rules.preprocess.output.moving,
        rigid=rules.rigid.output[0],
        info=rules.preprocess.output.info,
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
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=30,
    params:
        section=config["flow"],
        # serial sections (a stack): the flow between sections is smoothed over tissue scale
        serial=flow_serial,
        code=library_hash("flow", "rigid", "review", "transform", "metrics", "runlog"),
    script:
        "../scripts/flow.py"
