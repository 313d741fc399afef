"""Registration accuracy and speed: regflow against baselines on BIRL-style pairs.

Usage::

    .venv/bin/python benchmarks/registration.py --pairs ../shared/data/birl/pairs-imgs-lnds_mix.csv
    .venv/bin/python benchmarks/registration.py --pairs … --workflow /tmp/bench  # + whole workflow

For every pair of the CSV (columns: Target image, Source image, Target landmarks, Source
landmarks; paths relative to the CSV) it prints median and max rTRE (TRE / diagonal of the
target image) and seconds of: the unregistered pair, a naive recipe (grayscale, log-polar +
phase correlation, TV-L1 defaults), regflow's global stage and regflow's final result, and —
when ``itk-elastix`` is installed (``pip install -e '.[bench]'``; never needed by the
workflow) — elastix rigid → affine → B-spline from a centre-of-gravity start. Then generated
multimodal pairs with known warps (rotation anywhere in ±180°, scale 0.9–1.1, smooth elastic;
brightfield fixed / fluorescence moving and the reverse) with median TRE in pixels.
``--mirrored`` repeats every pair with the moving image flipped left–right; ``--perturbed``
re-poses every pair's moving image (rotated, rescaled, mirrored, a part torn off, on a larger
slide) to show that the global stage finds the same solution whatever the pose;
``--no-elastix`` skips elastix even when installed.
``--workflow DIR`` also runs the whole Snakemake workflow (``--cores 2``) on the pairs of the
CSV and reports its wall time, Snakemake's start-up and every job's included, next to the
sum of elastix's per-pair seconds (its one-off import of ~9 s left out).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _workflow import workflow_command  # noqa: E402  (benchmarks/ is sys.path[0])
from regflow.example import (  # noqa: E402
    KnownWarp,
    fixed_landmarks,
    fluorescence_from_brightfield,
    map_landmarks,
    render_moving,
)
from regflow.io import read_image, read_info, write_ome_tiff  # noqa: E402
from regflow.metrics import target_registration_error  # noqa: E402
from regflow.pipeline import register_files  # noqa: E402
from regflow.points import read_points  # noqa: E402
from regflow.transform import Transform  # noqa: E402


def naive_recipe(fixed_path: str, moving_path: str) -> Transform:
    """Grayscale, log-polar rotation/scale + phase correlation, TV-L1 with defaults."""
    from scipy import ndimage as ndi
    from skimage import color, registration, transform

    def gray(path):
        image = read_image(path).astype(np.float64)
        image = np.moveaxis(image, 0, -1)
        return color.rgb2gray(image[..., :3]) if image.shape[-1] >= 3 else image[..., 0]

    fixed, moving = gray(fixed_path), gray(moving_path)
    size = max(*fixed.shape, *moving.shape)
    pad = lambda im: np.pad(im, ((0, size - im.shape[0]), (0, size - im.shape[1])))  # noqa: E731
    fixed_p, moving_p = pad(fixed), pad(moving)
    spectra = [np.abs(np.fft.fftshift(np.fft.fft2(im))) for im in (fixed_p, moving_p)]
    radius = size // 8
    polar = [
        transform.warp_polar(s, radius=radius, output_shape=(360, radius), scaling="log")
        for s in spectra
    ]
    shift, _, _ = registration.phase_cross_correlation(
        polar[0][:180], polar[1][:180], upsample_factor=10, normalization=None
    )
    angle = -shift[0]
    scale = np.exp(shift[1] / (radius / np.log(radius)))
    centre = np.array([(size - 1) / 2, (size - 1) / 2])
    theta = np.deg2rad(angle)
    linear = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    affine = np.eye(3)
    affine[:2, :2] = linear
    affine[:2, 2] = centre - linear @ centre
    rc = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])
    rotated = ndi.affine_transform(moving_p, rc @ affine @ rc, order=1)
    shift, _, _ = registration.phase_cross_correlation(fixed_p, rotated, upsample_factor=10)
    offset = np.eye(3)
    offset[:2, 2] = [-shift[1], -shift[0]]
    affine = affine @ offset
    rotated = ndi.affine_transform(moving_p, rc @ affine @ rc, order=1)
    flow = registration.optical_flow_tvl1(fixed_p, rotated)[:, : fixed.shape[0], : fixed.shape[1]]
    displacement = np.stack([flow[1], flow[0]]).astype(np.float32)
    return Transform(affine, displacement, np.eye(3), fixed.shape, moving.shape)


def elastix_available() -> bool:
    try:
        import itk  # noqa: F401

        return hasattr(itk, "ElastixRegistrationMethod")
    except ImportError:
        return False


def _luminance(path: str) -> np.ndarray:
    image = read_image(path).astype(np.float32)
    if image.shape[0] >= 3:
        return np.tensordot(np.array([0.2125, 0.7154, 0.0721], np.float32), image[:3], axes=1)
    return image[0]


def elastix_recipe(fixed_path: str, moving_path: str, moving_points: np.ndarray) -> np.ndarray:
    """elastix rigid → affine → B-spline (default maps, centre-of-gravity start) on luminance.

    Returns the moving points mapped into the fixed image. transformix maps points of its
    *fixed* image into its moving image, so the roles are swapped for the registration (the
    usual way of mapping source landmarks with elastix).
    """
    import tempfile

    import itk

    source = itk.GetImageFromArray(np.ascontiguousarray(_luminance(moving_path)))
    target = itk.GetImageFromArray(np.ascontiguousarray(_luminance(fixed_path)))
    parameters = itk.ParameterObject.New()
    for name in ("rigid", "affine", "bspline"):
        parameter_map = parameters.GetDefaultParameterMap(name)
        if name == "rigid":
            parameter_map["AutomaticTransformInitialization"] = ["true"]
            parameter_map["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
        parameters.AddParameterMap(parameter_map)
    _, result = itk.elastix_registration_method(
        source, target, parameter_object=parameters, log_to_console=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        points_file = Path(tmp) / "points.txt"
        points_file.write_text(
            f"point\n{len(moving_points)}\n" + "".join(f"{x} {y}\n" for x, y in moving_points)
        )
        transformix = itk.TransformixFilter.New(target)
        transformix.SetTransformParameterObject(result)
        transformix.SetFixedPointSetFileName(str(points_file))
        transformix.SetOutputDirectory(tmp)
        transformix.SetLogToConsole(False)
        transformix.Update()
        mapped = [
            [float(v) for v in line.split("OutputPoint = [")[1].split("]")[0].split()]
            for line in (Path(tmp) / "outputpoints.txt").read_text().splitlines()
        ]
    return np.array(mapped)


def rtre(points: np.ndarray, reference: np.ndarray, diagonal: float) -> tuple[float, float]:
    tre = target_registration_error(points, reference) / diagonal
    finite = tre[np.isfinite(tre)]
    if finite.size < tre.size / 2:
        return float("nan"), float("nan")
    # Unmapped points count as the worst error, never as absent.
    tre = np.where(np.isfinite(tre), tre, np.nanmax(tre))
    return float(np.median(tre)), float(np.max(tre))


def affine_oracle(moving_points: np.ndarray, fixed_points: np.ndarray) -> np.ndarray:
    """The best affine map of the moving landmarks onto the fixed ones (least squares): what
    no global transform can beat."""
    n = min(len(moving_points), len(fixed_points))
    design = np.column_stack([moving_points[:n], np.ones(n)])
    solution, *_ = np.linalg.lstsq(design, fixed_points[:n], rcond=None)
    return design @ solution


def mirrored_copy(path: str, points: np.ndarray, folder: Path) -> tuple[str, np.ndarray]:
    """The moving image flipped left–right (a slide mounted face down) and its landmarks."""
    image = read_image(path)
    flipped = np.ascontiguousarray(image[:, :, ::-1])
    info = read_info(path)
    target = folder / f"{Path(path).stem}_mirrored.ome.tif"
    write_ome_tiff(target, flipped, info.channel_names, info.pixel_size_um, rgb=info.rgb)
    mirrored = points.copy()
    mirrored[:, 0] = image.shape[2] - 1 - mirrored[:, 0]
    return str(target), mirrored


def review_flags(result, truth_fixed=None, truth_moving=None) -> str:
    """The QC review's flags for an in-process registration (as the qc rule computes them)."""
    from regflow.qc import WorkingImage, review_registration, similarity_by_stage, stage_transforms

    fixed = WorkingImage(result.fixed.image, result.fixed.tissue_mask, result.fixed.full_to_working)
    moving = WorkingImage(
        result.moving.image, result.moving.tissue_mask, result.moving.full_to_working
    )
    similarity, _ = similarity_by_stage(fixed, moving, stage_transforms(result.transform))
    review = review_registration(fixed, moving, result.transform, similarity,
                                 rotation_deg=result.rigid.rotation_deg)  # fmt: skip
    return ";".join(f["flag"] for f in review["flags"]) or "-"


