"""Rule summary: cohort table (summary.tsv) and figure (summary.png)."""

import os
from pathlib import Path

from regflow.qc import summary_figure, summary_table
from regflow.runlog import read_json, stage_log

with stage_log(snakemake.log[0], "summary", "cohort") as log:
    table = summary_table([read_json(path) for path in snakemake.input])
    output = Path(snakemake.output.table)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    table.to_csv(tmp, sep="\t", index=False, na_rep="", float_format="%.6g")
    os.replace(tmp, output)
    summary_figure(snakemake.output.figure, table)
    log.info("%d sample(s): %s", len(table), table["status"].value_counts().to_dict())
