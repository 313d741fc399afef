"""Review flags: evidence that a registration went wrong, each with a reason a person reads.

A flag is raised only by a measurement that points at a problem; facts that are normal for
a good registration (the refinement was not needed, a large rotation, a mirrored slide) are
reported as information, never as flags, so that a reviewer of hundreds of slides can trust
the flags that remain.

The measurements:

- **alignment evidence** — structure (local NCC of both images, contrast normalised over a
  window, so stains and fluorophores compare; at a middle scale, which the non-rigid
  refinement cannot fit to unrelated textures) at the found alignment, over its chance
  level: the RMS of the same score with the images displaced by a tenth of their size in
  eight directions. Well-registered pairs of the example and BIRL data score 12.7–57 (real
  cross-stain sections 12.7–14.3); unrelated tissue or another sample's image 5.0–6.5,
  however well the optimiser fitted them. Global NCC cannot tell these apart (a real H&E →
  IHC pair scores 0.17, an unrelated pair 0.35).
- similarity not improved over the unregistered state (unless it was already aligned);
- landmark error high, or worse than before registration;
- a displacement field that folds (negative Jacobian determinant) or jumps;
- landmarks inside the overlap that could not be mapped;
- tissue overlap far smaller than the smaller tissue (wrong pairing, cut-off scan);
- a scale or shear no section can undergo.
"""

from __future__ import annotations

import numpy as np

from .imageops import local_normalise
from .metrics import ncc
from .rigid import UNKNOWN_PIXEL_SIZE_FACTOR

DEFAULTS = {
    "min_evidence": 9.0,
    "max_rtre": 0.02,
    "min_overlap": 0.5,
    "max_scale_change": 0.25,
    "max_shear": 1.3,
    "max_folding": 0.001,  # also the share of tissue allowed to jump
    "max_jump": 0.5,
}


def alignment_evidence(
    fixed: np.ndarray, warped: np.ndarray, region: np.ndarray, sigma: float
) -> dict[str, float]:
    """Local NCC at the alignment and its chance level (see the module docstring).

    Parameters
    ----------
    fixed, warped : ndarray, shape (h, w)
        The fixed image and the moving image resampled onto it (working resolution).
    region : ndarray of bool
        Where both images have pixels and either shows tissue.
    sigma : float
        Window (px) of the local contrast normalisation.
    """
    a, b = local_normalise(fixed, sigma), local_normalise(warped, sigma)
    aligned = ncc(a, b, region)
    height, width = fixed.shape
    step = max(2, int(round(0.1 * max(height, width))))
    chance = []
    for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step),
                   (step, step), (-step, -step), (step, -step), (-step, step)):  # fmt: skip
        ys = slice(max(dy, 0), height + min(dy, 0))
        yw = slice(max(-dy, 0), height - max(dy, 0))
        xs = slice(max(dx, 0), width + min(dx, 0))
        xw = slice(max(-dx, 0), width - max(dx, 0))
        mask = region[ys, xs] & region[yw, xw]
        if mask.sum() > 100:
            chance.append(ncc(a[ys, xs], b[yw, xw], mask))
    noise = float(np.sqrt(np.mean(np.square(chance)))) if chance else float("nan")
    evidence = aligned / max(noise, 0.01) if np.isfinite(noise) else float("nan")
    return {"local_ncc": float(aligned), "chance": noise, "evidence": float(evidence)}


def global_evidence(
    fixed: np.ndarray,
    fixed_mask: np.ndarray,
    aligned: np.ndarray,
    aligned_mask: np.ndarray,
    footprint: np.ndarray,
) -> dict[str, float]:
    """:func:`alignment_evidence` of a registration at its global alignment, as the review
    judges it: the moving working image resampled by the global transform (``aligned``, its
    tissue mask and footprint on the fixed grid). Structure at a middle scale: smoothed over
    0.4 % of the image, normalised over 3.2 % (finer, chance matches of texture count;
    coarser, little is left)."""
    from .imageops import gaussian

    size = max(fixed.shape)
    region = (fixed_mask | aligned_mask) & footprint
    smooth = (gaussian(im, max(0.5, 0.004 * size)) for im in (fixed, aligned))
    return alignment_evidence(*smooth, region, max(1.0, 0.032 * size))


def evidence_weight(evidence: float | None, min_evidence: float) -> float:
    """How much a registration counts in a stack solve from its evidence: 1 from
    ``min_evidence`` up, falling linearly to 0.01 at 60 % of it (unrelated images score
    5–6.5 against a threshold of 9); 1 when unknown."""
    if evidence is None or not np.isfinite(evidence):
        return 1.0
    return float(np.clip((evidence - 0.6 * min_evidence) / (0.4 * min_evidence), 0.01, 1.0))


