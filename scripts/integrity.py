"""Rule integrity: per-cell (and per-window) integrity of a round against the reference."""

import csv
import os

import numpy as np
from regflow.formats import RegionReader, choose_level, output_pixel_size, read_info
from regflow.integrity import integrity_figure, integrity_from_files
from regflow.io import write_ome_tiff
from regflow.runlog import provenance, read_json, stage_log, write_json
from regflow.transform import Transform

sample = snakemake.wildcards.sample
settings = snakemake.params.section

with stage_log(snakemake.log[0], "integrity", sample) as log:
    reference = read_json(snakemake.input.anchor_info)["fixed"]
    moving = read_json(snakemake.input.info)["moving"]
    pixel_size = output_pixel_size(snakemake.params.pixel_size, snakemake.input.reference,
                                   reference.get("pixel_size_um"))  # fmt: skip
    window = max(4, int(round(settings["window_um"] / pixel_size))) if pixel_size else 32
    with np.load(snakemake.input.working) as working:
        tissue = (working["tissue_mask"], working["full_to_working"])
    cells = getattr(snakemake.input, "cells", None)
    transform = Transform.load(snakemake.input.transform)
    margin = window / 2.0  # a cell or window within half a window of the round's edge

    def covered(points_xy):
        onto = transform.fixed_to_moving(points_xy)
        height, width = transform.moving_shape
        return ((onto[:, 0] >= margin) & (onto[:, 0] <= width - 1 - margin)
                & (onto[:, 1] >= margin) & (onto[:, 1] <= height - 1 - margin))  # fmt: skip

    report, table, grid = integrity_from_files(
        snakemake.input.reference, snakemake.input.warped, int(reference["channel"]),
        int(moving["channel"]), cells, tissue, window,
        min_corr=settings["min_corr"], min_ratio=settings["min_ratio"], covered=covered,
    )  # fmt: skip
    tmp = f"{snakemake.output.table}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["cell", "x", "y", "corr", "intensity_ratio", "lost"])
        if table is not None:
            for row in zip(table.cell, table.x, table.y, table.corr, table.intensity_ratio,
                           table.lost, strict=True):  # fmt: skip
                writer.writerow([int(row[0]), *(f"{v:.6g}" for v in row[1:5]), bool(row[5])])
    os.replace(tmp, snakemake.output.table)
    map_pixel = pixel_size * window if pixel_size else None
    write_ome_tiff(snakemake.output.map, grid[None].astype(np.float32), ["integrity"], map_pixel)
    # the figure: the reference's nuclear channel from the level nearest 1500 px
    info = read_info(snakemake.input.reference)
    level = choose_level(info, max(info.shape) / 1500)
    with RegionReader(snakemake.input.reference, level) as reader:
        view = reader.read(slice(0, reader.shape[1]), slice(0, reader.shape[2]),
                           [int(reference["channel"])])[0].astype(np.float32)  # fmt: skip
    integrity_figure(snakemake.output.figure, sample, report, grid, table, view,
                     view.shape[1] / info.shape[1])  # fmt: skip
    report |= {"sample": sample, "map_pixel_size_um": map_pixel,
               "provenance": provenance(settings)}  # fmt: skip
    write_json(snakemake.output.json, report)
    log.info("tissue lost: %.1f %% (%s)", 100 * report["tissue_lost_fraction"],
             report["measured_on"])  # fmt: skip
