"""A small example cohort made from a real IHC slide that scikit-image ships, with known warps.

The base image is scikit-image's ``immunohistochemistry`` (a brightfield RGB IHC section:
hematoxylin nuclei, DAB-stained antigen). Fluorescence images are simulated from it by colour
deconvolution — DAPI from the hematoxylin density, a marker channel from DAB — so brightfield
and fluorescence images of one scene show the same nuclei with inverted contrast.

Every moving image is rendered from the fixed scene through a known mapping, and the fixed
landmarks are mapped to the moving image through the same mapping, so the landmark files are
exact ground truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import color, data, feature, transform

from .io import write_ome_tiff
from .rigid import similarity_matrix
from .transform import apply_matrix


@dataclass(frozen=True)
class KnownWarp:
    """Moving pixel ``q`` shows fixed pixel ``affine⁻¹ q + elastic(q)``.

    ``affine`` maps fixed to moving ``(x, y)``; ``elastic_px`` is the amplitude of a smooth
    random displacement (fixed pixels) and ``seed`` makes it reproducible.
    """

    angle_deg: float
    scale: float
    shift: tuple[float, float]
    elastic_px: float = 0.0
    seed: int = 0

    def affine(self, fixed_shape, moving_shape) -> np.ndarray:
        centre_f = np.array([(fixed_shape[1] - 1) / 2, (fixed_shape[0] - 1) / 2])
        centre_m = np.array([(moving_shape[1] - 1) / 2, (moving_shape[0] - 1) / 2])
        return similarity_matrix(self.angle_deg, self.scale, self.shift, centre_f, centre_m)

    def elastic_field(self, moving_shape) -> np.ndarray:
        """Smooth displacement ``(dx, dy)`` on the moving grid, max magnitude ``elastic_px``."""
        if self.elastic_px == 0:
            return np.zeros((2, *moving_shape))
        rng = np.random.default_rng(self.seed)
        sigma = max(moving_shape) / 8
        field = np.stack(
            [ndi.gaussian_filter(rng.normal(size=moving_shape), sigma) for _ in range(2)]
        )
        return field * (self.elastic_px / np.abs(field).max())


def _sample_field(field: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    coords = [points_xy[:, 1], points_xy[:, 0]]
    return np.stack(
        [ndi.map_coordinates(f, coords, order=1, mode="nearest") for f in field], axis=1
    )


def render_moving(
    fixed_image: np.ndarray,
    warp: KnownWarp,
    moving_shape: tuple[int, int],
    fill: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Render a ``(C, Y, X)`` fixed scene as the moving image (float64; ``order=0`` for
    label images)."""
    affine = warp.affine(fixed_image.shape[1:], moving_shape)
    field = warp.elastic_field(moving_shape)
    rows, cols = np.mgrid[: moving_shape[0], : moving_shape[1]].astype(np.float64)
    moving_xy = np.stack([cols.ravel(), rows.ravel()], axis=1)
    fixed_xy = apply_matrix(np.linalg.inv(affine), moving_xy)
    fixed_xy += np.stack([field[0].ravel(), field[1].ravel()], axis=1)
    coords = [fixed_xy[:, 1], fixed_xy[:, 0]]
    out = [
        ndi.map_coordinates(channel.astype(np.float64), coords, order=order, cval=float(value))
        for channel, value in zip(fixed_image, fill, strict=True)
    ]
    return np.stack(out).reshape(fixed_image.shape[0], *moving_shape)


def map_landmarks(
    fixed_points: np.ndarray, warp: KnownWarp, fixed_shape, moving_shape
) -> np.ndarray:
    """Moving positions of fixed landmarks: solve ``affine⁻¹ q + elastic(q) = p`` for ``q``."""
    affine = warp.affine(fixed_shape, moving_shape)
    field = warp.elastic_field(moving_shape)
    moving = apply_matrix(affine, fixed_points)
    for _ in range(100):
        moving = apply_matrix(affine, fixed_points - _sample_field(field, moving))
    return moving


