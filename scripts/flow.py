"""Rule flow: optical-flow refinement; writes the complete transform (transform.npz)."""

import time

import numpy as np
from regflow import flow
from regflow.rigid import overlap_mask, warp_to_fixed
from regflow.runlog import provenance, read_json, stage_log, write_json
from regflow.transform import Transform

sample = snakemake.wildcards.sample
settings = dict(snakemake.params.section)

with stage_log(snakemake.log[0], "flow", sample) as log:
    start = time.perf_counter()
    fixed, moving = np.load(snakemake.input.fixed), np.load(snakemake.input.moving)
    rigid = read_json(snakemake.input.rigid)
    matrix = np.asarray(rigid["fixed_to_moving_working"])
    shape = fixed["image"].shape
    moving_rigid = warp_to_fixed(moving["image"], matrix, shape, mode="nearest")
    overlap = overlap_mask(moving["image"].shape, matrix, shape)
    moving_rigid[~overlap] = 0.0
    moving_mask = warp_to_fixed(moving["tissue_mask"].astype(np.float32), matrix, shape) > 0.5
    solver = {
        key: settings[key]
        for key in ("attachment", "tightness", "num_warp", "num_iter", "ilk_radius")
    }
    result = flow.refine_flow(
        fixed["image"],
        moving_rigid,
        fixed["tissue_mask"],
        moving_mask,
        method=settings["method"],
        normalise_sigma=settings["normalise_sigma"],
        smoothing_sigma=settings["smoothing_sigma"],
        min_improvement=settings["min_improvement"],
        max_size=settings["max_size"],
        overlap=overlap,
        **solver,
    )
    log.info("%s", result.reason)
    transform = Transform(
        affine=np.asarray(rigid["fixed_to_moving_full"]),
        displacement=flow.to_full_resolution(result.displacement, fixed["full_to_working"]),
        fixed_full_to_working=fixed["full_to_working"],
        fixed_shape=tuple(int(v) for v in fixed["full_shape"]),
        moving_shape=tuple(int(v) for v in moving["full_shape"]),
    )
    transform.save(snakemake.output.transform)
    magnitude = np.hypot(*transform.displacement)
    write_json(
        snakemake.output.info,
        {
            "sample": sample,
            "accepted": result.accepted,
            "reason": result.reason,
            "ncc_rigid": result.ncc_rigid,
            "ncc_final": result.ncc_final,
            "displacement_max_px": float(magnitude.max()),
            "displacement_mean_px": float(magnitude.mean()),
            "seconds": time.perf_counter() - start,
            "provenance": provenance(settings),
        },
    )
