rule warp:
    input:
        moving=sample_value("moving"),
        transform=rules.flow.output.transform,
        info=rules.preprocess.output.info,
    output:
        f"{OUTDIR}/{{sample}}/warped.ome.tif",
    log:
        f"{OUTDIR}/logs/warp/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/warp/{{sample}}.tsv"
    group:
        "sample"
    conda:
        "../envs/regflow.yaml"
    threads: warp_threads
    resources:
        mem_mb=mem_mb_warp,
        runtime=60,
    params:
        section=config["warp"],
        reference=sample_value("reference_path"),
        reference_pixel_size=sample_value("reference_pixel_size_um"),
        code=library_hash("io", "formats", "warp", "transform", "runlog"),
    script:
        "../scripts/warp.py"


rule points:
    input:
        points=sample_value("moving_landmarks"),
        transform=rules.flow.output.transform,
    output:
        f"{OUTDIR}/{{sample}}/landmarks_warped.csv",
    log:
        f"{OUTDIR}/logs/points/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/points/{{sample}}.tsv"
    group:
        "sample"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        direction="moving_to_fixed",
        code=library_hash("points", "transform", "runlog"),
    script:
        "../scripts/points.py"
