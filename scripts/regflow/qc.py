"""Quality control: per-stage similarity, landmark errors, status, figures and cohort summary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from .metrics import ncc, nmi, target_registration_error, tre_summary  # noqa: E402
from .points import unmapped_reasons  # noqa: E402
from .transform import Transform, apply_matrix, inside_image  # noqa: E402

STAGES = ("initial", "rigid", "final")
SUMMARY_COLUMNS = [
    "sample",
    "case",
    "image",
    "status",
    "ncc_initial",
    "ncc_rigid",
    "ncc_final",
    "nmi_initial",
    "nmi_rigid",
    "nmi_final",
    "rtre_initial",
    "rtre_rigid",
    "rtre_final",
    "tre_final_px",
    "tre_final_um",
    "landmarks",
    "landmarks_unmapped",
    "rotation_deg",
    "scale",
    "seconds",
    "evidence",
    "tissue_lost_fraction",
    "flags",
    "flag_reasons",
    "info",
    "reason",
]


@dataclass
class WorkingImage:
    """A preprocessed image as stored by the preprocess rule."""

    image: np.ndarray
    tissue_mask: np.ndarray
    full_to_working: np.ndarray


def _moving_coordinates(
    fixed: WorkingImage, moving: WorkingImage, transform: Transform
) -> np.ndarray:
    """``(row, col)`` in the moving working image of every fixed working pixel, ``(2, n)``.

    Works for any :class:`Transform` (identity, global, or with displacement) because it goes
    through full-resolution coordinates: working fixed → full fixed → full moving → working.
    """
    to_full, to_working = np.linalg.inv(fixed.full_to_working), moving.full_to_working
    if not (to_full[0, 1] or to_full[1, 0] or to_working[0, 1] or to_working[1, 0]):
        # axis-aligned scalings (as preprocess makes them): the working grid is a grid of
        # full-resolution positions, mapped separably by the transform
        height, width = fixed.image.shape
        y = to_full[1, 1] * np.arange(height) + to_full[1, 2]
        x = to_full[0, 0] * np.arange(width) + to_full[0, 2]
        coords = transform.moving_coordinates(y, x)
        coords[0] = to_working[1, 1] * coords[0] + to_working[1, 2]
        coords[1] = to_working[0, 0] * coords[1] + to_working[0, 2]
        return coords.reshape(2, -1)
    rows, cols = np.mgrid[: fixed.image.shape[0], : fixed.image.shape[1]]
    points = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    full = apply_matrix(to_full, points)
    moving_working = apply_matrix(moving.full_to_working, transform.fixed_to_moving(full))
    return np.stack([moving_working[:, 1], moving_working[:, 0]])


def _sample(values: np.ndarray, coords: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``values`` bilinearly at ``coords`` ``(2, n)`` (row, col), 0 outside, as ``shape``
    (OpenCV: positions resolved to 1/32 px, ample for similarity measures and figures)."""
    import cv2

    rows, cols = (c.reshape(shape).astype(np.float32) for c in coords)
    return cv2.remap(np.ascontiguousarray(values, np.float32), cols, rows, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)  # fmt: skip


def stage_transforms(transform: Transform) -> dict[str, Transform]:
    """The unregistered (identity), global-only and final transforms of one result."""
    fixed_shape, moving_shape = transform.fixed_shape, transform.moving_shape
    return {
        "initial": Transform.from_affine(np.eye(3), fixed_shape, moving_shape),
        "rigid": Transform.from_affine(transform.affine, fixed_shape, moving_shape),
        "final": transform,
    }


