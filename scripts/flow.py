"""Rule flow: optical-flow refinement; writes the complete transform (transform.npz)."""

import time

import numpy as np
from regflow import flow
from regflow.review import global_evidence
from regflow.rigid import overlap_mask, warp_fast
from regflow.runlog import provenance, read_json, stage_log, write_json

sample = snakemake.wildcards.sample
settings = dict(snakemake.params.section)

with stage_log(snakemake.log[0], "flow", sample) as log:
    start = time.perf_counter()
    fixed, moving = np.load(snakemake.input.fixed), np.load(snakemake.input.moving)
    rigid = read_json(snakemake.input.rigid)
    presmooth = 0.0  # px: smoothing of both images before the flow (far links of a stack)
    if snakemake.params.serial:
        # serial sections share tissue structures, not cells: a field smoothed over the tissue
        # scale (ILK), so that matches between different cells do not add noise
        pixel = read_json(snakemake.input.info)["fixed"].get("pixel_size_um")
        working_um = pixel / float(fixed["full_to_working"][0, 0]) if pixel else None
        sigma = flow.serial_smoothing(fixed["image"].shape, working_um,
                                      snakemake.params.serial["smoothing_um"])  # fmt: skip
        settings["method"] = "ilk"
        settings["smoothing_sigma"] = max(settings["smoothing_sigma"], sigma)
        log.info("serial sections: ILK smoothed over %.1f working px", settings["smoothing_sigma"])
        presmooth_um = snakemake.params.serial.get("presmooth_um", 0.0)
        if presmooth_um and working_um:
            # a far section onto the reference: no shared cells, only larger structures
            presmooth = presmooth_um / working_um
            log.info("far link: images smoothed by σ %.2f working px (%g µm) first", presmooth,
                     presmooth_um)  # fmt: skip
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
        presmooth_sigma=presmooth,
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
    transform.save(snakemake.output.transform)
    # how related the two images are at the global alignment (a serial stack's solve weighs
    # each registration by it; the QC judges a pair by the same measure)
    matrix = np.asarray(rigid["fixed_to_moving_working"])
    shape = fixed["image"].shape
    evidence = global_evidence(
        fixed["image"],
        fixed["tissue_mask"],
        warp_fast(moving["image"], matrix, shape, mode="nearest"),
        warp_fast(moving["tissue_mask"].astype(np.float32), matrix, shape) > 0.5,
        overlap_mask(moving["image"].shape, matrix, shape),
    )
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
            "evidence": evidence["evidence"],
            "displacement_max_px": float(magnitude.max()),
            "displacement_mean_px": float(magnitude.mean()),
            "seconds": time.perf_counter() - start,
            "provenance": provenance(settings),
        },
    )
