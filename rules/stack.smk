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
        mem_mb=2000,
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
    output:
        zarr=directory(f"{OUTDIR}/{{case}}/volume.ome.zarr"),
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
        section=config["warp"] | {"format": "ome-zarr"},
        order=case_value("ordered"),
        thickness=case_value("thickness_um"),
        reference=case_value("reference"),
        reference_pixel_size=case_value("reference_pixel_size_um"),
        code=library_hash("volume", "io", "formats", "runlog"),
    script:
        "../scripts/volume.py"


rule volume_tiff:
    input:
        planes=case_value("planes"),
    output:
        f"{OUTDIR}/{{case}}/volume.ome.tif",
    log:
        f"{OUTDIR}/logs/volume_tiff/{{case}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/volume_tiff/{{case}}.tsv"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=120,
    params:
        section=config["warp"] | {"format": "ome-tiff"},
        order=case_value("ordered"),
        thickness=case_value("thickness_um"),
        reference=case_value("reference"),
        reference_pixel_size=case_value("reference_pixel_size_um"),
        code=library_hash("volume", "io", "formats", "runlog"),
    script:
        "../scripts/volume.py"
