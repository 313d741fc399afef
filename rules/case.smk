# Case-level outputs of an images sheet: the merged fluorescence stack, the case QC figure and
# the rounds' integrity in long form.


rule merge:
    input:
        images=case_value("merge_paths"),
    output:
        image_output(f"{OUTDIR}/{{case}}/merged.{IMAGE}"),
    log:
        f"{OUTDIR}/logs/merge/{{case}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/merge/{{case}}.tsv"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=120,
    params:
        section=config["warp"],
        images=case_value("merge_images"),
        reference=case_value("reference"),
        reference_pixel_size=case_value("reference_pixel_size_um"),
        code=library_hash("io", "formats", "runlog"),
    script:
        "../scripts/merge.py"


rule case_qc:
    input:
        reference=case_value("reference_path"),
        warped=case_value("warped"),
        metrics=case_value("metrics"),
        integrity=case_value("integrity_reports"),
        # serial sections: the stack solve's report and orthogonal views
        serial=case_value("stack_outputs"),
    output:
        report(
            f"{OUTDIR}/{{case}}/case_qc.png",
            caption="../report/case_qc.rst",
            category="Cases",
            labels={"case": "{case}"},
        ),
    log:
        f"{OUTDIR}/logs/case_qc/{{case}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/case_qc/{{case}}.tsv"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=15,
    params:
        images=case_value("images"),
        modalities=case_value("modalities"),
        channels=case_value("channels"),
        reference=case_value("reference"),
        reference_modality=case_value("reference_modality"),
        reference_channel=case_value("reference_channel"),
        max_tissue_loss=config["qc"]["max_tissue_loss"],
        thickness=case_value("thickness_um"),
        code=library_hash("qc", "formats", "channels", "preprocess", "runlog"),
    script:
        "../scripts/case_qc.py"


rule case_integrity:
    input:
        tables=case_value("integrity_tables"),
    output:
        f"{OUTDIR}/{{case}}/integrity.tsv",
    log:
        f"{OUTDIR}/logs/case_integrity/{{case}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/case_integrity/{{case}}.tsv"
    localrule: True
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        images=case_value("integrity_images"),
    script:
        "../scripts/case_integrity.py"