def fixed_landmarks(signal: np.ndarray, n_points: int = 24, margin: int = 24) -> np.ndarray:
    """Distinctive points (Harris corners) of the fixed scene, ``(n, 2)`` as ``(x, y)``."""
    response = feature.corner_harris(ndi.gaussian_filter(signal, 2.0))
    peaks = feature.corner_peaks(
        response,
        min_distance=max(8, min(signal.shape) // 12),
        num_peaks=n_points,
        exclude_border=margin,
    )
    return peaks[:, ::-1].astype(np.float64)


def fluorescence_from_brightfield(rgb: np.ndarray, seed: int = 1) -> np.ndarray:
    """Simulated 16-bit fluorescence ``(2, Y, X)``: DAPI (hematoxylin) and a DAB marker."""
    hed = color.rgb2hed(np.moveaxis(rgb, 0, -1))
    rng = np.random.default_rng(seed)
    channels = []
    for index, gain in ((0, 30000.0), (2, 20000.0)):
        density = np.clip(hed[..., index], 0, None)
        density = density / max(float(np.percentile(density, 99.5)), 1e-6)
        signal = 400.0 + gain * np.clip(density, 0, 1.5) + rng.normal(0, 150.0, density.shape)
        channels.append(np.clip(signal, 0, 65535))
    return np.stack(channels).astype(np.uint16)


def example_annotations(shape: tuple[int, int], landmarks: np.ndarray) -> list[dict]:
    """QuPath-style annotations of the fixed scene: a tumour region with a hole, landmark
    points (detections) and a line, with QuPath's ``objectType``/``classification``."""
    height, width = shape
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    centre = np.array([0.55 * width, 0.45 * height])

    def ring(radius):
        xy = centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1) * [1.0, 0.8]
        return np.concatenate([xy, xy[:1]])

    classification = {"name": "Tumor", "color": [200, 0, 0]}
    return [
        {"type": "Feature", "id": "3f1c0e8a-0001", "geometry": {"type": "Polygon",
         "coordinates": [ring(0.22 * width), ring(0.07 * width)[::-1]]},
         "properties": {"objectType": "annotation", "name": "tumour region",
                        "classification": classification, "isLocked": False}},
        {"type": "Feature", "id": "3f1c0e8a-0002", "geometry": {"type": "MultiPoint",
         "coordinates": landmarks[:6]},
         "properties": {"objectType": "annotation", "name": "nuclei",
                        "classification": {"name": "Immune cells", "color": [160, 90, 160]}}},
        {"type": "Feature", "id": "3f1c0e8a-0003", "geometry": {"type": "LineString",
         "coordinates": [[0.2 * width, 0.8 * height], [0.8 * width, 0.75 * height]]},
         "properties": {"objectType": "annotation", "name": "margin",
                        "measurements": {"Length µm": 0.6 * width * 0.5}}},
    ]  # fmt: skip


def map_geometry(geometry: dict, mapping) -> dict:
    """A GeoJSON geometry with every vertex passed through ``mapping((n, 2)) → (n, 2)``."""

    def walk(coords):
        array = np.asarray(coords, np.float64)
        if array.ndim == 1:
            return mapping(array[None])[0].tolist()
        if array.ndim == 2:
            return mapping(array).tolist()
        return [walk(c) for c in coords]

    return {"type": geometry["type"], "coordinates": walk(geometry["coordinates"])}


def _save_annotations(path: Path, features: list[dict], mapping=None) -> None:
    """A QuPath-style FeatureCollection, vertices passed through ``mapping`` if given."""
    mapping = mapping or (lambda points: points)
    features = [f | {"geometry": map_geometry(f["geometry"], mapping)} for f in features]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def nuclei_labels(hematoxylin: np.ndarray) -> np.ndarray:
    """A nucleus label image (uint16) of the scene: connected hematoxylin-dense regions."""
    from skimage import measure

    smooth = ndi.gaussian_filter(hematoxylin, 1.0)
    return measure.label(smooth > np.percentile(smooth, 85)).astype(np.uint16)


def _save_points(path: Path, points: np.ndarray) -> None:
    # ANHIR/BIRL layout: a leading index column, then X, Y.
    pd.DataFrame({"X": points[:, 0], "Y": points[:, 1]}).to_csv(path, index=True)


