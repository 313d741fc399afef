"""Rule refine: the full-resolution refinement, tile by tile; writes the final transform."""

import dataclasses
from pathlib import Path

import numpy as np
from regflow.formats import read_info
from regflow.refine import RefineSettings, refine_transform
from regflow.runlog import provenance, read_json, stage_log, write_json
from regflow.transform import Transform

sample = snakemake.wildcards.sample
settings = RefineSettings.from_config(snakemake.params.section)

with stage_log(snakemake.log[0], "refine", sample) as log:
    images = read_json(snakemake.input.info)
    reference = read_json(snakemake.input.anchor_info)["fixed"]
    moving = images["moving"]
    # the pixel sizes the preprocessing used: the sheet's, or the file's when trusted
    infos = {
        role: dataclasses.replace(read_info(getattr(snakemake.input, role)),
                                  pixel_size_um=entry["pixel_size_um"])
        for role, entry in (("fixed", reference), ("moving", moving))
    }  # fmt: skip
    with np.load(snakemake.input.working) as working:
        mask, full_to_working = working["tissue_mask"], working["full_to_working"]
    coarse = Path(snakemake.input.transform)
    if coarse.is_dir():  # serial sections: this section's transform from the stack solve
        coarse = coarse / f"{sample.rsplit('/', 1)[-1]}.npz"
    result = refine_transform(
        Transform.load(coarse),
        infos["fixed"],
        infos["moving"],
        {role: (entry["modality"], entry["channel"])
         for role, entry in (("fixed", reference), ("moving", moving))},
        (mask, full_to_working),
        working_downsample=1.0 / float(full_to_working[0, 0]),
        settings=settings,
        threads=snakemake.threads,
    )  # fmt: skip
    result.transform.save(snakemake.output.transform)
    log.info("%s", result.report.get("reason", ""))
    write_json(
        snakemake.output.info,
        {"sample": sample, **result.report, "accepted_map": result.accepted_map.tolist(),
         "provenance": provenance(snakemake.params.section)},
    )  # fmt: skip
