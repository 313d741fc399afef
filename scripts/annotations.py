"""Rule annotations: a QuPath GeoJSON mapped between the images (annotations_warped: moving →
fixed; annotations_in_moving: fixed/reference → moving), as the landmarks are."""

from regflow.annotations import map_features, read_features, write_features
from regflow.formats import pixel_size_override, read_info
from regflow.runlog import stage_log
from regflow.transform import Transform

sample = snakemake.wildcards.sample
settings = snakemake.params.section

with stage_log(snakemake.log[0], "annotations", sample) as log:
    container, features = read_features(snakemake.input.geojson)
    pixel_size = None
    if settings["unit"] == "um":  # of the image the annotations were drawn on
        pixel_size = pixel_size_override(snakemake.params.source_pixel_size) or (
            read_info(snakemake.params.source_image).pixel_size_um
        )
    mapped = map_features(
        features,
        Transform.load(snakemake.input.transform),
        snakemake.params.direction,
        densify_px=settings["densify_px"],
        source_pixel_size_um=pixel_size,
        unit=settings["unit"],
    )
    write_features(snakemake.output[0], container, mapped)
    partial = sum(1 for f in mapped if "regflow_unmapped_vertices" in (f.get("properties") or {}))
    log.info(
        "mapped %d feature(s) %s; %d with vertices outside the overlap",
        len(mapped),
        snakemake.params.direction,
        partial,
    )