def detached_nuclei(
    labels: np.ndarray,
    centre_rc: tuple[float, float],
    radius: float,
    fraction: float,
    rng: np.random.Generator,
    rim: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nuclei that detached in a later round: ``fraction`` of the labelled nuclei of a disc
    (``centre_rc`` (row, col), ``radius`` px), chosen by ``rng``.

    Returns
    -------
    detached : ndarray of bool
        Their pixels and a ``rim`` px around them, within the disc (background in the round).
    gone : ndarray
        Their labels.
    disc : ndarray of bool
    """
    from scipy import ndimage as ndi

    rows, cols = np.mgrid[: labels.shape[0], : labels.shape[1]]
    disc = np.hypot(rows - centre_rc[0], cols - centre_rc[1]) < radius
    inside = np.unique(labels[disc & (labels > 0)])
    gone = rng.choice(inside, int(fraction * len(inside)), replace=False) if len(inside) else inside
    detached = ndi.binary_dilation(np.isin(labels, gone), iterations=rim) & disc
    return detached, gone, disc


def _round_two(outdir: Path, fluorescence, hematoxylin, landmarks, dark, pixel_size) -> None:
    """A second cyclic round of the fluorescence section (``fluorescence_round2.ome.tif``,
    turned 6° and shifted on the stage) in which most nuclei of one region detached, and the
    reference's nucleus labels (``fluorescence_fixed_nuclei.ome.tif``): the example's
    ``fluorescence_rounds`` pair shows the tissue-integrity outputs."""
    shape = fluorescence.shape[1:]
    labels = nuclei_labels(hematoxylin)
    write_ome_tiff(outdir / "fluorescence_fixed_nuclei.ome.tif", labels[None].astype(np.uint16),
                   ["nuclei"], pixel_size)  # fmt: skip
    centre = (0.35 * shape[0], 0.3 * shape[1])
    rng = np.random.default_rng(11)
    detached, _, _ = detached_nuclei(labels, centre, 0.2 * min(shape), 0.8, rng, rim=2)
    section = np.where(detached[None], dark[:, None, None], fluorescence.astype(np.float64))
    warp = KnownWarp(angle_deg=6.0, scale=1.0, shift=(0.02 * shape[1], -0.015 * shape[0]))
    moving = render_moving(section, warp, shape, dark)
    write_ome_tiff(outdir / "fluorescence_round2.ome.tif",
                   np.clip(np.round(moving), 0, 65535).astype(np.uint16), ["DAPI", "DAB-marker"],
                   pixel_size)  # fmt: skip
    _save_points(outdir / "fluorescence_round2_landmarks.csv",
                 map_landmarks(landmarks, warp, shape, shape))  # fmt: skip


def make_cohort(outdir: str | Path, size: int | None = None) -> pd.DataFrame:
    """Write the example images and landmarks; return the sample sheet (paths as written).

    Parameters
    ----------
    outdir : path
    size : int, optional
        Resize the base slide so that its side is ``size`` px (tests use small ones).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rgb = np.moveaxis(data.immunohistochemistry(), -1, 0)
    if size is not None and size != rgb.shape[1]:
        resized = transform.resize(np.moveaxis(rgb, 0, -1), (size, size), anti_aliasing=True)
        rgb = np.moveaxis(np.round(resized * 255), -1, 0).astype(np.uint8)
    shape = rgb.shape[1:]
    white = np.full(3, 255.0)
    fluorescence = fluorescence_from_brightfield(rgb)
    dark = np.array([400.0, 400.0])
    hematoxylin = np.clip(color.rgb2hed(np.moveaxis(rgb, 0, -1))[..., 0], 0, None)
    landmarks = fixed_landmarks(hematoxylin, margin=max(8, shape[0] // 16))

    pixel_size = 0.5
    write_ome_tiff(outdir / "ihc_fixed.ome.tif", rgb, ["R", "G", "B"], pixel_size, rgb=True)
    _save_points(outdir / "ihc_fixed_landmarks.csv", landmarks)
    write_ome_tiff(
        outdir / "fluorescence_fixed.ome.tif", fluorescence, ["DAPI", "DAB-marker"], pixel_size
    )
    _save_points(outdir / "fluorescence_fixed_landmarks.csv", landmarks)
    # The same annotations drawn on each image (QuPath GeoJSON): exact in every frame.
    annotations = example_annotations(shape, landmarks)
    _save_annotations(outdir / "fixed_annotations.geojson", annotations)

    def moving_annotations(name, warp, moving_shape):
        mapping = lambda points: map_landmarks(points, warp, shape, moving_shape)  # noqa: E731
        _save_annotations(outdir / f"{name}_annotations.geojson", annotations, mapping)

    # 1. brightfield → brightfield, rigid: rotation and shift.
    warp = KnownWarp(angle_deg=25.0, scale=1.0, shift=(0.04 * shape[1], -0.03 * shape[0]))
    moving = render_moving(rgb, warp, shape, white)
    write_ome_tiff(
        outdir / "ihc_rigid_moving.ome.tif",
        np.round(moving).astype(np.uint8),
        ["R", "G", "B"],
        pixel_size,
        rgb=True,
    )
    _save_points(
        outdir / "ihc_rigid_moving_landmarks.csv", map_landmarks(landmarks, warp, shape, shape)
    )
    moving_annotations("ihc_rigid_moving", warp, shape)

    # 2. brightfield → fluorescence scanned at a coarser pixel size (0.65 µm): the OME pixel
    #    sizes carry the scale; rotation, shift and a smooth elastic deformation on top.
    coarse = 0.65
    moving_shape = tuple(int(round(n * pixel_size / coarse)) for n in shape)
    warp = KnownWarp(
        angle_deg=-40.0,
        scale=pixel_size / coarse,
        shift=(0.03 * shape[1], 0.02 * shape[0]),
        elastic_px=0.012 * shape[0],
        seed=2,
    )
    moving = render_moving(fluorescence, warp, moving_shape, dark)
    write_ome_tiff(
        outdir / "fluorescence_moving.ome.tif",
        np.clip(np.round(moving), 0, 65535).astype(np.uint16),
        ["DAPI", "DAB-marker"],
        coarse,
    )
    _save_points(
        outdir / "fluorescence_moving_landmarks.csv",
        map_landmarks(landmarks, warp, shape, moving_shape),
    )
    moving_annotations("fluorescence_moving", warp, moving_shape)
    # A nucleus label image segmented on the moving (fluorescence) image: an associated image.
    labels = render_moving(nuclei_labels(hematoxylin)[None], warp, moving_shape, [0.0], order=0)
    write_ome_tiff(outdir / "fluorescence_moving_nuclei.ome.tif", labels.astype(np.uint16),
                   ["nuclei"], coarse)  # fmt: skip
    _round_two(outdir, fluorescence, hematoxylin, landmarks, dark, pixel_size)

    # 3. fluorescence → brightfield PNG (no pixel size): near-180° rotation + elastic.
    warp = KnownWarp(
        angle_deg=172.0,
        scale=1.03,
        shift=(-0.02 * shape[1], 0.03 * shape[0]),
        elastic_px=0.015 * shape[0],
        seed=3,
    )
    moving = render_moving(rgb, warp, shape, white)
    from skimage.io import imsave

    imsave(
        outdir / "ihc_elastic_moving.png",
        np.moveaxis(np.round(moving).astype(np.uint8), 0, -1),
        check_contrast=False,
    )
    _save_points(
        outdir / "ihc_elastic_moving_landmarks.csv", map_landmarks(landmarks, warp, shape, shape)
    )
    moving_annotations("ihc_elastic_moving", warp, shape)

    def row(
        sample,
        fixed,
        moving,
        fixed_modality,
        moving_modality,
        fixed_channel,
        moving_channel,
        fixed_lm,
        moving_lm,
    ):
        return {
            "sample": sample,
            "fixed": str(outdir / fixed),
            "moving": str(outdir / moving),
            "fixed_modality": fixed_modality,
            "moving_modality": moving_modality,
            "fixed_channel": fixed_channel,
            "moving_channel": moving_channel,
            "fixed_landmarks": str(outdir / fixed_lm),
            "moving_landmarks": str(outdir / moving_lm),
            "fixed_annotations": str(outdir / "fixed_annotations.geojson"),
            "moving_annotations": str(outdir / moving_lm.replace("_landmarks.csv",
                                                                  "_annotations.geojson")),
            "moving_associated": (str(outdir / "fluorescence_moving_nuclei.ome.tif")
                                  if sample == "ihc_to_fluorescence" else ""),
        }  # fmt: skip

    return pd.DataFrame(
        [
            row(
                "ihc_rigid",
                "ihc_fixed.ome.tif",
                "ihc_rigid_moving.ome.tif",
                "brightfield",
                "brightfield",
                "hematoxylin",
                "hematoxylin",
                "ihc_fixed_landmarks.csv",
                "ihc_rigid_moving_landmarks.csv",
            ),
            row(
                "ihc_to_fluorescence",
                "ihc_fixed.ome.tif",
                "fluorescence_moving.ome.tif",
                "brightfield",
                "fluorescence",
                "hematoxylin",
                "DAPI",
                "ihc_fixed_landmarks.csv",
                "fluorescence_moving_landmarks.csv",
            ),
            row(
                "fluorescence_to_ihc",
                "fluorescence_fixed.ome.tif",
                "ihc_elastic_moving.png",
                "fluorescence",
                "brightfield",
                "DAPI",
                "hematoxylin",
                "fluorescence_fixed_landmarks.csv",
                "ihc_elastic_moving_landmarks.csv",
            ),
        ]
    )


def make_format_cohort(outdir: str | Path, size: int = 384) -> pd.DataFrame:
    """Pairs in vendor formats with known warps and landmarks; return their sample sheet.

    The fixed slide is an Aperio SVS "scanned at 40×" (0.25 µm, JPEG tiles, label and macro
    pages) of the IHC scene at ``2 * size`` px. Moving images, ``size`` px at coarser pixel
    sizes, each rotated and shifted: an SVS at 20× (0.5 µm, JPEG 2000 tiles), a QPTIFF
    fluorescence image (DAPI + marker, 0.5 µm), a Zeiss CZI fluorescence image (0.65 µm) and a
    generic LZW-tiled TIFF without a pixel size (the sheet gives it: 0.5 µm) and a DICOM WSI
    series (0.5 µm; writing it needs pydicom, a test-only dependency).
    """
    from .vendorfiles import (
        write_czi,
        write_dicom_wsi,
        write_generic_tiff,
        write_qptiff,
        write_svs,
    )

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    base = np.moveaxis(data.immunohistochemistry(), -1, 0)
    fine = 2 * size
    resized = transform.resize(np.moveaxis(base, 0, -1), (fine, fine), anti_aliasing=True)
    rgb = np.moveaxis(np.round(resized * 255), -1, 0).astype(np.uint8)
    shape = rgb.shape[1:]
    hematoxylin = np.clip(color.rgb2hed(np.moveaxis(rgb, 0, -1))[..., 0], 0, None)
    landmarks = fixed_landmarks(hematoxylin, margin=max(8, fine // 16))
    write_svs(outdir / "fixed_40x.svs", np.moveaxis(rgb, 0, -1), mpp=0.25, compression="jpeg")
    _save_points(outdir / "fixed_40x_landmarks.csv", landmarks)
    fluorescence = fluorescence_from_brightfield(rgb)

    def moving(name, scene, fill, pixel_size, angle, write):
        moving_shape = tuple(int(round(n * 0.25 / pixel_size)) for n in shape)
        warp = KnownWarp(angle, 0.25 / pixel_size, (0.03 * size, -0.02 * size))
        image = render_moving(scene, warp, moving_shape, fill)
        dtype = np.uint8 if scene.dtype == np.uint8 else np.uint16
        write(outdir / name, np.clip(np.round(image), 0, np.iinfo(dtype).max).astype(dtype))
        points = map_landmarks(landmarks, warp, shape, moving_shape)
        _save_points(outdir / f"{name.replace('.', '_')}_landmarks.csv", points)

    names = ["DAPI", "DAB-marker"]
    moving(
        "moving_20x.svs",
        rgb,
        np.full(3, 255.0),
        0.5,
        30.0,
        lambda p, im: write_svs(p, np.moveaxis(im, 0, -1), 0.5, compression="jpeg2000"),
    )
    moving(
        "moving.qptiff",
        fluorescence,
        np.full(2, 400.0),
        0.5,
        -35.0,
        lambda p, im: write_qptiff(p, im, names, 0.5),
    )
    moving(
        "moving.czi",
        fluorescence,
        np.full(2, 400.0),
        0.65,
        60.0,
        lambda p, im: write_czi(p, im, names, 0.65),
    )
    moving("moving_lzw.tif", rgb, np.full(3, 255.0), 0.5, -20.0,
           lambda p, im: write_generic_tiff(p, im, "lzw", 256, None))  # fmt: skip
    # a DICOM WSI series (a folder of one file per level), read through OpenSlide
    moving("moving_dicom", rgb, np.full(3, 255.0), 0.5, 45.0,
           lambda p, im: write_dicom_wsi(p, np.moveaxis(im, 0, -1), 0.5, 128, 128))  # fmt: skip

    def row(sample, moving, modality, channel, **extra):
        return {
            "sample": sample,
            "fixed": str(outdir / "fixed_40x.svs"),
            "moving": str(outdir / moving),
            "fixed_modality": "brightfield",
            "moving_modality": modality,
            "fixed_channel": "hematoxylin",
            "moving_channel": channel,
            "fixed_landmarks": str(outdir / "fixed_40x_landmarks.csv"),
            "moving_landmarks": str(outdir / f"{moving.replace('.', '_')}_landmarks.csv"),
        } | extra

    return pd.DataFrame(
        [
            row("svs_20x", "moving_20x.svs", "brightfield", "hematoxylin"),
            row("qptiff", "moving.qptiff", "fluorescence", "DAPI"),
            row("czi", "moving.czi", "fluorescence", "DAPI"),
            row(
                "lzw_tiff",
                "moving_lzw.tif",
                "brightfield",
                "hematoxylin",
                moving_pixel_size_um="0.5",
            ),  # fmt: skip
            row(
                "dicom",
                "moving_dicom/level0.dcm",
                "brightfield",
                "hematoxylin",
                moving_landmarks=str(outdir / "moving_dicom_landmarks.csv"),
            ),  # fmt: skip
        ]
    )


def _scene(size: int) -> np.ndarray:
    """The IHC slide at ``size``² px, (3, Y, X) uint8."""
    rgb = np.moveaxis(data.immunohistochemistry(), -1, 0)
    if size != rgb.shape[1]:
        resized = transform.resize(np.moveaxis(rgb, 0, -1), (size, size), anti_aliasing=True)
        rgb = np.moveaxis(np.round(resized * 255), -1, 0).astype(np.uint8)
    return rgb


def _case_image(outdir, case, image, path, points, modality, channel, index) -> dict:
    """An images-sheet row (its landmarks saved beside it); the first image is the reference."""
    landmarks = outdir / f"{case}_{image}_landmarks.csv"
    _save_points(landmarks, points)
    return {
        "case": case,
        "image": image,
        "path": str(path),
        "modality": modality,
        "channel": channel,
        "landmarks": str(landmarks),
        "reference": "true" if index == 0 else "false",
        "order": index + 1,
    }


def make_round_case(
    outdir: str | Path, case: str = "rounds", n_rounds: int = 4, size: int = 256
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A cyclic-immunofluorescence case: ``n_rounds`` rounds of one section, DAPI + a marker
    each, every round after the first rotated and shifted on the stage (a different rigid
    placement and a slight elastic change per round). Round 1 is the reference, with a
    nucleus label image (``cells``).

    Returns the images sheet and, per round, its channels in the reference frame (the truth
    a merged stack must reproduce).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rgb = _scene(size)
    hed = color.rgb2hed(np.moveaxis(rgb, 0, -1))
    dapi = fluorescence_from_brightfield(rgb)[0]
    hematoxylin = np.clip(hed[..., 0], 0, None)
    landmarks = fixed_landmarks(hematoxylin, margin=max(8, size // 16))
    rng = np.random.default_rng(7)
    truth, rows = {}, []
    for index in range(n_rounds):
        image = f"r{index + 1}"
        # a different marker per round: smooth random patterns modulated by the tissue
        marker = ndi.gaussian_filter(rng.random(dapi.shape), 3.0)
        marker = (marker - marker.min()) / (np.ptp(marker) + 1e-9)
        tissue = ndi.gaussian_filter((dapi > np.percentile(dapi, 40)).astype(float), 1.5)
        marker = np.clip(400 + 20000 * marker * tissue, 0, 65535)
        channels = np.stack([dapi, marker]).astype(np.uint16)
        truth[image] = channels
        path = outdir / f"{case}_{image}.ome.tif"
        points = landmarks
        if index == 0:
            write_ome_tiff(path, channels, ["DAPI", f"marker{index + 1}"], 0.5)
        else:
            warp = KnownWarp(
                angle_deg=float(rng.uniform(-20, 20)),
                scale=1.0,
                shift=tuple(rng.uniform(-0.05, 0.05, 2) * size),
                elastic_px=0.006 * size,
                seed=index,
            )
            moving = render_moving(channels, warp, channels.shape[1:], np.full(2, 400.0))
            write_ome_tiff(path, np.clip(np.round(moving), 0, 65535).astype(np.uint16),
                           ["DAPI", f"marker{index + 1}"], 0.5)  # fmt: skip
            points = map_landmarks(landmarks, warp, channels.shape[1:], channels.shape[1:])
        rows.append(_case_image(outdir, case, image, path, points, "fluorescence", "DAPI", index))
    # the reference's nuclei (a label image, as a segmentation tool exports it): every round's
    # per-cell integrity is reported on them
    cells = outdir / f"{case}_r1_nuclei.ome.tif"
    write_ome_tiff(cells, nuclei_labels(hematoxylin)[None], ["nuclei"], 0.5)
    rows[0]["cells"] = str(cells)
    return pd.DataFrame(rows), truth


def make_serial_case(
    outdir: str | Path,
    case: str = "serial",
    n_sections: int = 4,
    size: int = 256,
    step_elastic: float = 0.012,
    step_angle: float = 4.0,
) -> pd.DataFrame:
    """Serial sections whose deformation accumulates: section k is section k−1 under a small
    rotation, shift and elastic step, so far sections differ much more from the first (the
    reference) than from their neighbours. Landmarks are carried through every step, so
    each file holds the exact composition of the steps up to that section.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    section = _scene(size).astype(np.float64)
    hematoxylin = np.clip(color.rgb2hed(np.moveaxis(_scene(size), 0, -1))[..., 0], 0, None)
    points = fixed_landmarks(hematoxylin, margin=max(16, size // 8))
    rows = []
    shape = section.shape[1:]
    for index in range(n_sections):
        image = f"s{index + 1}"
        if index:
            warp = KnownWarp(
                angle_deg=step_angle * (1 if index % 2 else -0.5),
                scale=1.0 - 0.01 * index,
                shift=(0.01 * size, -0.008 * size),
                elastic_px=step_elastic * size,
                seed=100 + index,
            )
            section = render_moving(section, warp, shape, np.full(3, 255.0))
            points = map_landmarks(points, warp, shape, shape)
        path = outdir / f"{case}_{image}.ome.tif"
        pixels = np.clip(np.round(section), 0, 255).astype(np.uint8)
        write_ome_tiff(path, pixels, ["R", "G", "B"], 0.5, rgb=True)
        rows.append(_case_image(outdir, case, image, path, points, "brightfield", "", index))
    return pd.DataFrame(rows)


# ---- cell-level scenes: nuclei at a physical scale, local deformations finer than a working
# image (the full-resolution refinement's test and benchmark data) -------------------------


@dataclass(frozen=True)
class CellWarp:
    """Moving pixel ``q`` shows fixed pixel ``φ(q) = A⁻¹ q + smooth(q) + Σ bumps(q)``.

    ``A`` (fixed → moving): rotation ``angle_deg`` and ``shift`` about the centres; ``smooth``
    a random field of amplitude ``smooth_px`` over a fifth of the image; the bumps are local
    displacements (Gaussian profiles, ``bump_sigma_px`` across, ``bump_px`` in size) at
    ``n_bumps`` random places: motions finer than the working image's grid.
    """

    shape: tuple[int, int]
    angle_deg: float = 2.0
    shift: tuple[float, float] = (12.0, -8.0)
    smooth_px: float = 6.0
    n_bumps: int = 12
    bump_sigma_px: tuple[float, float] = (20.0, 45.0)
    bump_px: tuple[float, float] = (3.0, 9.0)
    seed: int = 0

    def affine(self) -> np.ndarray:
        centre = np.array([(self.shape[1] - 1) / 2, (self.shape[0] - 1) / 2])
        return similarity_matrix(self.angle_deg, 1.0, self.shift, centre, centre)

    def _bumps(self):
        rng = np.random.default_rng(self.seed + 1)
        height, width = self.shape
        centres = rng.uniform([0, 0], [width, height], (self.n_bumps, 2))
        sigmas = rng.uniform(*self.bump_sigma_px, self.n_bumps)
        angles = rng.uniform(0, 2 * np.pi, self.n_bumps)
        sizes = rng.uniform(*self.bump_px, self.n_bumps)
        vectors = sizes[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
        return centres, sigmas, vectors

    def _smooth_coefficients(self):
        rng = np.random.default_rng(self.seed)
        return rng.normal(size=(2, 3, 3))

    def offset(self, points_xy: np.ndarray) -> np.ndarray:
        """``smooth(q) + Σ bumps(q)`` at moving points ``(n, 2)`` (fixed px)."""
        points_xy = np.asarray(points_xy, np.float64)
        height, width = self.shape
        u, v = points_xy[:, 0] / width, points_xy[:, 1] / height
        coefficients = self._smooth_coefficients()
        out = np.zeros_like(points_xy)
        for i in range(3):
            for j in range(3):
                basis = np.sin(np.pi * (i + 0.5) * u) * np.sin(np.pi * (j + 0.5) * v)
                out += basis[:, None] * coefficients[:, i, j][None, :]
        out *= self.smooth_px / 3.0
        centres, sigmas, vectors = self._bumps()
        for centre, sigma, vector in zip(centres, sigmas, vectors, strict=True):
            d2 = ((points_xy - centre) ** 2).sum(axis=1)
            out += np.exp(-d2 / (2 * sigma**2))[:, None] * vector[None, :]
        return out

    def moving_to_fixed(self, points_xy: np.ndarray) -> np.ndarray:
        return apply_matrix(np.linalg.inv(self.affine()), points_xy) + self.offset(points_xy)

    def fixed_to_moving(self, points_xy: np.ndarray) -> np.ndarray:
        """Solve ``φ(q) = p`` for ``q`` by fixed-point iteration."""
        affine = self.affine()
        moving = apply_matrix(affine, points_xy)
        for _ in range(60):
            moving = apply_matrix(affine, points_xy - self.offset(moving))
        return moving


def nuclei_scene(
    shape: tuple[int, int], pixel_size_um: float, seed: int = 0, spacing_um: float = 11.0
) -> tuple[np.ndarray, np.ndarray]:
    """A DAPI-like image ``(Y, X)`` float32 in [0, 1]: nuclei (~7 µm) scattered about
    ``spacing_um`` apart over tissue regions with lumina, and their centres ``(n, 2)`` (x, y)."""
    import cv2

    rng = np.random.default_rng(seed)
    height, width = shape
    n = int(height * width * (pixel_size_um / spacing_um) ** 2)
    centres = rng.uniform([0, 0], [width, height], (n, 2))
    # tissue with holes: a smooth random field thresholded
    coarse = rng.normal(size=(max(2, height // 256), max(2, width // 256))).astype(np.float32)
    tissue = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) > -0.6
    keep = tissue[centres[:, 1].astype(int), centres[:, 0].astype(int)]
    centres = centres[keep]
    impulses = np.zeros(shape, np.float32)
    rows, cols = centres[:, 1].astype(int), centres[:, 0].astype(int)
    np.add.at(impulses, (rows, cols), rng.uniform(0.6, 1.0, len(centres)).astype(np.float32))
    sigma = 2.0 / pixel_size_um  # ~7 µm nuclei
    image = cv2.GaussianBlur(impulses, (0, 0), sigma) * (2 * np.pi * sigma**2)
    image += 0.05 * cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), 1.0)
    image = np.clip(image / max(float(np.percentile(image, 99.8)), 1e-6), 0, 1)
    return image.astype(np.float32), centres + 0.0


def render_cell_moving(fixed: np.ndarray, warp: CellWarp) -> np.ndarray:
    """The moving image: ``fixed`` sampled at ``φ(q)`` for every moving pixel (bilinear)."""
    import cv2

    height, width = fixed.shape
    out = np.empty_like(fixed)
    for r0 in range(0, height, 256):
        rows, cols = np.mgrid[r0 : min(r0 + 256, height), :width].astype(np.float64)
        points = np.stack([cols.ravel(), rows.ravel()], 1)
        source = warp.moving_to_fixed(points)
        map_x = source[:, 0].reshape(rows.shape).astype(np.float32)
        map_y = source[:, 1].reshape(rows.shape).astype(np.float32)
        out[r0 : r0 + rows.shape[0]] = cv2.remap(
            fixed, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return out
