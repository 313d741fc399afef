"""Rule merge: every fluorescence image of a case (reference included) in the reference
frame, one pyramidal OME-TIFF with channels named ``<image> <channel>``, streamed by tile."""

import regflow

regflow.own_threads_only()  # before numpy is imported
from contextlib import ExitStack

import numpy as np
from regflow.formats import pixel_size_override
from regflow.io import RegionReader, stacked_blocks, write_image_tiled, writer_options
from regflow.runlog import stage_log

case = snakemake.wildcards.case
settings = snakemake.params.section

with stage_log(snakemake.log[0], "merge", case) as log, ExitStack() as stack:
    readers = [stack.enter_context(RegionReader(path)) for path in snakemake.input.images]
    names = [
        f"{image} {channel}"
        for image, reader in zip(snakemake.params.images, readers, strict=True)
        for channel in reader.info.channel_names
    ]
    dtype = np.result_type(*(reader.dtype for reader in readers))
    reference = readers[snakemake.params.images.index(snakemake.params.reference)].info
    pixel_size = (
        pixel_size_override(snakemake.params.reference_pixel_size) or reference.pixel_size_um
    )
    write_image_tiled(
        snakemake.output[0],
        (len(names), *reference.shape),
        dtype,
        stacked_blocks(readers, dtype, settings["tile"]),
        channel_names=names,
        pixel_size_um=pixel_size,
        **writer_options(settings),
    )
    log.info("merged %d image(s), %d channel(s) %s, %s", len(readers), len(names), names, dtype)
