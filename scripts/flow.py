"""Rule flow: optical-flow refinement; writes the complete transform (transform.npz)."""

import time

import numpy as np
from regflow import flow
from regflow.runlog import provenance, read_json, stage_log, write_json
from regflow.transform import Transform, compose

sample = snakemake.wildcards.sample
settings = dict(snakemake.params.section)

with stage_log(snakemake.log[0], "flow", sample) as log:
    start = time.perf_counter()
    fixed, moving = np.load(snakemake.input.fixed), np.load(snakemake.input.moving)
    rigid = read_json(snakemake.input.rigid)
    solver = {
        key: settings[key]
        for key in ("attachment", "tightness", "num_warp", "num_iter", "ilk_radius")
    }
    result = flow.refine_after_global(
        fixed["image"],
        fixed["tissue_mask"],
        moving["image"],
        moving["tissue_mask"],
        np.asarray(rigid["fixed_to_moving_working"]),
        method=settings["method"],
        normalise_sigma=settings["normalise_sigma"],
        smoothing_sigma=settings["smoothing_sigma"],
        min_improvement=settings["min_improvement"],
        max_size=settings["max_size"],
        consistency=settings["consistency"],
        auto_ncc=settings["auto_ncc"],
        tvl1_smoothing_sigma=settings["tvl1_smoothing_sigma"],
        **solver,
    )
    log.info("%s", result.reason)
    transform = flow.full_transform(
        rigid["fixed_to_moving_full"],
        result,
        fixed["full_to_working"],
        fixed["full_shape"],
        moving["full_shape"],
    )
    if hasattr(snakemake.input, "previous"):
        # Chain mode: this step maps the neighbour onto this image; the neighbour's own
        # transform maps the reference onto the neighbour. Their composition is saved.
        transform = compose(Transform.load(snakemake.input.previous), transform)
        log.info("composed with %s (reference → neighbour)", snakemake.input.previous)
    transform.save(snakemake.output.transform)
    magnitude = np.hypot(*transform.displacement)
    write_json(
        snakemake.output.info,
        {
            "sample": sample,
            "accepted": result.accepted,
            "method": result.method,
            "reason": result.reason,
            "ncc_rigid": result.ncc_rigid,
            "ncc_final": result.ncc_final,
            "displacement_max_px": float(magnitude.max()),
            "displacement_mean_px": float(magnitude.mean()),
            "seconds": time.perf_counter() - start,
            "provenance": provenance(settings),
        },
    )
