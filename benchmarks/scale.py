"""Whole-slide scale: peak memory and time of the workflow on large generated pairs.

Usage::

    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale [--size 12288] [--fluorescence 8192]
    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale8 --size 0   # the 8-channel pair alone

Generates a pyramidal RGB OME-TIFF pair (``--size``² px; the moving image is the fixed one
rotated by 90°, shifted and smoothly deformed by up to ``--elastic`` px, rendered by streaming,
with exact landmarks) and, unless ``--fluorescence 0``, an 8-channel 16-bit pair. Runs the
workflow (``--cores 2``) under GNU ``/usr/bin/time -v`` and
reports: the peak resident memory of the whole run (the largest process: every job is a
child), each job's ``max_rss`` from Snakemake's benchmark files (sampled, so it may miss short
peaks), seconds per stage, the landmark rTRE, and the floor: a plain tifffile read of the moving
image plus a tiled pyramidal write of it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _workflow import workflow_command  # noqa: E402  (benchmarks/ is sys.path[0])
from regflow.example import fluorescence_from_brightfield  # noqa: E402
from regflow.io import RegionReader, read_info, write_ome_tiff, write_ome_tiff_tiled  # noqa: E402
from regflow.transform import Transform  # noqa: E402
from regflow.warp import warp_blocks  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402


def base_slide(size: int) -> np.ndarray:
    """scikit-image's IHC slide upscaled to ``size``², (3, Y, X) uint8, in bands.

    Not tiled or mirrored: a symmetric mosaic would make a 90° rotation ambiguous.
    """
    from skimage import data, transform

    ihc = data.immunohistochemistry()
    out = np.empty((3, size, size), np.uint8)
    scale = size / ihc.shape[0]
    band_rows = 1024
    for start in range(0, size, band_rows):  # bounded memory
        stop = min(size, start + band_rows)
        src0 = max(0, int(np.floor(start / scale)) - 1)
        src1 = min(ihc.shape[0], int(np.ceil(stop / scale)) + 2)
        band = transform.resize(
            ihc[src0:src1].astype(np.float32),
            (int(round((src1 - src0) * scale)), size),
            order=1,
            preserve_range=True,
        )
        offset = start - int(round(src0 * scale))
        out[:, start:stop] = np.moveaxis(band[offset : offset + stop - start], -1, 0).round()
    return out


def moving_transform(size: int, elastic_px: float, seed: int = 0) -> Transform:
    """Moving → fixed mapping that renders the moving image: a 90° rotation, a shift of
    2 % / −1.5 % of the side and a smooth displacement of at most ``elastic_px``."""
    shift = (0.02 * size, -0.015 * size)
    # moving (x, y) shows fixed (W − 1 − y, x) shifted: the inverse of a counter-clockwise rot90
    affine = np.array([[0.0, -1.0, size - 1 - shift[1]], [1.0, 0.0, -shift[0]], [0, 0, 1]])
    grid = 256
    displacement = np.zeros((2, grid, grid), np.float32)
    if elastic_px:
        rng = np.random.default_rng(seed)
        field = np.stack([ndi.gaussian_filter(rng.normal(size=(grid, grid)), grid / 10)
                          for _ in range(2)])  # fmt: skip
        displacement = (field * elastic_px / np.abs(field).max()).astype(np.float32)
    step = grid / size
    to_grid = np.array([[step, 0, 0.5 * step - 0.5], [0, step, 0.5 * step - 0.5], [0, 0, 1]])
    return Transform(affine, displacement, to_grid, (size, size), (size, size))


def make_pair(folder: Path, name: str, fixed: np.ndarray, names, rgb: bool, fill,
              elastic_px: float) -> dict:  # fmt: skip
    """Fixed image, and the moving image rendered from it by streaming (bounded memory)."""
    size = fixed.shape[1]
    paths = {
        k: folder / f"{name}_{k}"
        for k in ("fixed.ome.tif", "moving.ome.tif", "fixed.csv", "moving.csv")
    }
    write_ome_tiff(paths["fixed.ome.tif"], fixed, names, 0.5, rgb=rgb)
    channels, dtype = fixed.shape[0], fixed.dtype
    del fixed
    render = moving_transform(size, elastic_px)
    with RegionReader(paths["fixed.ome.tif"]) as source:
        blocks = warp_blocks(source, render, np.asarray(fill, float), tile=512, threads=2)
        write_ome_tiff_tiled(paths["moving.ome.tif"], (channels, size, size), dtype, blocks,
                             names, 0.5, rgb=rgb, threads=2)  # fmt: skip
    rng = np.random.default_rng(1)
    moving_points = rng.uniform(0.15 * size, 0.85 * size, size=(40, 2))
    fixed_points = render.fixed_to_moving(moving_points)  # exact ground truth
    pd.DataFrame(fixed_points, columns=["X", "Y"]).to_csv(paths["fixed.csv"], index=False)
    pd.DataFrame(moving_points, columns=["X", "Y"]).to_csv(paths["moving.csv"], index=False)
    return {
        "sample": name,
        "fixed": str(paths["fixed.ome.tif"]),
        "moving": str(paths["moving.ome.tif"]),
        "fixed_modality": "brightfield" if rgb else "fluorescence",
        "moving_modality": "brightfield" if rgb else "fluorescence",
        "fixed_landmarks": str(paths["fixed.csv"]),
        "moving_landmarks": str(paths["moving.csv"]),
    }


def floor_seconds(path: str, tmp: Path) -> float:
    """tifffile alone: a full read of the image and a tiled, zlib-compressed pyramidal write
    of it (SubIFD levels by 2× subsampling, tifffile's default threads)."""
    start = time.perf_counter()
    with tifffile.TiffFile(path) as tif:
        image = tif.series[0].asarray()
        axes = tif.series[0].axes
    rgb = axes == "YXS"
    levels = [image]
    while max(levels[-1].shape[:2] if rgb else levels[-1].shape[1:]) > 1024:
        levels.append(levels[-1][::2, ::2] if rgb else levels[-1][:, ::2, ::2])
    options = {"tile": (512, 512), "compression": "zlib", "photometric": "rgb" if rgb else
               "minisblack"}  # fmt: skip
    with tifffile.TiffWriter(tmp / "floor.ome.tif", bigtiff=True, ome=True) as out:
        out.write(image, subifds=len(levels) - 1, **options)
        for level in levels[1:]:
            out.write(level, subfiletype=1, **options)
    seconds = time.perf_counter() - start
    (tmp / "floor.ome.tif").unlink()
    return seconds


def run_workflow(workdir: Path) -> tuple[float, float]:
    command = ["/usr/bin/time", "-v", *workflow_command(workdir)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return seconds, peak_kb / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=12288, help="side of the RGB pair; 0 skips it")
    parser.add_argument(
        "--fluorescence", type=int, default=8192, help="side of the 8-channel pair; 0 skips it"
    )
    parser.add_argument(
        "--elastic", type=float, default=24.0, help="largest non-rigid displacement (px)"
    )
    parser.add_argument(
        "--no-refine", dest="refine", action="store_false", help="refine.enabled: false"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.size:
        slide = base_slide(args.size)
        rows.append(make_pair(args.workdir, "rgb", slide, ["R", "G", "B"], True,
                              [255, 255, 255], args.elastic))  # fmt: skip
        del slide
    if args.fluorescence:
        small = base_slide(args.fluorescence)
        two = fluorescence_from_brightfield(small)
        del small
        channels = np.concatenate(
            [two] + [(two[i % 2] // (i + 1)).astype(np.uint16)[None] for i in range(6)]
        )
        names = ["DAPI", "DAB-marker"] + [f"marker{i}" for i in range(6)]
        rows.append(make_pair(args.workdir, "fluorescence8", channels, names, False, [400] * 8,
                              args.elastic))  # fmt: skip
        del channels, two
    pd.DataFrame(rows).to_csv(args.workdir / "samples.tsv", sep="\t", index=False)
    extra = "" if args.refine else "refine:\n  enabled: false\n"
    (args.workdir / "config.yaml").write_text(f"samples: samples.tsv\noutdir: out\n{extra}")

    seconds, peak_gib = run_workflow(args.workdir)
    print(
        f"whole workflow (--cores 2, {len(rows)} pairs): {seconds:.1f} s; peak RSS of the "
        f"largest process (/usr/bin/time -v): {peak_gib:.2f} GiB\n"
    )
    summary = pd.read_csv(args.workdir / "out" / "summary.tsv", sep="\t")
    for row in rows:
        sample = row["sample"]
        bench = {
            path.parent.name: pd.read_csv(path, sep="\t").iloc[-1]
            for path in (args.workdir / "out" / "benchmarks").glob(f"*/{sample}.tsv")
        }
        floor = floor_seconds(row["moving"], args.workdir)
        with tifffile.TiffFile(args.workdir / "out" / sample / "warped.ome.tif") as tif:
            levels = [lvl.shape for lvl in tif.series[0].levels]
            ome = tif.ome_metadata
        stage_seconds = {stage: float(b["s"]) for stage, b in bench.items()}
        print(f"## {sample}: {tifffile.TiffFile(row['moving']).series[0].shape}")
        print("stage        seconds   max_rss (MiB, Snakemake benchmark)")
        for stage, b in sorted(bench.items()):
            print(f"{stage:<12} {float(b['s']):7.1f}   {float(b['max_rss']):8.0f}")
        total = sum(stage_seconds.values())
        pixels = np.prod(read_info(row["fixed"]).shape)
        print(
            f"sum of this pair's jobs: {total:.1f} s; floor (tifffile read + pyramid write): "
            f"{floor:.1f} s; ratio {total / floor:.2f}; "
            f"warp {pixels / 1e6 / stage_seconds['warp']:.1f} Mpx/s"
        )
        if len(rows) == 1:  # the whole run is this pair's: Snakemake's start-up, summary too
            print(f"whole workflow / floor: {seconds / floor:.2f}")
        names = re.findall(r'Channel[^>]*Name="([^"]*)"', ome)
        print(
            f"output levels: {levels}; PhysicalSizeX in OME: {'PhysicalSizeX=' in ome}; "
            f"channel names: {names}"
        )
        line = summary[summary["sample"] == sample].iloc[0]
        print(
            f"status {line['status']}; rTRE initial {line['rtre_initial']:.5f} → "
            f"rigid {line['rtre_rigid']:.6f} → final {line['rtre_final']:.6f}\n"
        )


if __name__ == "__main__":
    main()