def benchmark_pairs(
    pairs_csv: Path, max_size: int, elastix: bool, mirrored: bool = False
) -> pd.DataFrame:
    import tempfile

    base = pairs_csv.resolve().parent
    pairs = pd.read_csv(pairs_csv)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="regflow-mirrored-"))
    for _, pair in pairs.iterrows():
        fixed_path = str(base / pair["Target image"])
        moving_path = str(base / pair["Source image"])
        fixed_points = read_points(base / pair["Target landmarks"])
        moving_points = read_points(base / pair["Source landmarks"])
        if mirrored:
            moving_path, moving_points = mirrored_copy(moving_path, moving_points, scratch)
        info = read_info(fixed_path)
        diagonal = float(np.hypot(*info.shape))
        name = Path(pair["Source image"]).stem + (" (mirrored)" if mirrored else "")

        def add(method, points, seconds, name=name, fixed_points=fixed_points, diagonal=diagonal):
            median, worst = rtre(points, fixed_points, diagonal)
            rows.append(
                {
                    "pair": name,
                    "method": method,
                    "rtre_median": median,
                    "rtre_max": worst,
                    "seconds": seconds,
                }
            )

        add("unregistered", moving_points, 0.0)
        add("affine oracle", affine_oracle(moving_points, fixed_points), 0.0)
        start = time.perf_counter()
        naive = naive_recipe(fixed_path, moving_path)
        add("naive", naive.moving_to_fixed(moving_points), time.perf_counter() - start)
        start = time.perf_counter()
        result = register_files(fixed_path, moving_path, preprocess={"max_size": max_size})
        seconds = time.perf_counter() - start
        add(
            "regflow rigid",
            result.rigid_transform.moving_to_fixed(moving_points),
            sum(result.seconds[k] for k in ("preprocess", "rigid")),
        )
        add("regflow final", result.transform.moving_to_fixed(moving_points), seconds)
        rows[-1]["found_mirrored"] = result.rigid.mirrored
        rows[-1]["flags"] = review_flags(result)
        rows[-1]["stages"] = " ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
        if elastix:
            start = time.perf_counter()
            mapped = elastix_recipe(fixed_path, moving_path, moving_points)
            add("elastix", mapped, time.perf_counter() - start)
    return pd.DataFrame(rows)


