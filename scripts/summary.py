"""Rule summary: cohort table (summary.tsv) and figure (summary.png)."""

from collections import Counter

from regflow.qc import summary_table, write_summary
from regflow.runlog import read_json, stage_log

with stage_log(snakemake.log[0], "summary", "cohort") as log:
    table = summary_table([read_json(path) for path in snakemake.input])
    write_summary(table, snakemake.output.table, snakemake.output.figure)
    log.info("%d sample(s): %s", len(table), dict(Counter(row["status"] for row in table)))
