"""A generated tissue block cut into serial sections, with its exact truth (the 3D
reconstruction's test and benchmark data).

The block is defined in its own coordinates ``(x, y)`` (pixels of ``pixel_size_um``) and
depth ``z`` (sections of ``thickness_um``): a tissue outline and a stroma pattern that change
slowly with depth, nuclei drawn anew in every section (consecutive sections do not share
cells), and vessels and glands — tubes that run *obliquely* through the block, their centres
moving up to ``max_oblique_um`` per section. Each section is then torn (optionally), given
its own elastic distortion and its own pose on the slide (any rotation, a shift) and stained
H&E or IHC.

A block point ``(x, y)`` is the same point in every section, so its position in each
section's image (the landmark files) is the exact truth: a registration is right when a
section's landmark lands where the reference section's landmark of the same row is. A
registration that follows the oblique structures lands elsewhere, which is the drift that a
stack reconstruction must avoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .example import KnownWarp, _save_points, map_landmarks, render_moving
from .io import write_ome_tiff

BACKGROUND = np.array([244.0, 242.0, 246.0])


@dataclass(frozen=True)
class Tube:
    """A vessel or gland: a tube whose centre is ``centre + velocity * k`` in section ``k``."""

    centre: np.ndarray  # (x, y) px at section 0
    velocity: np.ndarray  # px per section
    radius: float  # px
    gland: bool


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    field = ndi.gaussian_filter(rng.normal(size=shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-12)


class Block:
    """The block's content; :meth:`section` renders the slice of section ``k``."""

    def __init__(self, size: int, n_sections: int, pixel_size_um: float,
                 max_oblique_um: float, seed: int, thickness_um: float = 5.0,
                 stroma_period: float | None = None):  # fmt: skip
        rng = np.random.default_rng(seed)
        self.size, self.n_sections, self.seed = size, n_sections, seed
        self.pixel_size_um = pixel_size_um
        shape = (size, size)
        rows, cols = np.mgrid[:size, :size].astype(np.float64)
        radius = np.hypot(rows - size / 2, cols - size / 2) / (0.30 * size)
        # the outline: a disc of ~0.6 of the side with an irregular edge, slowly changing
        self._radius = radius
        self._outline = [_smooth_noise(rng, shape, size / 12) for _ in range(2)]
        self._stroma = [_smooth_noise(rng, shape, 3.0) for _ in range(2)]
        # sections over which the stroma's texture turns into another (a quarter period):
        # by default it barely changes through the block (4 × its depth)
        self.stroma_period = stroma_period or 4.0 * n_sections
        self._fibres = [_smooth_noise(rng, shape, 1.2) for _ in range(2)]
        n_tubes = max(6, int(round(24 * (size / 1024) ** 2)))
        tubes = []
        for index in range(n_tubes):
            gland = index % 3 == 0
            speed = rng.uniform(0.3, 1.0) * max_oblique_um / pixel_size_um
            angle = rng.uniform(0, 2 * np.pi)
            velocity = speed * np.array([np.cos(angle), np.sin(angle)])
            # centred so the tube crosses the tissue over the block's depth
            middle = size / 2 + rng.uniform(-0.22, 0.22, 2) * size
            centre = middle - velocity * (n_sections - 1) / 2
            scale = size / 1024 if size < 1024 else 1.0
            radius = (rng.uniform(22, 40) if gland else rng.uniform(9, 18)) * max(scale, 0.35)
            tubes.append(Tube(centre, velocity, radius, gland))
        self.tubes = tubes
        self._rows, self._cols = rows, cols
        # nuclei as points of the block, ~8 µm deep (sections of `thickness` µm)
        self.thickness, self.nucleus_depth = thickness_um, 4.0
        count = int(0.012 * size * size * (n_sections + 4) * self.thickness / 8.0)
        self.nuclei_x = rng.integers(0, size, count)
        self.nuclei_y = rng.integers(0, size, count)
        self.nuclei_z = rng.uniform(-10.0, self.thickness * (n_sections + 1), count)

    def depth_mix(self, pair: list[np.ndarray], k: int, period: float) -> np.ndarray:
        angle = 0.5 * np.pi * k / period
        return np.cos(angle) * pair[0] + np.sin(angle) * pair[1]

    def tissue(self, k: int) -> np.ndarray:
        return self._radius - 0.15 * self.depth_mix(self._outline, k, 3 * self.n_sections) < 1.0

    def section(self, k: int, stain: str) -> np.ndarray:
        """Section ``k`` in block coordinates, (3, Y, X) float RGB."""
        rng = np.random.default_rng([self.seed, k])
        size = self.size
        tissue = self.tissue(k)
        stroma = 0.55 + 0.25 * np.tanh(self.depth_mix(self._stroma, k, self.stroma_period))
        stroma += 0.12 * np.tanh(self.depth_mix(self._fibres, k, 2.0))
        lumen = np.zeros((size, size), bool)
        epithelium = np.zeros((size, size), bool)
        wall = np.zeros((size, size), bool)
        for tube in self.tubes:
            cx, cy = tube.centre + tube.velocity * k
            distance = np.hypot(self._cols - cx, self._rows - cy) / tube.radius
            lumen |= distance < (0.55 if tube.gland else 0.75)
            if tube.gland:
                epithelium |= (distance >= 0.55) & (distance < 1.0)
            else:
                wall |= (distance >= 0.75) & (distance < 1.0)
        # nuclei: cells of the block (about a section and a half deep), so consecutive
        # sections share some and not others; denser in the glands' epithelium
        nuclei = np.zeros((size, size))
        depth = self.nuclei_z - k * self.thickness
        shown = np.abs(depth) < self.nucleus_depth
        ys, xs = self.nuclei_y[shown], self.nuclei_x[shown]
        weight = 1.0 - np.abs(depth[shown]) / self.nucleus_depth
        np.add.at(nuclei, (ys, xs), weight)
        extra = rng.random((size, size)) < 0.05
        nuclei[epithelium & extra] = 1.0
        nuclei = np.clip(ndi.gaussian_filter(nuclei, 1.1) * 9.0, 0, 1)
        nuclei[lumen | ~tissue] = 0
        density = np.where(tissue & ~lumen, stroma, 0.0)
        density = np.where(wall & tissue, 1.0, density)
        if stain == "ihc":
            # hematoxylin counterstain, DAB on the glands' epithelium and the vessels' wall
            dab = (epithelium | wall) & tissue
            colour = (BACKGROUND[:, None, None]
                      - np.array([40.0, 45.0, 25.0])[:, None, None] * density
                      - np.array([120.0, 120.0, 60.0])[:, None, None] * nuclei
                      - np.array([70.0, 120.0, 170.0])[:, None, None] * dab * 0.8)  # fmt: skip
        else:
            eosin = np.where(epithelium & tissue, 0.8, density)
            colour = (BACKGROUND[:, None, None]
                      - np.array([25.0, 120.0, 70.0])[:, None, None] * eosin
                      - np.array([150.0, 170.0, 90.0])[:, None, None] * nuclei)  # fmt: skip
        return np.clip(colour, 0, 255)


