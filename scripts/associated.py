"""Rule associated: an extra image in the moving image's frame (labels, a mask, a heat map,
another scan) warped with the sample's transform onto the fixed grid."""

import regflow

regflow.own_threads_only()  # before numpy is imported
from regflow.formats import output_pixel_size, read_info
from regflow.runlog import read_json, stage_log
from regflow.transform import Transform
from regflow.warp import associated_scale, associated_transform, reuse_freed_memory, warp_file

sample = snakemake.wildcards.sample
reuse_freed_memory()

with stage_log(snakemake.log[0], "associated", sample) as log:
    moving_info = read_json(snakemake.input.info)["moving"]
    info = read_info(snakemake.input.image)
    try:
        scale = associated_scale(
            info.shape, info.pixel_size_um, moving_info["shape"], moving_info["pixel_size_um"]
        )
    except ValueError as error:
        raise ValueError(f"{snakemake.input.image} {error}") from None
    transform = associated_transform(Transform.load(snakemake.input.transform), info.shape, scale)
    pixel_size = output_pixel_size(
        snakemake.params.reference_pixel_size,
        snakemake.params.reference,
        moving_info["pixel_size_um"],
    )
    written = warp_file(
        snakemake.input.image,
        transform,
        snakemake.output[0],
        moving_info["modality"],
        pixel_size,
        snakemake.params.section,
        threads=snakemake.threads,
    )
    log.info("wrote %s: %s", snakemake.output[0], written)
