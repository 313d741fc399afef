def qc_inputs(wildcards):
    inputs = {
        "fixed": rules.preprocess.output.fixed.format(sample=wildcards.sample),
        "moving": rules.preprocess.output.moving.format(sample=wildcards.sample),
        "preprocess": rules.preprocess.output.info.format(sample=wildcards.sample),
        "rigid": rules.rigid.output[0].format(sample=wildcards.sample),
        "flow": rules.flow.output.info.format(sample=wildcards.sample),
        "transform": rules.flow.output.transform.format(sample=wildcards.sample),
    }
    if has_landmarks(wildcards.sample, "fixed") and has_landmarks(wildcards.sample, "moving"):
        inputs["fixed_landmarks"] = samples.loc[wildcards.sample, "fixed_landmarks"]
        inputs["moving_landmarks"] = samples.loc[wildcards.sample, "moving_landmarks"]
        inputs["landmarks_warped"] = rules.points.output[0].format(sample=wildcards.sample)
    return inputs


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
    params:
        section=config["qc"],
        code=library_hash("qc", "metrics", "rigid", "transform", "points", "runlog"),
    log:
        f"{OUTDIR}/logs/qc/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/qc/{{sample}}.tsv"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=15,
    group:
        "sample"
    conda:
        "../envs/regflow.yaml"
    script:
        "../scripts/qc.py"


rule summary:
    input:
        expand(f"{OUTDIR}/{{sample}}/metrics.json", sample=samples.index),
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
    params:
        code=library_hash("qc", "runlog"),
    log:
        f"{OUTDIR}/logs/summary.log",
    benchmark:
        f"{OUTDIR}/benchmarks/summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/regflow.yaml"
    script:
        "../scripts/summary.py"
