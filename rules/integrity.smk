rule integrity:
    input:
        unpack(integrity_inputs),
    output:
        json=f"{OUTDIR}/{{sample}}/integrity.json",
        table=f"{OUTDIR}/{{sample}}/integrity.tsv",
        map=f"{OUTDIR}/{{sample}}/integrity.ome.tif",
        figure=f"{OUTDIR}/{{sample}}/integrity.png",
    log:
        f"{OUTDIR}/logs/integrity/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/integrity/{{sample}}.tsv"
    conda:
        "../envs/regflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        section=config["integrity"],
        pixel_size=sample_value("reference_pixel_size_um"),
        code=library_hash("integrity", "formats", "io", "qc", "runlog"),
    script:
        "../scripts/integrity.py"
