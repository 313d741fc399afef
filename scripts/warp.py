"""Rule warp: all channels of the moving image onto the fixed grid, as pyramidal OME-TIFF.

Streams: the moving image is read region by region and the output written tile by tile, so
the job's memory does not grow with the slide size.
"""

import regflow

regflow.own_threads_only()  # before numpy is imported
from regflow.formats import output_pixel_size
from regflow.runlog import read_json, stage_log
from regflow.transform import Transform
from regflow.warp import reuse_freed_memory, warp_file

sample = snakemake.wildcards.sample
reuse_freed_memory()

with stage_log(snakemake.log[0], "warp", sample) as log:
    moving_info = read_json(snakemake.input.info)["moving"]
    # The output is on the reference's grid: its pixel size (the sheet's, else the file's).
    pixel_size = output_pixel_size(
        snakemake.params.reference_pixel_size,
        snakemake.params.reference,
        moving_info["pixel_size_um"],
    )
    written = warp_file(
        snakemake.input.moving,
        Transform.load(snakemake.input.transform),
        snakemake.output[0],
        moving_info["modality"],
        pixel_size,
        snakemake.params.section,
        threads=snakemake.threads,
        order=snakemake.params.section["order"],
    )
    log.info("wrote %s: %s", snakemake.output[0], written)
