rule qc:
    input:
        unpack(qc_inputs),
    output:
        metrics=f"{OUTDIR}/{{sample}}/metrics.json",
        figure=report(
            f"{OUTDIR}/{{sample}}/qc.png",
            caption="../report/qc.rst",
            category="Per-sample QC",
            labels={"sample": "{sample}"},
        ),
    log:
        f"{OUTDIR}/logs/qc/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/qc/{{sample}}.tsv"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=15,
    params:
        section=config["qc"],
        code=library_hash(
            "qc",
            "review",
            "metrics",
            "rigid",
            "transform",
            "points",
            "annotations",
            "runlog",
        ),
    script:
        "../scripts/qc.py"


rule summary:
    input:
        metrics=expand(f"{OUTDIR}/{{sample}}/metrics.json", sample=SECTIONS),
        # rounds that share a nuclear channel: the tissue lost since the reference
        integrity=[
            f"{OUTDIR}/{sample}/integrity.json"
            for sample in SECTIONS
            if has_integrity(sample)
        ],
    output:
        table=report(
            f"{OUTDIR}/summary.tsv",
            caption="../report/summary_table.rst",
            category="Cohort summary",
        ),
        figure=report(
            f"{OUTDIR}/summary.png",
            caption="../report/summary.rst",
            category="Cohort summary",
        ),
    log:
        f"{OUTDIR}/logs/summary.log",
    benchmark:
        f"{OUTDIR}/benchmarks/summary.tsv"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        max_tissue_loss=config["qc"]["max_tissue_loss"],
        code=library_hash("qc", "runlog"),
    script:
        "../scripts/summary.py"