def _tear(image: np.ndarray, rng, size: int, pixel_size_um: float):
    """A tear: the tissue beyond a line through the middle shifted away by 30–50 µm, leaving a
    gap. Returns the torn image and the block → torn mapping of points."""
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    origin = np.array([size / 2, size / 2]) + rng.uniform(-0.1, 0.1, 2) * size
    shift = normal * rng.uniform(30, 50) / pixel_size_um
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    side = (cols - origin[0]) * normal[0] + (rows - origin[1]) * normal[1]
    source = np.stack([rows - shift[1], cols - shift[0]])
    moved = np.stack([ndi.map_coordinates(c, source, order=1, mode="nearest") for c in image])
    torn = np.where(side[None] > np.linalg.norm(shift), moved, image)
    gap = (side > 0) & (side <= np.linalg.norm(shift))
    torn[:, gap] = BACKGROUND[:, None]

    def points(xy: np.ndarray) -> np.ndarray:
        beyond = (xy - origin) @ normal > 0
        return xy + beyond[:, None] * shift

    return torn, points


def block_landmarks(block: Block, reference: int, n_points: int, rng) -> np.ndarray:
    """Block points: a third on the reference section's vessels and glands (rim and centre),
    the rest in its tissue."""
    tissue = block.tissue(reference) & block.tissue(0) & block.tissue(block.n_sections - 1)
    tissue = ndi.binary_erosion(tissue, iterations=max(4, block.size // 40))
    points = []
    for tube in block.tubes[: n_points // 3]:
        centre = tube.centre + tube.velocity * reference
        offset = rng.uniform(0, 0.9) * tube.radius * np.array([1.0, 0.0])
        points.append(centre + offset)
    ys, xs = np.nonzero(tissue)
    chosen = rng.choice(len(ys), n_points - len(points), replace=False)
    points += [np.array([xs[i], ys[i]], np.float64) for i in chosen]
    points = np.array(points)
    keep = tissue[np.clip(points[:, 1].astype(int), 0, block.size - 1),
                  np.clip(points[:, 0].astype(int), 0, block.size - 1)]  # fmt: skip
    return points[keep]


def make_serial_block(
    outdir: str | Path,
    case: str = "block",
    n_sections: int = 24,
    size: int = 768,
    pixel_size_um: float = 2.0,
    thickness_um: float = 5.0,
    reference: int | None = None,
    torn: tuple[int, ...] = (5, 17),
    ihc: tuple[int, ...] = (3, 9, 14, 20),
    max_oblique_um: float = 8.0,
    elastic_um: tuple[float, float] = (10.0, 25.0),
    max_shift: float = 0.12,
    n_points: int = 48,
    unrelated: int | None = None,
    seed: int = 0,
    stroma_period: float | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Write the block's sections (OME-TIFF RGB) and landmark files; return the images sheet
    (``order``, ``thickness_um``, the ``reference`` in the middle unless given) and the truth.

    ``unrelated`` replaces that section by a section of another block (a swapped slide).
    Indices past the stack are ignored (``torn``, ``ihc``), so small stacks keep the defaults.
    ``stroma_period`` (sections): how fast the stroma's texture changes with depth (it turns
    into another texture over a quarter period); default 4 × ``n_sections``, nearly constant.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    block = Block(
        size, n_sections, pixel_size_um, max_oblique_um, seed, thickness_um, stroma_period
    )
    reference = n_sections // 2 if reference is None else reference
    rng = np.random.default_rng(seed + 1)
    points = block_landmarks(block, reference, n_points, rng)
    other = (Block(size, n_sections, pixel_size_um, max_oblique_um, seed + 1000, thickness_um,
                   stroma_period)
             if unrelated is not None else None)  # fmt: skip
    rows, poses = [], {}
    for k in range(n_sections):
        image = f"s{k + 1:02d}"
        stain = "ihc" if k in ihc else "he"
        source = other if k == unrelated else block
        pixels = source.section(k, stain)
        section_points = points
        if k in torn:
            pixels, tear = _tear(pixels, rng, size, pixel_size_um)
            section_points = tear(points)
        warp = KnownWarp(
            angle_deg=float(rng.uniform(-180, 180)),
            scale=1.0,
            shift=tuple(rng.uniform(-max_shift, max_shift, 2) * size),
            elastic_px=float(rng.uniform(*elastic_um)) / pixel_size_um,
            seed=seed * 1000 + k,
        )
        moving = render_moving(pixels, warp, (size, size), BACKGROUND)
        path = outdir / f"{case}_{image}.ome.tif"
        write_ome_tiff(path, np.clip(np.round(moving), 0, 255).astype(np.uint8),
                       ["R", "G", "B"], pixel_size_um, rgb=True)  # fmt: skip
        landmarks = outdir / f"{case}_{image}_landmarks.csv"
        _save_points(landmarks, map_landmarks(section_points, warp, (size, size), (size, size)))
        poses[image] = warp
        rows.append({
            "case": case, "image": image, "path": str(path), "modality": "brightfield",
            "landmarks": str(landmarks), "pixel_size_um": str(pixel_size_um),
            "reference": "true" if k == reference else "false", "order": str(k + 1),
            "thickness_um": str(thickness_um),
        })  # fmt: skip
    truth = {"poses": poses, "points": points, "reference": f"s{reference + 1:02d}",
             "torn": [f"s{k + 1:02d}" for k in torn if k < n_sections],
             "unrelated": None if unrelated is None else f"s{unrelated + 1:02d}"}  # fmt: skip
    return pd.DataFrame(rows), truth
