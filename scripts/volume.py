"""Rule volume: a case's sections in order as one volume (OME-Zarr, and with TIFF outputs an
OME-TIFF z-stack too), plane z = that section's image in the reference frame."""

import regflow

regflow.own_threads_only()  # before numpy is imported
from regflow.formats import pixel_size_override, read_info
from regflow.runlog import stage_log
from regflow.volume import write_volume_tiff, write_volume_zarr

case = snakemake.wildcards.case
settings = snakemake.params.section

with stage_log(snakemake.log[0], "volume", case) as log:
    order = list(snakemake.params.order)
    reference = read_info(snakemake.input.planes[order.index(snakemake.params.reference)])
    pixel_size = (
        pixel_size_override(snakemake.params.reference_pixel_size) or reference.pixel_size_um
    )
    thickness = float(snakemake.params.thickness) if snakemake.params.thickness else None
    if thickness is None:
        log.warning("case %s has no thickness_um: the volume's z scale is 1 (unitless); add "
                    "the section thickness to the images sheet", case)  # fmt: skip
    # the OME-Zarr from the planes; the OME-TIFF z-stack (TIFF outputs) from the zarr's levels
    compression = None if settings["compression"] in ("none", "jpeg") else "zlib"
    written = write_volume_zarr(
        snakemake.output.zarr,
        list(snakemake.input.planes),
        pixel_size,
        thickness,
        tile=settings["tile"],
        pyramid_min_size=settings["pyramid_min_size"],
        compression=compression,
    )
    if hasattr(snakemake.output, "tiff"):
        write_volume_tiff(snakemake.output.tiff, snakemake.output.zarr, tile=settings["tile"],
                          compression=compression)  # fmt: skip
    log.info("volume of %d sections %s, %s, %d level(s), z %s µm, y/x %s µm: %s", len(order),
             order, written["dtype"], written["levels"], thickness, pixel_size,
             ", ".join(snakemake.output))  # fmt: skip