def warp_working(
    fixed: WorkingImage, moving: WorkingImage, transform: Transform
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The moving working image on the fixed working grid under ``transform``: its pixels,
    its tissue mask and its footprint (where it has pixels)."""
    coords = _moving_coordinates(fixed, moving, transform)
    image = _sample(moving.image, coords, fixed.image.shape)
    mask = _sample(moving.tissue_mask, coords, fixed.image.shape) > 0.5
    footprint = inside_image(coords[1], coords[0], moving.image.shape).reshape(fixed.image.shape)
    return image, mask, footprint


def sample_stages(
    fixed: WorkingImage, moving: WorkingImage, transforms: dict[str, Transform]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`warp_working` for every stage (sampled once, used for metrics and review)."""
    return {stage: warp_working(fixed, moving, t) for stage, t in transforms.items()}


def similarity_by_stage(
    fixed: WorkingImage,
    moving: WorkingImage,
    transforms: dict[str, Transform],
    sampled: dict | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """NCC and NMI on the tissue masks (fixed ∪ warped moving, within the overlap) per stage.

    ``sampled``: the stages already resampled (:func:`sample_stages`), else done here.

    Returns
    -------
    metrics : dict
        ``{stage: {"ncc": …, "nmi": …}}``
    warped : dict
        ``{stage: moving image on the fixed working grid}`` (for figures).
    """
    sampled = sampled or sample_stages(fixed, moving, transforms)
    metrics, warped = {}, {}
    for stage, (image, mask, footprint) in sampled.items():
        # Tissue of either image, where both images have pixels.
        region = (fixed.tissue_mask | mask) & footprint
        metrics[stage] = {
            "ncc": ncc(fixed.image, image, region),
            "nmi": nmi(fixed.image, image, region),
        }
        warped[stage] = image
    return metrics, warped


def landmark_errors(
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    warped_points: np.ndarray,
    transforms: dict[str, Transform],
    diagonal: float,
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """TRE summaries per stage; the final stage uses the workflow's own warped landmarks.

    Returns
    -------
    summaries : dict
        ``{stage: tre_summary}``
    mapped : dict
        ``{stage: moving landmarks in the fixed frame, (n, 2)}``
    """
    n = min(len(fixed_points), len(moving_points))
    fixed_points, moving_points = fixed_points[:n], moving_points[:n]
    mapped = {
        "initial": moving_points.copy(),
        "rigid": transforms["rigid"].moving_to_fixed(moving_points),
        "final": np.asarray(warped_points[:n], np.float64),
    }
    if transforms["final"].has_fine:  # the flow's (coarse) result, before the refinement
        mapped["flow"] = transforms["final"].without_fine().moving_to_fixed(moving_points)
    given = np.isfinite(fixed_points).all(axis=1) & np.isfinite(moving_points).all(axis=1)
    summaries = {}
    for stage, points in mapped.items():
        summary = tre_summary(target_registration_error(points, fixed_points), diagonal)
        # n_landmarks: the pairs (first min(n) rows); n_missing: a coordinate not given in
        # either file; n_unmapped: given, but not mapped (outside both images, or unreached)
        lost = given & ~np.isfinite(points).all(axis=1)
        summary |= {
            "n_landmarks": int(n),
            "n_missing": int((~given).sum()),
            "n_unmapped": int(lost.sum()),
        }
        summaries[stage] = summary
    summaries["final"]["unmapped_reasons"] = unmapped_reasons(
        np.where(given[:, None], moving_points, np.nan),
        mapped["final"],
        transforms["final"],
        "moving_to_fixed",
    )
    return summaries, mapped


def decide_status(
    flow_accepted: bool,
    ncc_final: float,
    min_ncc: float,
    flow_reason: str,
    refined: bool = False,
) -> tuple[str, str]:
    """``ok``, ``rigid_only`` (no non-rigid refinement kept: the flow rejected and nothing
    refined at full resolution) or ``failed`` (implausible final similarity)."""
    if not np.isfinite(ncc_final) or ncc_final < min_ncc:
        return "failed", (
            f"final NCC {ncc_final:.3f} on the tissue mask is below qc.min_ncc={min_ncc}: the "
            "images were probably not aligned; check channels, modalities and the QC figure"
        )
    if not (flow_accepted or refined):
        return "rigid_only", flow_reason
    return "ok", ""


def _save_figure(fig, path: str | os.PathLike) -> None:
    """Save a PNG atomically (temporary name, then rename) and release the figure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", pil_kwargs={"compress_level": 3})  # 3× faster than 6
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _cell(value) -> str:
    """A summary.tsv cell: empty for a missing value, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}" if np.isfinite(value) else ""
    return str(value)


def write_summary(table: list[dict], table_path: str | os.PathLike, figure_path) -> None:
    """Write summary.tsv (one row per registration, :func:`summary_table`) and summary.png,
    each atomically."""
    import csv

    table_path = Path(table_path)
    tmp = table_path.with_name(f".{table_path.name}.{os.getpid()}.tmp")
    columns = list(table[0]) if table else list(SUMMARY_COLUMNS)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([_cell(row.get(c)) for c in columns] for row in table)
        os.replace(tmp, table_path)
    finally:
        tmp.unlink(missing_ok=True)
    summary_figure(figure_path, table)


def _composite(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Magenta (fixed) / green (moving) overlay: white where both agree."""
    return np.clip(np.stack([fixed, moving, fixed], axis=-1), 0, 1)


def _checkerboard(fixed: np.ndarray, moving: np.ndarray, n_squares: int = 8) -> np.ndarray:
    size = max(1, max(fixed.shape) // n_squares)
    rows, cols = np.indices(fixed.shape)
    board = ((rows // size + cols // size) % 2).astype(bool)
    return np.where(board, fixed, moving)


def _display_factor(shape: tuple[int, ...], pixels: int = 480) -> int:
    """Block size that brings an image to about the pixels a panel shows (≥ ``pixels``)."""
    return max(1, max(shape[0], shape[1]) // pixels)


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (2-D or colour images): what a panel can show, drawn in a
    fraction of the time matplotlib takes to resample the full working image."""
    import cv2

    if factor == 1:
        return image
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    data = np.ascontiguousarray(image[:height, :width], np.float32)
    # OpenCV's area resampling by a whole factor: the block means, 10–70× numpy's strided mean
    return cv2.resize(data, (width // factor, height // factor), interpolation=cv2.INTER_AREA)


def _show(ax, image, title, cmap=None, **kwargs):
    """An image at panel resolution, placed in its own pixel coordinates (overlays drawn in
    working pixels land where they belong)."""
    factor = _display_factor(image.shape)
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    ax.imshow(_reduce(image, factor), cmap=cmap, interpolation="nearest",
              extent=(-0.5, width - 0.5, height - 0.5, -0.5), **kwargs)  # fmt: skip
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax, mask: np.ndarray) -> None:
    """The tissue mask's outline (at panel resolution) in working pixels."""
    factor = _display_factor(mask.shape)
    reduced = _reduce(mask.astype(np.float32), factor)
    centres = [(np.arange(n) + 0.5) * factor - 0.5 for n in reduced.shape]
    ax.contour(centres[1], centres[0], reduced, levels=[0.5], colors="#00bfff", linewidths=1)


def qc_figure(
    path: str,
    sample: str,
    fixed: WorkingImage,
    moving: WorkingImage,
    warped: dict[str, np.ndarray],
    transform: Transform,
    metrics: dict,
    landmarks: dict[str, np.ndarray] | None = None,
    fixed_landmarks: np.ndarray | None = None,
    annotations: list[np.ndarray] | None = None,
    cells: list[tuple[np.ndarray, np.ndarray, str]] | None = None,
    acceptance: np.ndarray | None = None,
) -> None:
    """Write the per-sample QC figure (≈1800 px wide PNG).

    Panels: fixed with tissue outline, moving, magenta/green overlays before, after the global
    transform and final, a final checkerboard, the deformation magnitude with arrows,
    landmarks with error vectors, and the metrics. ``annotations`` (outlines in fixed
    full-resolution pixels, e.g. the moving image's mapped GeoJSON) are drawn in yellow over
    the fixed image and the final overlay. With the full-resolution refinement, a third row:
    ``cells``, full-resolution crops (fixed, final warped, title) as overlays — nuclei on
    nuclei — and ``acceptance``, the refinement's tiles (1 accepted, 0 rejected, −1 no tissue).
    """
    rows = 3 if (cells or acceptance is not None) else 2
    fig = plt.figure(figsize=(20, 8.8 if rows == 2 else 13.2), dpi=90)
    grid = fig.add_gridspec(
        rows, 5, left=0.01, right=0.99, bottom=0.02, top=0.88 if rows == 2 else 0.92,
        wspace=0.06, hspace=0.22,
    )  # fmt: skip
    for index, (fixed_crop, warped_crop, title) in enumerate((cells or [])[:4]):
        ax = fig.add_subplot(grid[2, index])
        _show(ax, _composite(fixed_crop, warped_crop), title)
    if acceptance is not None and acceptance.size:
        from matplotlib.colors import ListedColormap

        ax = fig.add_subplot(grid[2, 4])
        ax.imshow(acceptance, cmap=ListedColormap(["#dddddd", "#cf222e", "#1a7f37"]),
                  vmin=-1, vmax=1, interpolation="nearest")  # fmt: skip
        accepted = int((acceptance == 1).sum())
        ax.set_title(f"refinement: {accepted} of {int((acceptance >= 0).sum())} tissue tiles "
                     "accepted\n(green; red rejected, grey no tissue)", fontsize=11)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
    axes = np.empty((2, 5), dtype=object)
    for row in range(2):
        for col in range(5 if row == 0 else 3):
            axes[row, col] = fig.add_subplot(grid[row, col])
    text_ax = fig.add_subplot(grid[1, 3:])
    status = metrics["status"]
    colour = {"ok": "#1a7f37", "rigid_only": "#9a6700", "failed": "#cf222e"}.get(status, "black")
    fig.suptitle(f"{sample} — status: {status}", fontsize=16, color=colour, fontweight="bold")
    sim = metrics["similarity"]

    _show(axes[0, 0], fixed.image, "fixed (registration channel)", "gray")
    _outline(axes[0, 0], fixed.tissue_mask)
    _show(axes[0, 1], moving.image, "moving (as scanned)", "gray")
    _outline(axes[0, 1], moving.tissue_mask)
    for ax, stage, label in zip(
        (axes[0, 2], axes[0, 3], axes[0, 4]),
        STAGES,
        ("before registration", "after global (rigid)", "after refinement (final)"),
        strict=True,
    ):
        _show(
            ax,
            _composite(fixed.image, warped[stage]),
            f"{label}\nNCC {sim[stage]['ncc']:.3f}  NMI {sim[stage]['nmi']:.3f}",
        )
    if annotations:
        shapes = [apply_matrix(fixed.full_to_working, shape) for shape in annotations]
        lines = [shape for shape in shapes if len(shape) > 1]
        points = np.concatenate([s for s in shapes if len(s) == 1] or [np.empty((0, 2))])
        for ax in (axes[0, 0], axes[0, 4]):
            ax.add_collection(LineCollection(lines, colors="#ffd400", linewidths=1.2))
            ax.plot(*points.T, "+", color="#ffd400", markersize=7, mew=1.5)
        axes[0, 0].set_title("fixed + mapped annotations (yellow)", fontsize=11)
    _show(
        axes[1, 0],
        _checkerboard(fixed.image, warped["final"]),
        "checkerboard fixed / final",
        "gray",
    )

    # Deformation: magnitude of the non-rigid part, in full-resolution pixels (the fine
    # component's when the full-resolution refinement added one: the finer detail).
    field = transform.fine if transform.has_fine else transform.displacement
    magnitude = np.hypot(*field)
    image = axes[1, 1].imshow(magnitude, cmap="viridis")
    colour_axis = axes[1, 1].inset_axes([0.03, 0.04, 0.4, 0.04])
    colourbar = fig.colorbar(image, cax=colour_axis, orientation="horizontal")
    colourbar.ax.tick_params(labelsize=8, colors="white")
    step = max(1, max(magnitude.shape) // 16)
    yy, xx = np.mgrid[0 : magnitude.shape[0] : step, 0 : magnitude.shape[1] : step]
    if transform.has_displacement:
        axes[1, 1].quiver(
            xx,
            yy,
            field[0][::step, ::step],
            field[1][::step, ::step],
            color="white",
            scale_units="xy",
            angles="xy",
            width=0.004,
        )
    kind = "fine component (refinement)" if transform.has_fine else "non-rigid displacement"
    axes[1, 1].set_title(f"{kind}, full-res px (max {magnitude.max():.1f})", fontsize=11)
    axes[1, 1].set_xticks([])
    axes[1, 1].set_yticks([])

    ax = axes[1, 2]
    _show(
        ax,
        fixed.image,
        "landmarks: fixed ○, moving ×\nlines = error before (red) / after (green)",
        "gray",
    )
    if landmarks is not None and fixed_landmarks is not None:
        to_working = fixed.full_to_working
        # The first min(n) rows pair up; a point missing on either side (not given, or not
        # mapped) draws no line — only what mapped is drawn.
        n = min(len(fixed_landmarks), *(len(points) for points in landmarks.values()))
        reference = apply_matrix(to_working, fixed_landmarks[:n])
        for stage, line_colour in (("initial", "#ff4040"), ("final", "#40ff40")):
            points = apply_matrix(to_working, landmarks[stage][:n])
            drawn = np.isfinite(points).all(axis=1) & np.isfinite(reference).all(axis=1)
            segments = np.stack([reference[drawn], points[drawn]], axis=1)
            ax.add_collection(LineCollection(segments, colors=line_colour, linewidths=1.2))
        final = apply_matrix(to_working, landmarks["final"][:n])
        ax.scatter(reference[:, 0], reference[:, 1], s=36, facecolors="none", edgecolors="#00bfff")
        ax.scatter(final[:, 0], final[:, 1], s=30, marker="x", color="#ffd700")
        height, width = fixed.image.shape  # points far off the image do not shrink it
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    else:
        ax.text(
            0.5,
            0.5,
            "no landmarks given",
            ha="center",
            va="center",
            color="white",
            transform=ax.transAxes,
        )

    text_ax.axis("off")
    lines = [f"status: {status}"]
    if metrics.get("reason"):
        lines.append(f"reason: {_wrap(metrics['reason'], 60)}")
    lines.append("")
    lines.append("stage      NCC     NMI    median rTRE")
    tre = metrics.get("landmarks") or {}
    for stage in STAGES:
        rtre = (tre.get(stage) or {}).get("rtre_median")
        rtre_text = f"{rtre:.5f}" if rtre is not None else "—"
        lines.append(f"{stage:<9} {sim[stage]['ncc']:6.3f}  {sim[stage]['nmi']:6.3f}   {rtre_text}")
    rigid = metrics["rigid"]
    lines += [
        "",
        f"rotation {rigid['rotation_deg']:.2f}°   scale {rigid['scale']:.4f}"
        + ("   mirrored" if rigid.get("mirrored") else ""),
        f"translation {rigid['translation_px'][0]:.1f}, {rigid['translation_px'][1]:.1f} px",
    ]
    if tre.get("final") and tre["final"].get("tre_median") is not None:
        final = tre["final"]
        lines.append(
            f"final TRE px: median {final['tre_median']:.2f}, max {final['tre_max']:.2f}\n"
            f"  ({final['n_landmarks']} landmarks, {final['n_unmapped']} unmapped"
            + (f", {final['n_missing']} without coordinates" if final.get("n_missing") else "")
            + ")"
        )
    for role, image in (metrics.get("images") or {}).items():
        size = image.get("pixel_size_um")
        lines.append(
            f"{role}: {image.get('format') or '?'}, "
            + (f"{size:.4g} µm/px" if size else "pixel size unknown")
        )
    seconds = metrics.get("seconds", {})
    lines.append(
        "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items() if v is not None)
    )
    text_ax.text(
        0.02,
        0.98,
        "\n".join(lines),
        va="top",
        ha="left",
        family="monospace",
        fontsize=12,
        transform=text_ax.transAxes,
    )
    _save_figure(fig, path)


def _wrap(text: str, width: int) -> str:
    words, lines, current = text.split(), [], ""
    for word in words:
        if len(current) + len(word) + 1 > width and current:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    lines.append(current)
    return "\n        ".join(lines)


def tissue_loss_review(metrics: dict, integrity: dict, max_tissue_loss: float) -> None:
    """Add a round's integrity report to its metrics (in place) and the ``tissue_loss`` flag
    when it lost more than ``max_tissue_loss`` of the reference's cells (or tissue)."""
    metrics["integrity"] = integrity
    fraction = integrity.get("tissue_lost_fraction") or 0.0
    if fraction > max_tissue_loss:
        review = metrics.setdefault("review", {})
        unit = "cells" if integrity.get("measured_on") == "cells" else "tissue windows"
        review.setdefault("flags", []).append({
            "flag": "tissue_loss",
            "reason": f"{100 * fraction:.1f} % of the reference's {unit} are lost in this "
                      f"round (> qc.max_tissue_loss={max_tissue_loss:g}): tissue detached or "
                      "damaged; its markers read negative there",
        })  # fmt: skip


def summary_row(metrics: dict) -> dict:
    """One row of summary.tsv from a sample's metrics.json."""
    sim = metrics.get("similarity") or {}
    tre = metrics.get("landmarks") or {}
    rigid = metrics.get("rigid") or {}
    case, _, image = str(metrics["sample"]).partition("/")
    row = {
        "sample": metrics["sample"],
        "case": case if image else "",
        "image": image,
        "status": metrics["status"],
        "reason": metrics.get("reason", ""),
    }
    for stage in STAGES:
        row[f"ncc_{stage}"] = (sim.get(stage) or {}).get("ncc")
        row[f"nmi_{stage}"] = (sim.get(stage) or {}).get("nmi")
        row[f"rtre_{stage}"] = (tre.get(stage) or {}).get("rtre_median")
    final = tre.get("final") or {}
    row["tre_final_px"] = final.get("tre_median")
    pixel_size = ((metrics.get("images") or {}).get("fixed") or {}).get("pixel_size_um")
    row["tre_final_um"] = (
        final["tre_median"] * pixel_size if pixel_size and final.get("tre_median") else None
    )
    row["tissue_lost_fraction"] = (metrics.get("integrity") or {}).get("tissue_lost_fraction")
    row["landmarks"] = final.get("n_landmarks")
    row["landmarks_unmapped"] = final.get("n_unmapped")
    row["rotation_deg"] = rigid.get("rotation_deg")
    row["scale"] = rigid.get("scale")
    row["seconds"] = sum(v for v in (metrics.get("seconds") or {}).values() if v)
    review = metrics.get("review") or {}
    row["evidence"] = ((review.get("measures") or {}).get("evidence") or {}).get("evidence")
    flags = list(review.get("flags") or [])
    if metrics["status"] == "failed":
        flags.insert(0, {"flag": "failed", "reason": metrics.get("reason", "")})
    row["flags"] = ";".join(f["flag"] for f in flags)
    row["flag_reasons"] = " | ".join(f"{f['flag']}: {f['reason']}" for f in flags)
    row["info"] = "; ".join(review.get("info") or [])
    return row


def _summary_rows(rows: list[dict]) -> list[dict]:
    """summary.tsv's rows, columns in order: ``case`` and ``image`` only for an images sheet
    (a pair sheet's summary keeps its columns: ``sample``, ``status``, …)."""
    images = any(row.get("image") for row in rows)
    columns = [c for c in SUMMARY_COLUMNS if images or c not in ("case", "image")]
    return [{c: row.get(c) for c in columns} for row in rows]


def summary_table(all_metrics: list[dict]) -> list[dict]:
    """The cohort table: one :func:`summary_row` per metrics.json, as summary.tsv has them."""
    return _summary_rows([summary_row(m) for m in all_metrics])


def _number(value) -> float:
    """A table value as a float (NaN when missing or not a number)."""
    try:
        return float(value) if value is not None and value != "" else np.nan
    except (TypeError, ValueError):
        return np.nan


def _severity(row: dict) -> float:
    """Sort key, worst first: failed, then by number of flags, then weakest evidence."""
    count = len([f for f in str(row.get("flags") or "").split(";") if f])
    evidence = _number(row.get("evidence"))
    evidence = np.inf if np.isnan(evidence) else evidence
    return (row.get("status") == "failed") * 1e6 + count * 1e3 - min(evidence, 999)


def summary_figure(path: str, table: list[dict], max_listed: int = 30) -> plt.Figure:
    """Cohort view of any size: distributions of the final similarity, landmark error and
    alignment evidence (every registration a dot, flagged ones red), and the flagged ones by
    name, worst first, with their reasons. Returns the (closed) figure."""
    n = len(table)
    red = np.array([bool(row.get("flags")) for row in table], bool)
    flagged = sorted((row for row in table if row.get("flags")), key=_severity, reverse=True)
    fig = plt.figure(figsize=(18, 11), dpi=90, layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.25])
    names = np.array([str(row.get("sample")) for row in table], object)
    panels = (
        ("ncc_final", "final NCC on the tissue (higher is better)", False),
        ("rtre_final", "final median rTRE (lower is better)", True),
        ("evidence", "alignment evidence (≥ 9: a real match)", True),
    )
    rng = np.random.default_rng(0)
    for column, (key, title, log_scale) in enumerate(panels):
        ax = fig.add_subplot(grid[0, column])
        values = np.array([_number(row.get(key)) for row in table], np.float64)
        ok = np.isfinite(values) & (values > 0 if log_scale else True)
        if not ok.any():
            ax.text(0.5, 0.5, "not measured in this cohort", ha="center",
                    transform=ax.transAxes)  # fmt: skip
            ax.set_title(title)
            ax.set_yticks([])
            continue
        jitter = rng.uniform(-0.3, 0.3, n)
        ax.scatter(values[ok & ~red], jitter[ok & ~red], s=18, color="#1a7f37", alpha=0.7,
                   label="no flag")  # fmt: skip
        ax.scatter(values[ok & red], jitter[ok & red], s=30, color="#cf222e", label="flagged")
        if log_scale:
            ax.set_xscale("log")
        if key == "evidence":
            ax.axvline(9, color="#888", linestyle="--", linewidth=1)
        if n <= 12:  # few enough to name every dot
            for value, y, name in zip(values[ok], jitter[ok], names[ok], strict=True):
                ax.annotate(str(name), (value, y), fontsize=8, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="upper right", fontsize=9)
    text_ax = fig.add_subplot(grid[1, :])
    text_ax.axis("off")
    lines = [f"{len(flagged)} of {n} flagged for review, worst first:" if len(flagged)
             else f"no registration of the {n} is flagged"]  # fmt: skip
    for row in flagged[:max_listed]:
        reasons = _wrap(str(row.get("flag_reasons")), 150).replace("\n        ", "\n    ")
        lines.append(f"{row.get('sample')} [{row.get('status')}]  {reasons}")
    if len(flagged) > max_listed:
        lines.append(f"… and {len(flagged) - max_listed} more: see summary.tsv (flags, "
                     "flag_reasons)")  # fmt: skip
    text_ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace",
                 fontsize=10, color="#cf222e" if len(flagged) else "#1a7f37",
                 transform=text_ax.transAxes)  # fmt: skip
    counts = {}
    for row in table:
        counts[row.get("status")] = counts.get(row.get("status"), 0) + 1
    summary = ", ".join(f"{counts[k]} {label}" for k, label in
                        (("ok", "refined"), ("rigid_only", "global only"), ("failed", "failed"))
                        if k in counts)  # fmt: skip
    fig.suptitle(f"regflow cohort: {n} registration(s) — {summary}; {len(flagged)} flagged",
                 fontsize=15)  # fmt: skip
    _save_figure(fig, path)
    return fig


FAILURE_PREFIX = "FAILED "


def failure_reason(log_text: str) -> str | None:
    """The one-line reason a stage logged when it failed (see ``runlog.stage_log``)."""
    for line in reversed(log_text.splitlines()):
        if FAILURE_PREFIX in line and "reason=" in line:
            stage = line.split("stage=", 1)[1].split(" ", 1)[0] if "stage=" in line else "?"
            return f"{stage}: {line.split('reason=', 1)[1].strip()}"
    return None


def cohort_table(results: dict[str, dict | None], failures: dict[str, str | None]) -> list[dict]:
    """summary.tsv for a cohort in which some samples failed.

    Parameters
    ----------
    results : dict
        ``{sample: metrics.json contents, or None when the sample has none}``
    failures : dict
        ``{sample: logged failure reason or None}`` for the samples without metrics.
    """

    rows = []
    for sample, metrics in results.items():
        if metrics is None:
            reason = (
                failures.get(sample) or "did not run: an upstream job failed or was interrupted"
            )
            metrics = {"sample": sample, "status": "failed", "reason": reason}
        rows.append(summary_row(metrics))
    return _summary_rows(rows)


def case_figure(
    path: str | os.PathLike,
    case: str,
    reference: tuple[str, np.ndarray],
    images: list[tuple[str, np.ndarray, dict | None]],
    serial: dict | None = None,
) -> None:
    """One case on one page: every registered image over the reference, and a strip of
    per-image median rTRE and final NCC; for serial sections (``serial``: the stack solve's
    report with its ``views``), orthogonal views through the volume before and after the
    alignment and a strip of each section's evidence against its neighbours and its drift.

    Parameters
    ----------
    reference : (name, view)
        The reference image as a 2-D signal-bright view in [0, 1].
    images : list of (name, view, metrics)
        Each registered image on the reference's grid (same shape as the reference view) and
        its metrics.json (None if it failed).
    """
    name, ref_view = reference
    n = len(images)
    columns = min(4, n)
    rows = -(-n // columns)
    extra = [3, 3] if serial else []
    fig = plt.figure(figsize=(4 * columns, 4 * rows + 3 + sum(extra)), dpi=90,
                     layout="constrained")  # fmt: skip
    grid = fig.add_gridspec(rows + 1 + len(extra), columns,
                            height_ratios=[4] * rows + [3] + extra)  # fmt: skip
    for index, (image, view, metrics) in enumerate(images):
        ax = fig.add_subplot(grid[index // columns, index % columns])
        status = (metrics or {}).get("status", "failed")
        rtre = ((metrics or {}).get("landmarks") or {}).get("final", {}) or {}
        text = f"rTRE {rtre['rtre_median']:.4f}" if rtre.get("rtre_median") is not None else ""
        lost = ((metrics or {}).get("integrity") or {}).get("tissue_lost_fraction")
        if lost is not None:  # a round: the share of the reference's cells it lost
            text += f"\nlost {100 * lost:.1f} % of the cells" + (
                " — tissue_loss" if any(f.get("flag") == "tissue_loss"
                                        for f in (metrics.get("review") or {}).get("flags", []))
                else "")  # fmt: skip
        if view is None:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{image}: failed", ha="center", transform=ax.transAxes)
            continue
        _show(ax, _composite(ref_view, view), f"{image} [{status}] {text}")
    strip = fig.add_subplot(grid[rows, :])
    labels = [image for image, _, _ in images]
    x = np.arange(n)
    rtre = [
        (((m or {}).get("landmarks") or {}).get("final") or {}).get("rtre_median")
        for _, _, m in images
    ]
    ncc_final = [
        (((m or {}).get("similarity") or {}).get("final") or {}).get("ncc") for _, _, m in images
    ]
    values = np.array([np.nan if v is None else v for v in rtre], float)
    strip.bar(x - 0.2, values, width=0.4, color="#4e79a7", label="median rTRE (final)")
    strip.set_ylabel("median rTRE")
    strip.set_xticks(x, labels, rotation=30 if n > 6 else 0)
    twin = strip.twinx()
    twin.plot(x, [np.nan if v is None else v for v in ncc_final], "D", color="#1a7f37",
              label="NCC (final)")  # fmt: skip
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("NCC on tissue")
    if not np.isfinite(values).any():
        strip.text(0.5, 0.5, "no landmarks in this case", ha="center", transform=strip.transAxes)
    strip.legend(loc="upper left", fontsize=9)
    twin.legend(loc="upper right", fontsize=9)
    if serial:
        _serial_rows(fig, grid, rows + 1, columns, serial)
    fig.suptitle(
        f"case {case}: {n} image(s) over the reference {name} (magenta reference, green image)",
        fontsize=13,
    )
    _save_figure(fig, path)


def _serial_rows(fig, grid, row: int, columns: int, serial: dict) -> None:
    """Orthogonal views (xz, yz) before and after the stack alignment, and per section its
    evidence against its neighbours and how far the stack solve moved it from the chain."""
    views, order = serial["views"], serial["order"]
    thickness = serial.get("thickness_um") or 1.0
    spacing = serial.get("working_pixel_um") or 1.0
    panels = [("xz_before", "xz before"), ("xz_after", "xz after"),
              ("yz_before", "yz before"), ("yz_after", "yz after")]  # fmt: skip
    span = max(1, columns // 2) if columns < 4 else 1
    for index, (key, title) in enumerate(panels[: max(2, columns)]):
        ax = fig.add_subplot(grid[row, (index * span) % columns : (index * span) % columns + span])
        data = np.asarray(views[key], float)
        low, high = np.nanpercentile(data, [1, 99]) if data.size else (0, 1)
        extent = (0, data.shape[1] * spacing, len(order) * thickness, 0)
        ax.imshow(data, cmap="gray", vmin=low, vmax=high, aspect="auto", extent=extent,
                  interpolation="nearest")  # fmt: skip
        ax.set_title(f"{title} (a line through the tissue, every section)", fontsize=9)
        ax.set_xlabel("µm" if serial.get("working_pixel_um") else "px")
        ax.set_ylabel("depth, µm" if serial.get("thickness_um") else "section")
    strip = fig.add_subplot(grid[row + 1, :])
    sections = serial["sections"]
    x = np.arange(len(order))
    evidence = [sections.get(s, {}).get("evidence", np.nan) for s in order]
    colours = ["#d62728" if s in serial.get("unrelated", []) else "#4e79a7" for s in order]
    strip.bar(x, np.nan_to_num(evidence, nan=0.0), color=colours, width=0.6,
              label="evidence against neighbours")  # fmt: skip
    strip.axhline(serial.get("min_evidence", 9.0), color="#d62728", lw=1, ls="--")
    for i, section in enumerate(order):  # torn: the share not registered (stack/*.geojson)
        torn = sections.get(section, {}).get("not_registered_fraction", 0.0)
        if torn > 0:
            strip.annotate(f"torn {100 * torn:.0f} %", (i, np.nan_to_num(evidence[i])),
                           ha="center", va="bottom", fontsize=7, color="#f28e2b")  # fmt: skip
    strip.set_ylabel("evidence")
    strip.set_xticks(x, order, rotation=60 if len(order) > 12 else 0, fontsize=8)
    twin = strip.twinx()
    for key, style, colour, label in (
        ("chain_vs_direct_um", "o-", "#e15759", "drift: chain vs direct registration"),
        ("stack_vs_direct_um", "s--", "#59a14f", "stack vs direct registration"),
        ("chain_vs_stack_um", ":", "#9c755f", "stack vs chain"),
    ):
        values = [sections.get(s, {}).get(key, np.nan) for s in order]
        twin.plot(x, values, style, color=colour, label=f"{label} (median µm)", ms=4)
    twin.set_ylabel("µm")
    strip.legend(loc="upper left", fontsize=9)
    twin.legend(loc="upper right", fontsize=9)
    title = (
        "serial sections: evidence against the neighbours (red bar: flagged "
        "unrelated_images; torn: the share of the tissue not registered); the chain and "
        "the stack against each section's direct registration onto the reference"
    )
    far = serial.get("far_links") or {}
    if far.get("kept") is False:  # the direct registrations of far sections failed
        title += (
            f"\nfar sections' direct registrations left out of the solve (their triangles "
            f"close {far.get('ratio', float('nan')):.1f}× worse than the neighbours'): "
            "there the drift against them measures their own error, not the stack's"
        )
    strip.set_title(title, fontsize=10)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1)
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def crop_centres(mask: np.ndarray, full_to_working: np.ndarray, n: int = 3) -> np.ndarray:
    """``n`` fixed full-resolution positions ``(n, 2)`` spread over the tissue: the tissue
    pixel nearest each of the centres of the tissue's thirds along its longer axis."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        rows, cols = np.nonzero(np.ones_like(mask))
    along = cols if np.ptp(cols) >= np.ptp(rows) else rows
    order = np.argsort(along, kind="stable")
    picks = [order[int((k + 0.5) * len(order) / n)] for k in range(n)]
    working = np.stack([cols[picks], rows[picks]], axis=1).astype(np.float64)
    return apply_matrix(np.linalg.inv(full_to_working), working)


def cell_views(
    fixed_path: str,
    moving_path: str,
    transform: Transform,
    channels: dict,
    centres: np.ndarray,
    side: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-resolution crops ``side`` px square around fixed ``centres``: the fixed image's
    registration channel and the moving one's through ``transform`` (read region by region,
    as the warp does), each scaled to [0, 1] by its own 1st–99.5th percentiles."""
    from .formats import RegionReader
    from .preprocess import registration_channel
    from .warp import warp_tile

    out = []
    with RegionReader(fixed_path) as fixed, RegionReader(moving_path) as moving:
        height, width = fixed.shape[1:]
        for x, y in centres:
            r0 = int(np.clip(round(y) - side // 2, 0, max(0, height - side)))
            c0 = int(np.clip(round(x) - side // 2, 0, max(0, width - side)))
            rows, cols = slice(r0, min(height, r0 + side)), slice(c0, min(width, c0 + side))
            pair = []
            for role, pixels in (
                ("fixed", fixed.read(rows, cols)),
                (
                    "moving",
                    warp_tile(moving, transform, rows, cols, np.zeros(moving.shape[0])),
                ),  # fmt: skip
            ):
                modality, channel = channels[role]
                reader = fixed if role == "fixed" else moving
                signal = registration_channel(pixels, modality, channel, reader.info.rgb)
                low, high = np.percentile(signal, [1, 99.5])
                pair.append(np.clip((signal - low) / max(high - low, 1e-6), 0, 1))
            out.append((pair[0], pair[1]))
    return out


def _fine_regularity(transform: Transform, both_tissue: np.ndarray, jump: float) -> dict | None:
    """:func:`regflow.review.field_regularity` of the fine component on its own grid, over
    the nodes where both images show tissue (None without a fine component)."""
    from .review import field_regularity

    if not transform.has_fine:
        return None
    to_fine = transform.fixed_full_to_fine
    where = _resize_mask(both_tissue, transform.fine.shape[1:])
    return field_regularity(transform.fine, (1 / to_fine[1, 1], 1 / to_fine[0, 0]), where, jump)


def field_on_tissue(transform: Transform, tissue: np.ndarray, max_jump: float) -> dict:
    """:func:`regflow.review.field_regularity` of ``transform``'s field where ``tissue`` (a
    mask on the fixed working grid, resized to the field's own grid) shows tissue."""
    from .review import field_regularity

    grid = transform.displacement.shape[1:]
    if tissue.shape != grid:  # the field's own (coarser) grid
        tissue = _resize_mask(tissue, grid)
    to_grid = transform.fixed_full_to_working
    spacing = (1 / to_grid[1, 1], 1 / to_grid[0, 0])
    return field_regularity(transform.displacement, spacing, tissue, max_jump)


def review_registration(
    fixed: WorkingImage,
    moving: WorkingImage,
    transform: Transform,
    similarity: dict,
    landmarks: dict | None = None,
    pixel_ratio: float | None = None,
    flow_accepted: bool = True,
    rotation_deg: float | None = None,
    thresholds: dict | None = None,
    sampled: dict | None = None,
    evidence: dict | None = None,
    field: dict | None = None,
) -> dict:
    """Everything :func:`regflow.review.review` needs, measured; returns ``{"flags",
    "info", "measures"}`` for metrics.json. ``pixel_ratio``: moving / fixed pixel size when
    both are known; ``sampled``: the stages of ``transform`` already resampled
    (:func:`sample_stages`), else done here; ``evidence``: the alignment evidence measured
    elsewhere (a serial section's, against its neighbours rather than the far reference);
    ``field``: the regularity of the field that judges it (a serial section's registration
    onto its neighbour, not the stack's transform, which carries its neighbours' too)."""
    from .review import affine_shape, global_evidence, review, tissue_overlap

    if sampled is None:
        stages = stage_transforms(transform)
        sampled = {s: warp_working(fixed, moving, stages[s]) for s in ("rigid", "final")}
    _, mask, footprint = sampled["final"]
    # Whether the images are related is judged at the global alignment: a non-rigid field
    # can fit unrelated textures (TV-L1 raised an IHC against a retina photograph above the
    # threshold).
    aligned, aligned_mask, aligned_footprint = sampled["rigid"]
    max_jump = (thresholds or {}).get("max_jump", 0.5)
    both_tissue = fixed.tissue_mask & mask & footprint
    measures = {
        "evidence": evidence
        or global_evidence(
            fixed.image, fixed.tissue_mask, aligned, aligned_mask, aligned_footprint
        ),  # fmt: skip
        "overlap": tissue_overlap(fixed.tissue_mask, mask, footprint),
        "field": field or field_on_tissue(transform, both_tissue, max_jump),
        "shape": affine_shape(transform.affine, pixel_ratio or 1.0),
        "field_fine": _fine_regularity(transform, both_tissue, max_jump),
        "ncc_initial": similarity["initial"]["ncc"],
        "ncc_final": similarity["final"]["ncc"],
        "pixel_sizes_known": pixel_ratio is not None,
        "flow_accepted": flow_accepted,
        "rotation_deg": rotation_deg,
    }
    if landmarks:
        measures["rtre_initial"] = (landmarks.get("initial") or {}).get("rtre_median")
        measures["rtre_final"] = (landmarks.get("final") or {}).get("rtre_median")
    reasons = ((landmarks or {}).get("final") or {}).get("unmapped_reasons")
    if reasons is not None:
        # every landmark inside either image maps (the field continues beyond its grid):
        # one lost there was not reached — a fold or tear of the field
        measures["unmapped_inside"] = reasons["not_reached"]
    flags, info = review(measures, thresholds)
    return {"flags": flags, "info": info, "measures": measures}
