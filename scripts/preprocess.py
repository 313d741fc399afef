"""Rule preprocess: registration channel, normalisation, working resolution, tissue mask."""

import dataclasses
import time

from regflow.formats import (
    implausible_pixel_sizes,
    pixel_size_override,
    read_info,
    with_pixel_size,
)
from regflow.preprocess import pair_scales, preprocess_file
from regflow.runlog import provenance, save_npz, stage_log, write_json

sample = snakemake.wildcards.sample
settings = snakemake.params.section
row = snakemake.params.row

with stage_log(snakemake.log[0], "preprocess", sample) as log:
    start = time.perf_counter()
    # The sheet's pixel size, when given, overrides the file's own.
    infos = {
        role: with_pixel_size(
            read_info(snakemake.input[role]), pixel_size_override(row.get(f"{role}_pixel_size_um"))
        )
        for role in ("fixed", "moving")
    }
    for role, info in infos.items():
        if pixel_size_override(row.get(f"{role}_pixel_size_um")) is None:
            for note in info.notes:  # e.g. a 72-dpi TIFF's pixel size, ignored
                log.warning("%s", note)
    trap = implausible_pixel_sizes(infos["fixed"], infos["moving"])
    if trap:
        log.warning("%s", trap)
        infos["moving"] = dataclasses.replace(infos["moving"], pixel_size_um=None)
    for info in infos.values():
        if info.shape[0] * info.shape[1] > settings["max_pixels"]:
            raise ValueError(
                f"{info.path}: {info.shape[0]}×{info.shape[1]} pixels exceeds "
                f"preprocess.max_pixels={settings['max_pixels']}"
            )
    scales = dict(
        zip(
            ("fixed", "moving"),
            pair_scales(
                infos["fixed"], infos["moving"], settings["max_size"], settings["pixel_size_um"]
            ),
            strict=True,
        )
    )
    summary = {"sample": sample}
    modalities = {role: row.get(f"{role}_modality") or "brightfield" for role in infos}
    for role, info in infos.items():
        modality = modalities[role]
        partner = modalities["moving" if role == "fixed" else "fixed"]
        result, channel, level = preprocess_file(
            info,
            modality,
            row.get(f"{role}_channel"),
            scales[role],
            settings["fluorescence_log"],
            partner_modality=partner,
            # a serial section of a stack: a blank one is left out by the stack solve
            allow_blank=bool(row.get("stack")),
        )
        if result.blank:
            log.warning("%s %s: the registration channel %r is blank (constant): this section "
                        "is left out of the stack (flagged in its QC)", role, info.path,
                        channel)  # fmt: skip
        log.info(
            "%s %s: %s read by %s, %s, %d channel(s) %s, %s, pixel size %s µm; channel %r; "
            "pyramid level %d; working %s (scale %.4f)",
            role,
            info.path,
            info.format,
            info.reader,
            modality,
            info.n_channels,
            info.channel_names,
            info.dtype,
            info.pixel_size_um,
            channel,
            level,
            result.image.shape,
            scales[role],
        )
        save_npz(
            snakemake.output[role],
            image=result.image,
            tissue_mask=result.tissue_mask,
            full_to_working=result.full_to_working,
            full_shape=result.full_shape,
        )
        summary[role] = {
            "path": info.path,
            "modality": modality,
            "channel": channel,
            "channel_names": info.channel_names,
            "n_channels": info.n_channels,
            "dtype": info.dtype,
            "rgb": info.rgb,
            "shape": info.shape,
            "pixel_size_um": info.pixel_size_um,
            "format": info.format,
            "reader": info.reader,
            "pyramid_level": level,
            "working_scale": scales[role],
            "working_shape": result.image.shape,
            "tissue_fraction": float(result.tissue_mask.mean()),
        }
    summary["seconds"] = time.perf_counter() - start
    summary["provenance"] = provenance(settings)
    write_json(snakemake.output.info, summary)
