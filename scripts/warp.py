"""Rule warp: all channels of the moving image onto the fixed grid, as pyramidal OME-TIFF.

Streams: the moving image is read region by region and the output written tile by tile, so
the job's memory does not grow with the slide size.
"""

import numpy as np
from regflow.formats import pixel_size_override
from regflow.io import RegionReader, read_image, read_info, write_ome_tiff_tiled
from regflow.runlog import read_json, stage_log
from regflow.transform import Transform
from regflow.warp import background_value, warp_blocks

sample = snakemake.wildcards.sample
settings = snakemake.params.section

with stage_log(snakemake.log[0], "warp", sample) as log:
    info = read_json(snakemake.input.info)
    moving_info = info["moving"]
    transform = Transform.load(snakemake.input.transform)
    header = read_info(snakemake.input.moving)
    with RegionReader(snakemake.input.moving, level=0) as source:
        n_channels = source.shape[0]
        if moving_info["rgb"] and n_channels == 4:
            log.info("dropping the alpha channel of an RGBA image")
            n_channels = 3
        names = moving_info["channel_names"][:n_channels]
        if settings["fill"] == "auto":
            # The background estimate needs only a coarse view: the smallest pyramid level.
            coarse = read_image(snakemake.input.moving, len(header.level_shapes) - 1)
            fill = background_value(coarse, moving_info["modality"])
        else:
            fill = np.zeros(source.shape[0])
        blocks = warp_blocks(
            source,
            transform,
            fill=fill,
            tile=settings["tile"],
            order=settings["order"],
            threads=snakemake.threads,
        )
        # The output is on the reference's grid: its pixel size (the sheet's, else the file's).
        pixel_size = (
            pixel_size_override(snakemake.params.reference_pixel_size)
            or read_info(snakemake.params.reference).pixel_size_um
            or moving_info["pixel_size_um"]
        )
        write_ome_tiff_tiled(
            snakemake.output[0],
            (n_channels, *transform.fixed_shape),
            source.dtype,
            ((row, col, block[:n_channels]) for row, col, block in blocks),
            channel_names=names,
            pixel_size_um=pixel_size,
            rgb=moving_info["rgb"],
            tile=settings["tile"],
            pyramid_min_size=settings["pyramid_min_size"],
            compression=None if settings["compression"] == "none" else settings["compression"],
        )
    log.info(
        "wrote %s: %d channel(s) %s, %s, %s, pixel size %s µm",
        snakemake.output[0],
        n_channels,
        names,
        transform.fixed_shape,
        source.dtype,
        pixel_size,
    )
