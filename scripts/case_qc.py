"""Rule case_qc: every image of a case over its reference, with per-image rTRE and NCC."""

import numpy as np
from regflow.channels import resolve_channel
from regflow.formats import choose_level, open_slide
from regflow.preprocess import downsample, registration_channel
from regflow.qc import case_figure, tissue_loss_review
from regflow.runlog import read_json, stage_log

case = snakemake.wildcards.case
VIEW = 512  # longest side of each panel


def view(path, modality, channel, shape=None):
    """A signal-bright 2-D view of an image from its pyramid level nearest VIEW px."""
    with open_slide(path) as slide:
        info = slide.info
        level = choose_level(info, max(info.shape) / VIEW)
        pixels = slide.read_level(level)
    spec = resolve_channel(channel, modality, info.channel_names, info.rgb)
    signal = registration_channel(pixels, modality, spec, info.rgb)
    if shape is None:
        factor = VIEW / max(signal.shape)
        shape = tuple(max(8, int(round(n * factor))) for n in signal.shape)
    return downsample(signal, shape)


with stage_log(snakemake.log[0], "case_qc", case) as log:
    params = snakemake.params
    reference = view(snakemake.input.reference, params.reference_modality, params.reference_channel)
    # each round's integrity report (rounds that share the reference's nuclear channel)
    reports = {r["sample"]: r for r in map(read_json, snakemake.input.integrity)}
    panels = []
    for image, warped, metrics, modality, channel in zip(
        params.images, snakemake.input.warped, snakemake.input.metrics, params.modalities,
        params.channels, strict=True,
    ):  # fmt: skip
        entry = read_json(metrics)
        if entry["sample"] in reports:
            tissue_loss_review(entry, reports[entry["sample"]], params.max_tissue_loss)
        panels.append((image, view(warped, modality, channel, reference.shape), entry))
    serial = None
    if snakemake.input.serial:  # serial sections: the stack solve's report and views
        folder, report = snakemake.input.serial
        serial = read_json(report)
        with np.load(f"{folder}/views.npz") as views:
            serial["views"] = {k: views[k] for k in views.files if k.startswith(("xz", "yz"))}
        serial["thickness_um"] = float(params.thickness) if params.thickness else None
        serial["working_pixel_um"] = serial.get("working_pixel_um")
    case_figure(snakemake.output[0], case, (params.reference, np.asarray(reference)), panels,
                serial)  # fmt: skip
    log.info("case %s: %d image(s) over %s", case, len(panels), params.reference)
