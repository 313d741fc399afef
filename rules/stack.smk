# Serial sections (cases.chain): one transform per section from the registrations of
# neighbours at distances 1 and 2 (regflow.stack), and the volume of every case with an order.


rule stack:
    input:
        unpack(stack_inputs),
    output:
        transforms=directory(f"{OUTDIR}/{{case}}/stack"),
        info=f"{OUTDIR}/{{case}}/stack.json",
    log:
        f"{OUTDIR}/logs/stack/{{case}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/stack/{{case}}.tsv"
    priority: 10
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_stack,
        runtime=30,
    params:
        section=config["cases"],
        links=case_value("link_pairs"),
        order=case_value("ordered"),
        positions=case_value("positions"),
        reference=case_value("reference"),
        code=library_hash("stack", "qc", "review", "transform", "runlog"),
    script:
        "../scripts/stack.py"


rule volume:
    input:
        planes=case_value("planes"),
    # OME-Zarr always; with warp.format ome-tiff also an OME-TIFF z-stack, in the same job
    output:
        **VOLUME_OUTPUTS,
    log:
        f"{OUTDIR}/logs/volume/{{case}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/volume/{{case}}.tsv"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=120,
    params:
        section=config["warp"],
        order=case_value("ordered"),
        thickness=case_value("thickness_um"),
        reference=case_value("reference"),
        reference_pixel_size=case_value("reference_pixel_size_um"),
        code=library_hash("volume", "io", "formats", "runlog"),
    script:
        "../scripts/volume.py"