def field_regularity(
    displacement: np.ndarray,
    grid_spacing: tuple[float, float],
    where: np.ndarray | None = None,
    jump: float = DEFAULTS["max_jump"],
) -> dict:
    """Folding and jumps of a displacement field ``(2, h, w)`` (full-resolution pixels) on a
    grid of ``grid_spacing`` full-resolution pixels ``(dy, dx)`` per node, over the nodes
    ``where`` (both images show tissue: elsewhere the field carries no information that
    anyone will use, and a blank area may hold arbitrary vectors).

    Returns the fraction of those nodes where ``det(I + ∇u) ≤ 0`` (the mapping folds over
    itself), the largest displacement gradient, and the fraction of nodes whose gradient
    exceeds ``jump`` px per px (neighbouring tissue torn apart).
    """
    if not np.any(displacement) or (where is not None and not where.any()):
        return {"folding_fraction": 0.0, "max_gradient": 0.0, "jump_fraction": 0.0}
    determinant, gradient = _field_derivatives(displacement, grid_spacing)
    if where is not None:
        determinant, gradient = determinant[where], gradient[where]
    return {
        "folding_fraction": float((determinant <= 0).mean()),
        "max_gradient": float(gradient.max()),
        "jump_fraction": float((gradient > jump).mean()),
    }


def _field_derivatives(displacement: np.ndarray, grid_spacing: tuple[float, float]):
    """``det(I + ∇u)`` and the gradient's norm of a field ``(2, h, w)`` on its grid."""
    dy, dx = grid_spacing
    dux_dy, dux_dx = np.gradient(displacement[0].astype(np.float64), dy, dx)
    duy_dy, duy_dx = np.gradient(displacement[1].astype(np.float64), dy, dx)
    determinant = (1 + dux_dx) * (1 + duy_dy) - dux_dy * duy_dx
    return determinant, np.sqrt(dux_dx**2 + dux_dy**2 + duy_dx**2 + duy_dy**2)


def jump_mask(
    displacement: np.ndarray, grid_spacing: tuple[float, float], jump: float, low: float = 0.5
) -> np.ndarray:
    """The nodes of a field ``(2, h, w)`` where tissue is torn apart: where it changes by more
    than ``jump`` px per px (:func:`field_regularity`'s ``jump_fraction`` counts those) and,
    connected to them, by more than ``low × jump`` (hysteresis: a smoothed step's gradient
    is above half its peak over its full width at half maximum, the band where the smoothed
    field misses the step by more than a quarter of it)."""
    from skimage.filters import apply_hysteresis_threshold

    gradient = _field_derivatives(displacement, grid_spacing)[1]
    return apply_hysteresis_threshold(gradient, low * jump, jump)


def affine_shape(affine: np.ndarray, pixel_ratio: float = 1.0) -> dict[str, float | bool]:
    """Scale (√|det|), shear (ratio of the singular values) and mirroring of the global part.

    ``pixel_ratio`` (moving / fixed pixel size) turns the pixel scale into the physical one
    (a 0.65 µm scan against a 0.5 µm one is 0.77 in pixels, 1.0 in tissue).
    """
    linear = np.asarray(affine, np.float64)[:2, :2]
    singular = np.linalg.svd(linear, compute_uv=False)
    return {
        "scale": float(np.sqrt(abs(np.linalg.det(linear))) * pixel_ratio),
        "shear": float(singular[0] / max(singular[1], 1e-12)),
        "mirrored": bool(np.linalg.det(linear) < 0),
    }


def tissue_overlap(fixed_mask: np.ndarray, warped_mask: np.ndarray, footprint: np.ndarray):
    """Overlap of the two tissues over the smaller one, where both images have pixels."""
    a, b = fixed_mask & footprint, warped_mask & footprint
    smaller = min(int(a.sum()), int(b.sum()))
    return float((a & b).sum() / smaller) if smaller else float("nan")


