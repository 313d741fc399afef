"""Rule case_qc: every image of a case over its reference, with per-image rTRE and NCC."""

import numpy as np
from regflow.channels import resolve_channel
from regflow.formats import choose_level, open_slide
from regflow.preprocess import downsample, registration_channel
from regflow.qc import case_figure
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
    panels = []
    for image, warped, metrics, modality, channel in zip(
        params.images, snakemake.input.warped, snakemake.input.metrics, params.modalities,
        params.channels, strict=True,
    ):  # fmt: skip
        panels.append((image, view(warped, modality, channel, reference.shape), read_json(metrics)))
    case_figure(snakemake.output[0], case, (params.reference, np.asarray(reference)), panels)
    log.info("case %s: %d image(s) over %s", case, len(panels), params.reference)
