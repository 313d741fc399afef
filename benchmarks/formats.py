"""Reading a large JPEG-tiled Aperio-style SVS: regflow's reader layer against plain tifffile.

Usage::

    .venv/bin/python benchmarks/formats.py --workdir /tmp/formats [--size 40000]

Writes (once; reused when present) an SVS-style file of ``--size``² RGB px: 256² JPEG tiles,
Aperio description with MPP, 4× reduced levels, thumbnail, label and macro pages. The content
repeats a 1024² patch of scikit-image's IHC slide, and each level repeats the patch reduced
by that level's factor, so the levels agree with each other as a real pyramid does.

Then, each in its own process under GNU ``/usr/bin/time -v`` (seconds, peak RSS):

- ``regflow level``: ``read_info`` + ``choose_level`` for preprocessing's working size
  (1024 px) + ``read_image`` of that level — what the preprocess stage does;
- ``tifffile level``: ``tifffile.imread(series=0, level=…)`` of the same level;
- ``regflow region``: one 2048² region of level 0 through ``RegionReader`` (what the warp
  stage reads per window);
- ``tifffile region``: the same region with tifffile's plain reading of the page
  (``TiffPage.asarray`` decodes the whole level-0 page, then crops).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

TILE = 256
PATCH = 1024


def _patch() -> np.ndarray:
    from skimage import data, transform

    ihc = data.immunohistochemistry()
    big = transform.resize(ihc, (PATCH, PATCH), order=1, preserve_range=True)
    return np.round(big).astype(np.uint8)


def _tiles(patch: np.ndarray, size: int):
    """Every 256² tile of a ``size``² image that repeats ``patch`` (row-major)."""
    period = patch.shape[0]
    reps = -(-(period + TILE) // period)
    wrapped = np.tile(patch, (reps, reps, 1))
    for y in range(0, size, TILE):
        for x in range(0, size, TILE):
            py, px = y % period, x % period
            tile = wrapped[py : py + TILE, px : px + TILE]
            h, w = min(TILE, size - y), min(TILE, size - x)
            if (h, w) != (TILE, TILE):
                padded = np.full((TILE, TILE, 3), 255, np.uint8)
                padded[:h, :w] = tile[:h, :w]
                tile = padded
            yield tile


def write_large_svs(path: Path, size: int) -> None:
    import tifffile
    from skimage import transform

    patch = _patch()
    aperio = "Aperio Image Library v12.0.15"
    description = (
        f"{aperio}\r\n{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE}) JPEG/RGB Q=90"
        "|AppMag = 40|MPP = 0.2500|Filename = regflow-benchmark"
    )
    kw = {
        "photometric": "rgb",
        "metadata": None,
        "compression": "jpeg",
        "compressionargs": {"level": 90},
    }
    tmp = path.with_suffix(".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        shape = (size, size, 3)
        tif.write(_tiles(patch, size), shape=shape, dtype=np.uint8, tile=(TILE, TILE),
                  description=description, **kw)  # fmt: skip
        thumb = transform.resize(patch, (256, 256), preserve_range=True).astype(np.uint8)
        tif.write(thumb, description=f"{aperio}\r\nthumbnail", **kw)
        factor = 4
        while size // factor >= 512:
            level_patch = transform.resize(
                patch, (PATCH // factor, PATCH // factor), anti_aliasing=True, preserve_range=True
            ).astype(np.uint8)
            level_size = size // factor
            tif.write(_tiles(level_patch, level_size), shape=(level_size, level_size, 3),
                      dtype=np.uint8, tile=(TILE, TILE), description=f"{aperio}\r\nlevel",
                      **kw)  # fmt: skip
            factor *= 4
        tif.write(np.full((300, 400, 3), 230, np.uint8), description=f"{aperio}\r\nlabel",
                  subfiletype=1, **kw)  # fmt: skip
        tif.write(np.full((300, 800, 3), 200, np.uint8), description=f"{aperio}\r\nmacro",
                  subfiletype=9, **kw)  # fmt: skip
    tmp.rename(path)


CASES = {
    "regflow level": """
from regflow.formats import choose_level, read_image, read_info
info = read_info(__PATH__)
level = choose_level(info, max(info.shape) / 1024)
image = read_image(__PATH__, level)
print("LEVEL", level, image.shape, info.pixel_size_um, info.format, info.level_shapes)
""",
    "tifffile level": """
import tifffile
with tifffile.TiffFile(__PATH__) as tif:
    level = __LEVEL__
    image = tif.series[0].levels[level].asarray()
print("LEVEL", level, image.shape)
""",
    "regflow region": """
from regflow.formats import RegionReader
with RegionReader(__PATH__) as reader:
    c = reader.shape[1] // 2
    region = reader.read(slice(c, c + 2048), slice(c, c + 2048))
print("REGION", region.shape, int(region.mean()))
""",
    "tifffile region": """
import tifffile
with tifffile.TiffFile(__PATH__) as tif:
    page = tif.series[0].levels[0].pages[0]
    c = page.shape[0] // 2
    region = page.asarray()[c : c + 2048, c : c + 2048]
print("REGION", region.shape, int(region.mean()))
""",
}


def measure(code: str) -> tuple[float, float, str]:
    """(seconds, peak RSS GiB, stdout) of ``code`` in a fresh interpreter under time -v."""
    result = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", code],
        capture_output=True, text=True, check=True, cwd=ROOT / "scripts",
    )  # fmt: skip
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return hours * 3600 + minutes * 60 + seconds, rss / 2**20, result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=40000)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"slide_{args.size}.svs"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_large_svs(path, args.size)
    print(f"{path}: {path.stat().st_size / 2**30:.2f} GiB on disk")
    level = None
    print(f"{'case':<16} {'seconds':>8} {'peak RSS GiB':>13}  output")
    for name, code in CASES.items():
        code = code.replace("__PATH__", repr(str(path))).replace("__LEVEL__", str(level))
        seconds, rss, out = measure(code)
        if name == "regflow level":
            level = int(out.split()[1])
        print(f"{name:<16} {seconds:8.2f} {rss:13.2f}  {out}", flush=True)


if __name__ == "__main__":
    main()
