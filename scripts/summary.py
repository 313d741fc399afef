"""Rule summary: cohort table (summary.tsv) and figure (summary.png)."""

from collections import Counter

from regflow.qc import summary_table, tissue_loss_review, write_summary
from regflow.runlog import read_json, stage_log

with stage_log(snakemake.log[0], "summary", "cohort") as log:
    metrics = [read_json(path) for path in snakemake.input.metrics]
    integrity = {report["sample"]: report for report in map(read_json, snakemake.input.integrity)}
    for entry in metrics:
        if entry["sample"] in integrity:
            tissue_loss_review(entry, integrity[entry["sample"]], snakemake.params.max_tissue_loss)
    table = summary_table(metrics)
    write_summary(table, snakemake.output.table, snakemake.output.figure)
    log.info("%d sample(s): %s", len(table), dict(Counter(row["status"] for row in table)))
