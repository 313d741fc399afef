"""Rule rigid: global (rigid / similarity / affine) alignment at working resolution."""

import time

import numpy as np
from regflow.rigid import register_rigid, to_full_resolution
from regflow.runlog import provenance, read_json, stage_log, write_json

sample = snakemake.wildcards.sample
settings = snakemake.params.section

with stage_log(snakemake.log[0], "rigid", sample) as log:
    start = time.perf_counter()
    fixed, moving = np.load(snakemake.input.fixed), np.load(snakemake.input.moving)
    images = read_json(snakemake.input.info)
    # without both pixel sizes the magnifications may differ: a wider scale range
    known = bool(images["fixed"]["pixel_size_um"] and images["moving"]["pixel_size_um"])
    result = register_rigid(
        fixed["image"],
        moving["image"],
        fixed["tissue_mask"],
        moving["tissue_mask"],
        model=settings["model"],
        search_size=settings["search_size"],
        refine_size=settings["refine_size"],
        coarse_angle_step=settings["coarse_angle_step"],
        allow_mirror=settings["allow_mirror"],
        mirror_ratio=settings["mirror_ratio"],
        max_scale_change=settings["max_scale_change"],
        pixel_sizes_known=known,
        local_contrast=settings["local_contrast"],
        features=settings["features"],
        clear_ratio=settings["clear_ratio"],
    )
    affine = to_full_resolution(
        result.fixed_to_moving, fixed["full_to_working"], moving["full_to_working"]
    )
    log.info(
        "pixel sizes %s; rotation %.2f°, scale %.4f, mirrored %s; NCC %.4f → %.4f",
        "known" if known else "unknown (scales up to × / ÷ 3 searched)",
        result.rotation_deg,
        result.scale,
        result.mirrored,
        result.ncc_initial,
        result.ncc,
    )
    write_json(
        snakemake.output[0],
        {
            "sample": sample,
            "fixed_to_moving_full": affine,
            "fixed_to_moving_working": result.fixed_to_moving,
            "rotation_deg": result.rotation_deg,
            "scale": result.scale,
            "mirrored": result.mirrored,
            "pixel_sizes_known": known,
            "translation_px": affine[:2, 2],
            "ncc_initial": result.ncc_initial,
            "ncc_rigid": result.ncc,
            "candidates": result.candidates,
            "seconds": time.perf_counter() - start,
            "provenance": provenance(settings),
        },
    )
