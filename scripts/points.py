"""Rule points: map a point CSV (landmarks, centroids) between the images."""

from regflow.points import map_points_table, read_points_table, unmapped_reasons, write_points
from regflow.runlog import stage_log
from regflow.transform import Transform

sample = snakemake.wildcards.sample
direction = snakemake.params.direction

with stage_log(snakemake.log[0], "points", sample) as log:
    table = read_points_table(snakemake.input.points)
    transform = Transform.load(snakemake.input.transform)
    mapped = map_points_table(table, transform, direction)
    write_points(snakemake.output[0], mapped)
    reasons = unmapped_reasons(table.xy, mapped.xy, transform, direction)
    lost = reasons["outside_both_images"] + reasons["not_reached"]
    log.info("mapped %d of %d point(s) %s", len(table) - lost - reasons["missing"],
             len(table), direction)  # fmt: skip
    if reasons["missing"]:
        log.info("%d row(s) without coordinates in the input, left empty", reasons["missing"])
    if reasons["outside_both_images"]:
        log.warning(
            "%d point(s) not mapped: they lie outside both images (outside their own image, "
            "and the transform puts them outside the other); their X/Y are left empty",
            reasons["outside_both_images"],
        )
    if reasons["not_reached"]:
        log.warning(
            "%d point(s) not mapped: no position of the other image maps onto them (a fold "
            "or tear of the displacement field); their X/Y are left empty",
            reasons["not_reached"],
        )
