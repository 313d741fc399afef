rule warp:
    input:
        moving=sample_value("moving"),
        transform=rules.refine.output.transform,
        info=rules.preprocess.output.info,
    output:
        image_output(f"{OUTDIR}/{{sample}}/warped.{IMAGE}"),
    log:
        f"{OUTDIR}/logs/warp/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/warp/{{sample}}.tsv"
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
        transform=rules.refine.output.transform,
    output:
        f"{OUTDIR}/{{sample}}/landmarks_warped.csv",
    log:
        f"{OUTDIR}/logs/points/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/points/{{sample}}.tsv"
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


rule annotations:
    input:
        geojson=annotation_value("file"),
        transform=rules.refine.output.transform,
    output:
        f"{OUTDIR}/{{sample}}/annotations_{{direction}}.geojson",
    log:
        f"{OUTDIR}/logs/annotations_{{direction}}/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/annotations_{{direction}}/{{sample}}.tsv"
    wildcard_constraints:
        direction="warped|in_moving",
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        section=config["annotations"],
        direction=annotation_value("direction"),
        source_image=annotation_value("image"),
        source_pixel_size=annotation_value("pixel_size"),
        code=library_hash("annotations", "points", "transform", "formats", "runlog"),
    script:
        "../scripts/annotations.py"


rule associated:
    input:
        image=associated_path,
        transform=rules.refine.output.transform,
        info=rules.preprocess.output.info,
    output:
        image_output(f"{OUTDIR}/{{sample}}/associated/{{name}}.{IMAGE}"),
    log:
        f"{OUTDIR}/logs/associated/{{sample}}/{{name}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/associated/{{sample}}/{{name}}.tsv"
    wildcard_constraints:
        name=ID_PATTERN,
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
        "../scripts/associated.py"