def benchmark_generated(size: int = 1000) -> pd.DataFrame:
    """Brightfield ↔ fluorescence pairs with known warps; TRE in pixels."""
    import tempfile

    from skimage import data, transform

    rgb = data.immunohistochemistry()
    rgb = (transform.resize(rgb, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8)
    rgb = np.moveaxis(rgb, -1, 0)
    fluorescence = fluorescence_from_brightfield(rgb)
    shape = rgb.shape[1:]
    from skimage import color

    hema = np.clip(color.rgb2hed(np.moveaxis(rgb, 0, -1))[..., 0], 0, None)
    points = fixed_landmarks(hema, n_points=30, margin=size // 10)
    rows = []
    cases = [(-170, 0.92), (-95, 1.08), (-30, 1.0), (0, 0.9), (45, 1.1), (120, 1.0), (180, 1.05)]
    with tempfile.TemporaryDirectory() as tmp:
        for direction in ("brightfield→fluorescence", "fluorescence→brightfield"):
            for index, (angle, scale) in enumerate(cases):
                warp = KnownWarp(
                    angle, scale, (0.02 * size, -0.015 * size), elastic_px=0.006 * size, seed=index
                )
                if direction.startswith("brightfield"):
                    fixed, moving, fill = rgb, fluorescence, np.array([400.0, 400.0])
                    names_f, names_m = ["R", "G", "B"], ["DAPI", "DAB-marker"]
                    modalities, channels = ("brightfield", "fluorescence"), ("hematoxylin", "DAPI")
                else:
                    fixed, moving, fill = fluorescence, rgb, np.full(3, 255.0)
                    names_f, names_m = ["DAPI", "DAB-marker"], ["R", "G", "B"]
                    modalities, channels = ("fluorescence", "brightfield"), ("DAPI", "hematoxylin")
                rendered = render_moving(moving, warp, shape, fill)
                rendered = np.clip(np.round(rendered), 0, np.iinfo(moving.dtype).max).astype(
                    moving.dtype
                )
                fixed_path, moving_path = f"{tmp}/f.ome.tif", f"{tmp}/m.ome.tif"
                write_ome_tiff(fixed_path, fixed, names_f, rgb=fixed.shape[0] == 3)
                write_ome_tiff(moving_path, rendered, names_m, rgb=rendered.shape[0] == 3)
                truth = map_landmarks(points, warp, shape, shape)
                start = time.perf_counter()
                result = register_files(fixed_path, moving_path, *modalities, *channels)
                seconds = time.perf_counter() - start
                mapped = result.transform.moving_to_fixed(truth)
                tre = target_registration_error(mapped, points)
                tre_rigid = target_registration_error(
                    result.rigid_transform.moving_to_fixed(truth), points
                )
                rows.append(
                    {
                        "direction": direction,
                        "angle": angle,
                        "scale": scale,
                        "tre_rigid_px": float(np.nanmedian(tre_rigid)),
                        "tre_median_px": float(np.nanmedian(tre)),
                        "unmapped": int(np.isnan(tre).sum()),
                        "seconds": seconds,
                        "found_mirrored": result.rigid.mirrored,
                        "flags": review_flags(result),
                    }
                )
    return pd.DataFrame(rows)


# (rotation °, scale, mirrored, torn): the moving image re-posed on a larger slide
POSES = [
    (30, 1.0, False, False),
    (75, 0.9, False, False),
    (110, 1.1, False, False),
    (160, 1.0, True, False),
    (225, 0.95, False, True),
    (300, 1.05, True, True),
    (0, 1.0, False, True),
]


def reposed_copy(path: str, points: np.ndarray, pose, folder: Path):
    """The moving image rotated, scaled, optionally mirrored and torn (the tissue's upper-left
    sixth replaced by the slide's background), on a square slide large enough for every
    rotation; returns the file, the landmarks in it and which landmarks still have tissue."""
    from skimage import transform

    angle, scale, mirror, torn = pose
    image = np.moveaxis(read_image(path), 0, -1).astype(np.float32) / 255.0
    height, width = image.shape[:2]
    points = points.copy()
    background = np.median(image[:20, :20].reshape(-1, image.shape[2]), axis=0)
    kept = np.ones(len(points), bool)
    if torn:
        kept = ~((points[:, 1] < height // 2) & (points[:, 0] < width // 3))
        image = image.copy()
        image[: height // 2, : width // 3] = background
    if mirror:
        image = image[:, ::-1]
        points[:, 0] = width - 1 - points[:, 0]
    side = int(np.ceil(np.hypot(height, width) * scale)) + 20
    forward = (
        transform.SimilarityTransform(translation=(-(width - 1) / 2, -(height - 1) / 2))
        + transform.SimilarityTransform(scale=scale, rotation=np.deg2rad(angle))
        + transform.SimilarityTransform(translation=((side - 1) / 2, (side - 1) / 2))
    )
    out = np.stack([transform.warp(image[..., k], forward.inverse, output_shape=(side, side),
                                   order=1, cval=float(background[k]))
                    for k in range(image.shape[2])])  # fmt: skip
    target = folder / f"{Path(path).stem}_{angle}_{scale}_{int(mirror)}{int(torn)}.ome.tif"
    write_ome_tiff(target, (out * 255).round().astype(np.uint8), ["R", "G", "B"], None, rgb=True)
    return str(target), forward(points), kept


def benchmark_perturbed(pairs_csv: Path, max_size: int) -> pd.DataFrame:
    """Every pair of the CSV with its moving image re-posed (:data:`POSES`): the global
    stage must find the same solution whatever the rotation, scale, mirroring or a torn
    part (landmarks in the torn part are left out)."""
    import tempfile

    base = pairs_csv.resolve().parent
    scratch = Path(tempfile.mkdtemp(prefix="regflow-reposed-"))
    rows = []
    for _, pair in pd.read_csv(pairs_csv).iterrows():
        fixed_path = str(base / pair["Target image"])
        fixed_points = read_points(base / pair["Target landmarks"])
        moving_points = read_points(base / pair["Source landmarks"])
        n = min(len(fixed_points), len(moving_points))
        diagonal = float(np.hypot(*read_info(fixed_path).shape))
        for pose in POSES:
            path, points, kept = reposed_copy(
                str(base / pair["Source image"]), moving_points[:n], pose, scratch
            )
            start = time.perf_counter()
            result = register_files(fixed_path, path, preprocess={"max_size": max_size})
            seconds = time.perf_counter() - start
            row = {"pair": Path(pair["Source image"]).stem, "rotation": pose[0],
                   "scale": pose[1], "mirrored": pose[2], "torn": pose[3]}  # fmt: skip
            for stage, transform in (("global", result.rigid_transform),
                                     ("final", result.transform)):  # fmt: skip
                median, worst = rtre(
                    transform.moving_to_fixed(points[kept]), fixed_points[:n][kept], diagonal
                )
                row[f"{stage}_median"], row[f"{stage}_max"] = median, worst
            row["lost"] = int(np.isnan(result.transform.moving_to_fixed(points[kept])).any(1).sum())
            row["found_mirrored"] = result.rigid.mirrored
            row["seconds"] = seconds
            rows.append(row)
    return pd.DataFrame(rows)


def benchmark_workflow(pairs_csv: Path, workdir: Path) -> float:
    """Wall time of the whole workflow (--cores 2) on the real pairs of the CSV."""
    base = pairs_csv.resolve().parent
    pairs = pd.read_csv(pairs_csv)
    workdir.mkdir(parents=True, exist_ok=True)
    sheet = pd.DataFrame(
        {
            "sample": [Path(p).stem for p in pairs["Source image"]],
            "fixed": [str(base / p) for p in pairs["Target image"]],
            "moving": [str(base / p) for p in pairs["Source image"]],
            "fixed_landmarks": [str(base / p) for p in pairs["Target landmarks"]],
            "moving_landmarks": [str(base / p) for p in pairs["Source landmarks"]],
        }
    )
    sheet.to_csv(workdir / "samples.tsv", sep="\t", index=False)
    (workdir / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    start = time.perf_counter()
    subprocess.run(workflow_command(workdir), check=True)
    return time.perf_counter() - start


def workflow_results(workdir: Path) -> pd.DataFrame:
    """The workflow's own numbers per pair (every stage, the full-resolution refinement
    included, which the in-process rows above do not run): rTRE, unmapped landmarks, flags
    and the refinement's tiles."""
    import json

    summary = pd.read_csv(workdir / "out" / "summary.tsv", sep="\t")
    refined = []
    for sample in summary["sample"]:
        report = json.loads((workdir / "out" / sample / "refine.json").read_text())
        refined.append(f"{report.get('tiles_accepted', 0)}/{report.get('tiles_with_tissue', 0)}"
                       if "level" in report else "not run")  # fmt: skip
    columns = ["sample", "status", "rtre_rigid", "rtre_final", "landmarks_unmapped", "flags"]
    return summary[columns].assign(refined_tiles=refined)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, required=True, help="BIRL-style pairs CSV")
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--no-generated", action="store_true")
    parser.add_argument("--no-elastix", action="store_true", help="skip elastix even if installed")
    parser.add_argument(
        "--mirrored", action="store_true", help="also every pair, moving image flipped"
    )
    parser.add_argument("--workflow", type=Path, default=None, help="also time the workflow here")
    parser.add_argument(
        "--perturbed", action="store_true",
        help="also every pair re-posed: rotated, scaled, mirrored, torn (global-stage robustness)",
    )  # fmt: skip
    args = parser.parse_args()
    pd.set_option("display.width", 160)
    start = time.perf_counter()
    elastix = (
        not args.no_elastix and elastix_available()
    )  # loads itk: a one-off ~9 s kept out of the per-pair seconds
    elastix_import = time.perf_counter() - start
    if not elastix and not args.no_elastix:
        print("itk-elastix not installed: no elastix rows (pip install -e '.[bench]')")
    table = benchmark_pairs(args.pairs, args.max_size, elastix)
    if args.mirrored:
        table = pd.concat([table, benchmark_pairs(args.pairs, args.max_size, elastix, True)])
    print("\n## Real / artificial pairs (rTRE = TRE / target diagonal)\n")
    print(
        table.to_markdown(index=False, floatfmt=".4f")
        if _has_tabulate()
        else table.to_string(index=False)
    )
    if args.perturbed:
        reposed = benchmark_perturbed(args.pairs, args.max_size)
        print("\n## Re-posed pairs (rTRE; landmarks in a torn part left out)\n")
        print(reposed.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        worse = reposed["final_median"] > reposed["global_median"] + 1e-4
        spread = reposed.groupby("pair")["global_median"].agg(["min", "max"])
        print("\nglobal median rTRE over the poses of each pair (min–max):")
        print(spread.to_string(float_format=lambda v: f"{v:.4f}"))
        print(
            f"final worse than global on {int(worse.sum())} of {len(reposed)}; "
            f"lost landmarks: {int(reposed['lost'].sum())}"
        )
    if not args.no_generated:
        generated = benchmark_generated()
        print("\n## Generated multimodal pairs, 1000 px (TRE in pixels)\n")
        print(generated.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(
            f"\nmedian TRE over all generated pairs: {generated['tre_median_px'].median():.3f} px; "
            f"worst pair: {generated['tre_median_px'].max():.3f} px"
        )
    if args.workflow:
        seconds = benchmark_workflow(args.pairs, args.workflow)
        print(f"\nwhole workflow, --cores 2, {len(pd.read_csv(args.pairs))} pairs: {seconds:.1f} s")
        print(workflow_results(args.workflow).to_string(index=False))
        if elastix:
            same = (table["method"] == "elastix") & ~table["pair"].str.endswith("(mirrored)")
            total = table.loc[same, "seconds"].sum()  # the pairs the workflow ran
            print(
                f"elastix on the same pairs: {total:.1f} s (sum of per-pair seconds); "
                f"{total + elastix_import:.1f} s with its start-up (importing itk)"
            )


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
