"""Rule warp: all channels of the moving image onto the fixed grid, as pyramidal OME-TIFF."""

import numpy as np
from regflow.io import read_image, write_ome_tiff
from regflow.runlog import read_json, stage_log
from regflow.transform import Transform
from regflow.warp import background_value, warp_image

sample = snakemake.wildcards.sample
settings = snakemake.params.section

with stage_log(snakemake.log[0], "warp", sample) as log:
    info = read_json(snakemake.input.info)
    moving_info, fixed_info = info["moving"], info["fixed"]
    transform = Transform.load(snakemake.input.transform)
    moving = read_image(snakemake.input.moving)
    if moving_info["rgb"] and moving.shape[0] == 4:
        log.info("dropping the alpha channel of an RGBA image")
        moving = moving[:3]
    names = moving_info["channel_names"][: moving.shape[0]]
    if settings["fill"] == "auto":
        fill = background_value(moving, moving_info["modality"])
    else:
        fill = np.zeros(moving.shape[0])
    warped = warp_image(
        moving,
        transform,
        fill=fill,
        tile=settings["tile"],
        order=settings["order"],
        threads=snakemake.threads,
    )
    pixel_size = fixed_info["pixel_size_um"] or moving_info["pixel_size_um"]
    write_ome_tiff(
        snakemake.output[0],
        warped,
        channel_names=names,
        pixel_size_um=pixel_size,
        rgb=moving_info["rgb"],
        tile=min(512, settings["tile"]),
        pyramid_min_size=settings["pyramid_min_size"],
        compression=None if settings["compression"] == "none" else settings["compression"],
    )
    log.info(
        "wrote %s: %d channel(s) %s, %s, %s, pixel size %s µm",
        snakemake.output[0],
        warped.shape[0],
        names,
        warped.shape[1:],
        warped.dtype,
        pixel_size,
    )
