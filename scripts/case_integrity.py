"""Rule case_integrity: every round's per-cell integrity in long form (one row per cell and
round: ``cell, x, y, image, corr, intensity_ratio, lost``)."""

import csv
import os

from regflow.runlog import stage_log

case = snakemake.wildcards.case

with stage_log(snakemake.log[0], "case_integrity", case) as log:
    tmp = f"{snakemake.output[0]}.{os.getpid()}.tmp"
    rows = 0
    with open(tmp, "w", newline="") as out:
        writer = csv.writer(out, delimiter="\t")
        writer.writerow(["cell", "x", "y", "image", "corr", "intensity_ratio", "lost"])
        for image, path in zip(snakemake.params.images, snakemake.input.tables, strict=True):
            with open(path, newline="") as handle:
                for record in csv.DictReader(handle, delimiter="\t"):
                    cells = [record[k] for k in ("cell", "x", "y")]
                    measures = [record[k] for k in ("corr", "intensity_ratio", "lost")]
                    writer.writerow([*cells, image, *measures])
                    rows += 1
    os.replace(tmp, snakemake.output[0])
    log.info("case %s: %d row(s) from %d round(s)", case, rows, len(snakemake.input.tables))
