"""Rule points: map a point CSV (landmarks, centroids) between the images."""

import numpy as np
from regflow.points import map_points_table, read_points_table, write_points
from regflow.runlog import stage_log
from regflow.transform import Transform

sample = snakemake.wildcards.sample

with stage_log(snakemake.log[0], "points", sample) as log:
    table = read_points_table(snakemake.input.points)
    transform = Transform.load(snakemake.input.transform)
    mapped = map_points_table(table, transform, snakemake.params.direction)
    write_points(snakemake.output[0], mapped)
    unmapped = int(np.isnan(mapped.xy[:, 0]).sum() - np.isnan(table.xy[:, 0]).sum())
    log.info(
        "mapped %d point(s) %s; %d could not be mapped",
        len(table),
        snakemake.params.direction,
        unmapped,
    )
