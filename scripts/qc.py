"""Rule qc: similarity and landmark errors per stage, status, metrics.json and qc.png."""

import numpy as np
from regflow.points import read_points
from regflow.qc import (
    WorkingImage,
    cell_views,
    crop_centres,
    decide_status,
    landmark_errors,
    qc_figure,
    review_registration,
    sample_stages,
    similarity_by_stage,
    stage_transforms,
)
from regflow.runlog import provenance, read_json, stage_log, write_json
from regflow.transform import Transform

sample = snakemake.wildcards.sample
settings = snakemake.params.section


def working_image(path):
    with np.load(path) as data:
        return WorkingImage(data["image"], data["tissue_mask"], data["full_to_working"])


with stage_log(snakemake.log[0], "qc", sample) as log:
    fixed = working_image(snakemake.input.fixed)
    moving = working_image(snakemake.input.moving)
    preprocess_info = read_json(snakemake.input.preprocess)
    rigid = read_json(snakemake.input.rigid)
    flow = read_json(snakemake.input.flow)
    transform = Transform.load(snakemake.input.transform)
    transforms = stage_transforms(transform)
    sampled = sample_stages(fixed, moving, transforms)  # once, for the metrics and the review
    similarity, warped = similarity_by_stage(fixed, moving, transforms, sampled)

    landmarks = mapped = fixed_points = None
    if hasattr(snakemake.input, "landmarks_warped"):
        fixed_points = read_points(snakemake.input.fixed_landmarks)
        height, width = transform.fixed_shape
        landmarks, mapped = landmark_errors(
            fixed_points,
            read_points(snakemake.input.moving_landmarks),
            read_points(snakemake.input.landmarks_warped),
            transforms,
            diagonal=float(np.hypot(height, width)),
        )

    annotation_outlines = None
    if hasattr(snakemake.input, "annotations_warped"):
        from regflow.annotations import outlines, read_features

        annotation_outlines = outlines(read_features(snakemake.input.annotations_warped)[1])

    diagonal = float(np.hypot(*transform.fixed_shape))
    refine = read_json(snakemake.input.refine)
    flow_accepted, flow_reason = flow["accepted"], flow["reason"]
    stack = read_json(snakemake.input.stack) if hasattr(snakemake.input, "stack") else None
    if stack is not None:
        # a serial section's transform is the stack solve's, from all its registrations with
        # its neighbours, not from its own one registration (rejected next to a blank one)
        entry = stack["sections"][sample.rsplit("/", 1)[-1]]
        flow_accepted = bool(entry.get("nonrigid", flow_accepted))
        if not flow_accepted:
            flow_reason = "no registration with its neighbours kept a non-rigid flow"
    status, reason = decide_status(
        flow_accepted,
        similarity["final"]["ncc"],
        settings["min_ncc"],
        flow_reason,
        refined=bool(refine.get("tiles_accepted")),
    )
    pixel_size = preprocess_info["moving"]["pixel_size_um"]
    evidence, field, not_registered = None, None, ""
    thresholds = {k: v for k, v in settings.items() if k != "min_ncc"}
    if stack is not None:
        # a serial section: related to its neighbours (distance 1 and 2) by construction, not
        # to a reference many sections away, whose cells and structures differ
        evidence = {"evidence": entry["evidence"], "against": "neighbours",
                    "agreement": entry.get("agreement"),
                    "min_agreement": stack.get("min_agreement")}  # fmt: skip
        field = entry.get("field")
        thresholds["min_evidence"] = stack["min_evidence"]
        # its field is smoothed over tissue scale: a tear is a steep slope, not a step
        thresholds["max_jump"] = stack.get("max_jump", thresholds.get("max_jump"))
        # where it is torn, its field smears the tear: not registered there (stack.py)
        if (torn := entry.get("not_registered_fraction", 0.0)) > 0:
            not_registered = (
                f"not registered where torn: {100 * torn:.1f} % of the reference's tissue, "
                f"outlined in stack/{sample.rsplit('/', 1)[-1]}.not_registered.geojson "
                "(QuPath, reference pixels)"
            )
    translation = np.asarray(rigid["translation_px"])
    review = review_registration(
        fixed,
        moving,
        transform,
        similarity,
        landmarks,
        pixel_ratio=(
            pixel_size / preprocess_info["fixed"]["pixel_size_um"]
            if pixel_size and preprocess_info["fixed"]["pixel_size_um"]
            else None
        ),
        flow_accepted=flow_accepted,
        rotation_deg=rigid["rotation_deg"],
        thresholds=thresholds,
        sampled=sampled,
        evidence=evidence,
        field=field,
    )
    if not_registered:
        review["info"].append(not_registered)
    metrics = {
        "sample": sample,
        "status": status,
        "reason": reason,
        "similarity": similarity,
        "rigid": {
            "rotation_deg": rigid["rotation_deg"],
            "scale": rigid["scale"],
            "mirrored": rigid["mirrored"],
            "translation_px": translation,
            "translation_um": translation * pixel_size if pixel_size else None,
            "fixed_to_moving": rigid["fixed_to_moving_full"],
            # every verified global candidate: source, pose, coarse score, structure, inliers
            "candidates": rigid["candidates"],
        },
        "flow": {
            k: flow[k]
            for k in (
                "accepted",
                "method",
                "reason",
                "displacement_max_px",
                "displacement_mean_px",
            )
        }
        | {"displacement_mean_relative": flow["displacement_mean_px"] / diagonal},
        "landmarks": landmarks,
        "review": review,
        # What was read: format, reader, full-resolution shape and pixel size of each image.
        "images": {
            role: {
                k: preprocess_info[role].get(k)
                for k in ("path", "format", "reader", "shape", "pixel_size_um", "channel_names")
            }
            for role in ("fixed", "moving")
        },
        "seconds": {
            "preprocess": preprocess_info["seconds"],
            "rigid": rigid["seconds"],
            "flow": flow["seconds"],
        },
        "provenance": provenance(settings),
    }
    metrics["refine"] = {k: v for k, v in refine.items() if k not in ("accepted_map", "provenance")}
    metrics["seconds"]["refine"] = refine.get("seconds")
    cells = acceptance = None
    if refine.get("level") is not None:  # the refinement ran: cell-level views
        reference = read_json(snakemake.input.anchor_info)["fixed"]
        size_um = reference.get("pixel_size_um")
        side = int(min(1024, round(150.0 / size_um))) if size_um else 256
        centres = crop_centres(fixed.tissue_mask, fixed.full_to_working)
        channels = {"fixed": (reference["modality"], reference["channel"]),
                    "moving": (preprocess_info["moving"]["modality"],
                               preprocess_info["moving"]["channel"])}  # fmt: skip
        views = cell_views(snakemake.input.fixed_image, snakemake.input.moving_image,
                           transform, channels, centres, side)  # fmt: skip
        label = f"{side * size_um:.0f} µm" if size_um else f"{side} px"
        title = "full resolution at ({:.0f}, {:.0f}), {}\nfixed magenta, final green"
        cells = [(f, w, title.format(x, y, label))
                 for (f, w), (x, y) in zip(views, centres, strict=True)]  # fmt: skip
        acceptance = np.asarray(refine["accepted_map"], np.int8)
    write_json(snakemake.output.metrics, metrics)
    qc_figure(
        snakemake.output.figure,
        sample,
        fixed,
        moving,
        warped,
        transform,
        metrics,
        landmarks=mapped,
        fixed_landmarks=fixed_points,
        annotations=annotation_outlines,
        cells=cells,
        acceptance=acceptance,
    )
    for item in review["flags"]:
        log.warning("flag %s: %s", item["flag"], item["reason"])
    log.info(
        "status %s; NCC %.3f → %.3f → %.3f%s",
        status,
        similarity["initial"]["ncc"],
        similarity["rigid"]["ncc"],
        similarity["final"]["ncc"],
        f"; {reason}" if reason else "",
    )