def review(measures: dict, thresholds: dict | None = None) -> tuple[list[dict], list[str]]:
    """Flags (``{"flag", "reason"}``) and information lines from a registration's measures.

    ``measures`` keys (any may be missing or None): ``evidence`` (dict of
    :func:`alignment_evidence`), ``ncc_initial``, ``ncc_final``, ``rtre_initial``,
    ``rtre_final``, ``unmapped_inside``, ``field`` (:func:`field_regularity`), ``overlap``,
    ``shape`` (:func:`affine_shape`), ``pixel_sizes_known``, ``flow_accepted``,
    ``rotation_deg``.
    """
    limits = DEFAULTS | (thresholds or {})
    flags, info = [], []

    def flag(name: str, reason: str) -> None:
        flags.append({"flag": name, "reason": reason})

    evidence = (measures.get("evidence") or {}).get("evidence")
    # a serial section: how well its registrations with its neighbours agree (stack solve)
    agreement = (measures.get("evidence") or {}).get("agreement")
    min_agreement = (measures.get("evidence") or {}).get("min_agreement")
    if evidence is not None and np.isfinite(evidence) and evidence < limits["min_evidence"]:
        flag("unrelated_images", f"the images match hardly better at the found alignment than "
             f"at random offsets (evidence {evidence:.1f} < {limits['min_evidence']:g}): they "
             "may show different tissue or another sample's slide")  # fmt: skip
    elif agreement is not None and min_agreement is not None and agreement < min_agreement:
        flag("unrelated_images", f"its registrations with its neighbouring sections disagree "
             f"with one another (agreement {agreement:.3f} < {min_agreement:g}): chance "
             "matches; it may be another block's section")  # fmt: skip
    ncc_initial, ncc_final = measures.get("ncc_initial"), measures.get("ncc_final")
    if ncc_initial is not None and ncc_final is not None and ncc_initial < 0.9:
        if ncc_final <= ncc_initial + 0.01:
            flag("similarity_not_improved", f"registration did not raise the similarity "
                 f"(NCC {ncc_initial:.3f} → {ncc_final:.3f})")  # fmt: skip
    rtre_initial, rtre_final = measures.get("rtre_initial"), measures.get("rtre_final")
    if rtre_final is not None and np.isfinite(rtre_final):
        if rtre_final > limits["max_rtre"]:
            flag("landmark_error", f"median landmark error is {rtre_final:.4f} of the image "
                 f"diagonal (> {limits['max_rtre']:g})")  # fmt: skip
        elif rtre_initial is not None and rtre_final > rtre_initial and rtre_initial > 0.002:
            flag("landmarks_worse", f"landmarks are farther apart after registration "
                 f"(rTRE {rtre_initial:.4f} → {rtre_final:.4f})")  # fmt: skip
    unmapped = measures.get("unmapped_inside")
    if unmapped:
        flag("unmapped_points", f"{unmapped} landmark(s) inside the overlap could not be mapped")
    # the flow's field and the full-resolution refinement's fine component, each on its grid
    folds, jumps = [], []
    for key, name in (("field", "the deformation"), ("field_fine", "the fine component")):
        field = measures.get(key) or {}
        if field.get("folding_fraction", 0.0) > limits["max_folding"]:
            folds.append(f"{name} folds over itself on {100 * field['folding_fraction']:.2f} % "
                         "of the image (negative Jacobian)")  # fmt: skip
        if field.get("jump_fraction", 0.0) > limits["max_folding"]:
            jumps.append(f"{name} changes by more than {limits['max_jump']:g} px per px on "
                         f"{100 * field['jump_fraction']:.2f} % of the tissue (up to "
                         f"{field['max_gradient']:.2f}): tissue torn apart or wrong local "
                         "matches")  # fmt: skip
    if folds:
        flag("field_folds", "; ".join(folds))
    if jumps:
        flag("field_jumps", "; ".join(jumps))
    overlap = measures.get("overlap")
    if overlap is not None and np.isfinite(overlap) and overlap < limits["min_overlap"]:
        flag("small_overlap", f"only {100 * overlap:.0f} % of the smaller tissue overlaps the "
             "other: a wrong pairing or a cut-off scan")  # fmt: skip
    shape = measures.get("shape") or {}
    if shape:
        # without pixel sizes a 20× scan may meet a 40× one: only beyond the global search's
        # own range (× / ÷ 3)
        scale_limit = (limits["max_scale_change"] if measures.get("pixel_sizes_known")
                       else UNKNOWN_PIXEL_SIZE_FACTOR - 1)  # fmt: skip
        if abs(np.log(shape["scale"])) > np.log(1 + scale_limit):
            flag("implausible_scale", f"the tissue is scaled by {shape['scale']:.3f}: no "
                 "section shrinks or grows so much (check the pixel sizes)")  # fmt: skip
        if shape["shear"] > limits["max_shear"]:
            flag("implausible_shear", f"the global transform stretches one direction "
                 f"{shape['shear']:.2f}× more than the other")  # fmt: skip
        if shape.get("mirrored"):
            info.append("mirrored (the slide was mounted face down)")
    if measures.get("flow_accepted") is False:
        info.append("global transform only (the refinement did not improve the match)")
    rotation = measures.get("rotation_deg")
    if rotation is not None and abs(rotation) > 30:
        info.append(f"rotated by {rotation:.0f}°")
    return flags, info
