"""Serial sections rebuilt as one stack: one transform per section (reference frame → section)
from the pairwise registrations of neighbours (distances 1 to ``link_distance``) and, for
sections farther than that, onto the reference.

Composing neighbour registrations along the stack (a *chain*) has two faults: an error of one
pair moves every section beyond it (a torn or swapped section derails the rest of the
stack), and content-to-content alignment follows structures that run obliquely through the
block, so the sections drift away from the block's geometry, more the farther they are.

:func:`solve_stack` works on the positions ``X_s(p)`` of a grid of reference points ``p`` in
every section ``s``:

1. **Start** from the chain: ``X_s = T(X_n)`` through the registration onto the neighbour
   ``n`` one step nearer the reference (``X_ref(p) = p``).
   The links onto the reference from beyond ``max_reach`` are checked first
   (:func:`far_links_check`): where their triangles with the neighbours' registrations close
   far worse than the neighbours' own (far sections that no longer look like the reference),
   they are left out.
2. **Reconcile** every link ``f → m`` (a registration of section ``m`` onto section ``f``,
   ``T``, mapping ``f``'s pixels to ``m``'s) by weighted least squares, node by node: each
   section's position is the weighted mean of what its links predict (``T(X_f)`` for the
   moving side; one Newton step of ``T⁻¹`` from the current position for the fixed side),
   swept outwards from the reference until it settles. A link counts by its evidence and by
   1/d² for the d sections it spans (a link onto the reference as one of ``max_reach``);
   weights are robust (Cauchy, scale ``robust_um``) after a first unweighted pass, per
   node: a link that disagrees with the others there (a torn area, a swapped section, a
   failed pair) is out-voted, so one bad section does not move its neighbours — they reach
   each other over the distance-2 links.
3. **Remove the drift**: each section's map is split into a rigid pose ``R_s`` and a
   displacement ``d_s(p)`` in the reference frame; per node, the part of ``d`` that grows
   linearly along the stack (``b(p) · (z_s − z_ref)``, fitted over all sections with their
   reliabilities as weights) is what following oblique structures adds up to; it is removed,
   shrunk towards zero by its own uncertainty (``b · max(0, 1 − se²/|b|²)``), so that where
   there is no drift the sections' own distortions are left as they are.

Each section's result is a :class:`~regflow.transform.Transform` (affine ``R_s``, the field
``d_s`` on the solve grid) in the reference frame, as every consumer expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .transform import Transform, _grid_matrix, _nodes, apply_matrix


@dataclass
class Link:
    """A pairwise registration: ``transform`` maps section ``fixed``'s pixels to ``moving``'s."""

    fixed: str
    moving: str
    transform: Transform
    weight: float = 1.0


@dataclass
class StackResult:
    transforms: dict[str, Transform]
    chain: dict[str, np.ndarray]  # the chain's positions (n, 2), for the drift report
    positions: dict[str, np.ndarray]  # the final positions (n, 2)
    link_weights: dict[tuple[str, str], float]  # mean robust weight over the tissue nodes
    section_weights: dict[str, float]
    drift_um: dict[str, float] = field(default_factory=dict)  # linear drift removed (median)
    nodes: np.ndarray | None = None
    # per section, how well its links agree with the solve (the median over its links of the
    # robust factor alone, 1 = consistent, evidence aside): a swapped section's links are
    # chance matches that disagree with one another; NaN without a robust solve (the chain)
    section_agreement: dict[str, float] = field(default_factory=dict)
    # whether the links onto the reference from beyond max_reach were kept (far_links_check)
    far_links: dict = field(default_factory=dict)


def _rigid_fit(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares rotation + translation mapping ``source`` to ``target`` (a
    reflection when the data are mirrored: a section mounted face down keeps its mirror)."""
    w = weights / weights.sum()
    ms, mt = w @ source, w @ target
    a, b = source - ms, target - mt
    covariance = (a * w[:, None]).T @ b
    u, _, vt = np.linalg.svd(covariance)
    rotation = (u @ vt).T
    matrix = np.eye(3)
    matrix[:2, :2] = rotation
    matrix[:2, 2] = mt - rotation @ ms
    return matrix


def _robust_rigid_fit(source, target, weights, scale: float) -> np.ndarray:
    """The rigid pose that most of the tissue agrees on (Tukey-weighted, iterated): a
    structure that drifts along the stack in part of the tissue does not pull the pose, so
    its drift stays in the displacement, where the drift correction finds it."""
    matrix = _rigid_fit(source, target, weights)
    for _ in range(10):
        residual = np.linalg.norm(apply_matrix(matrix, source) - target, axis=1)
        c = max(3.0 * float(np.median(residual[weights > 0])), scale)
        tukey = np.clip(1.0 - (residual / c) ** 2, 0.0, None) ** 2
        if (weights * tukey).sum() < 0.2 * weights.sum():
            break  # no majority: keep the last pose
        matrix = _rigid_fit(source, target, weights * tukey)
    return matrix


def _newton_inverse(transform: Transform, start: np.ndarray, target: np.ndarray) -> np.ndarray:
    """One Newton step of ``transform⁻¹(target)`` from ``start`` (finite-difference Jacobian)."""
    y = transform.fixed_to_moving(start)
    jx = transform.fixed_to_moving(start + [1.0, 0.0]) - y
    jy = transform.fixed_to_moving(start + [0.0, 1.0]) - y
    jacobian = np.stack([jx, jy], axis=2)  # (n, 2 outputs, 2 inputs)
    step = np.linalg.solve(jacobian, (target - y)[:, :, None])[:, :, 0]
    return start + step


# over-relaxation of the Gauss–Seidel sweeps: with 1.5, 12 sweeps reach what 30 plain ones do
# (benchmarks/stack.py's block: median 1.98 against 2.39 µm after 12 plain sweeps)
_OMEGA = 1.5


def solve_stack(
    order: list[str],
    reference: str,
    links: list[Link],
    reference_shape: tuple[int, int],
    moving_shapes: dict[str, tuple[int, int]],
    grid: int = 128,
    tissue: np.ndarray | None = None,
    positions_z: dict[str, float] | None = None,
    pixel_size_um: float | None = None,
    robust_um: float = 5.0,
    drift: str = "linear",
    sweeps: int = 12,
    max_reach: int = 2,
) -> StackResult:
    """One transform per section of ``order`` (the reference included, as the identity).

    Parameters
    ----------
    order : the sections along the block.
    links : every pairwise registration; each non-reference section needs the one onto its
        neighbour one step nearer the reference (the chain).
    reference_shape : (Y, X) of the reference at full resolution.
    moving_shapes : (Y, X) of every section at full resolution.
    grid : nodes along the reference's longer side.
    tissue : where the reference shows tissue, on any grid (resized to the solve grid): the
        rigid poses and the reliabilities are measured there.
    positions_z : each section's position along the block (default: its index in ``order``).
    pixel_size_um : the reference's pixel size (the robust scale is in µm); unknown: the
        scale is ``robust_um`` × 1/1000 of the reference's diagonal per µm … i.e. 0.2 %.
    drift : ``linear`` (remove the drift along the stack) or ``none``.
    max_reach : links are weighted 1/d² for the d sections they span, up to this d.
    """
    height, width = reference_shape
    factor = grid / max(height, width)
    grid_shape = (max(2, int(round(height * factor))), max(2, int(round(width * factor))))
    to_grid = _grid_matrix(reference_shape, grid_shape)
    nodes = _nodes(to_grid, grid_shape)
    if tissue is None:
        weight_nodes = np.ones(len(nodes))
    else:
        from .qc import _resize_mask

        weight_nodes = _resize_mask(np.asarray(tissue, bool), grid_shape).ravel().astype(float)
        if weight_nodes.sum() < 10:
            weight_nodes = np.ones(len(nodes))
    scale = robust_um / pixel_size_um if pixel_size_um else 0.002 * np.hypot(height, width)
    scale = max(scale, 0.5)
    index = {name: i for i, name in enumerate(order)}
    r = index[reference]
    z = {name: float((positions_z or {}).get(name, index[name])) for name in order}

    # 1. the chain, outwards from the reference; the start: through the link of highest
    # weight onto a section nearer the reference (the neighbour's, unless it is weaker)
    outward = sorted((s for s in order if s != reference), key=lambda s: abs(index[s] - r))
    chain = {reference: nodes.copy()}
    for section in outward:
        neighbour = [k for k in links if k.moving == section and k.fixed in chain
                     and abs(index[k.fixed] - index[section]) == 1]  # fmt: skip
        if not neighbour:
            raise ValueError(f"section {section!r} has no registration onto its neighbour")
        chain[section] = neighbour[0].transform.fixed_to_moving(chain[neighbour[0].fixed])
    # the links onto the reference from beyond max_reach, unless they fail their triangles
    far = [k for k in links if k.fixed == reference and abs(index[k.moving] - r) > max_reach]
    far_report = far_links_check(order, reference, links, chain, weight_nodes > 0, max_reach,
                                 min_closure=scale) if far else {}  # fmt: skip
    if far and not far_report["kept"]:
        links = [k for k in links if k not in far]
    start = {reference: nodes.copy()}
    for section in outward:
        inward = [k for k in links if k.moving == section and k.fixed in start]
        best = max(inward, key=lambda k: (k.weight, -abs(index[k.fixed] - index[section])))
        start[section] = best.transform.fixed_to_moving(start[best.fixed])
    positions = {s: p.copy() for s, p in (start if sweeps else chain).items()}

    # 2. reconcile all links, node by node (Gauss–Seidel sweeps outwards)
    touching = {s: [k for k in links if s in (k.fixed, k.moving)] for s in order}
    # a link's error grows with the sections it spans (structures move along z: 1.3, 2.3 and
    # 3.1 µm median at distances 1, 2, 3 on benchmarks/stack.py's blocks): inverse variance,
    # up to the distance where a link onto the reference is better (``max_reach``, the
    # links' distance: 2.8 µm from 4-12 sections away): a far section's link onto the
    # reference counts as one of ``max_reach``
    span = {(k.fixed, k.moving): abs(index[k.fixed] - index[k.moving]) for k in links}
    reach = {pair: 1.0 / min(max(d, 1), max_reach) ** 2 for pair, d in span.items()}
    weights_seen = {}
    for sweep in range(sweeps):
        robust = sweep >= 2
        for section in outward:
            total = np.zeros_like(nodes)
            norm = np.zeros(len(nodes))
            for link in touching[section]:
                if link.moving == section:
                    predicted = link.transform.fixed_to_moving(positions[link.fixed])
                else:
                    predicted = _newton_inverse(
                        link.transform, positions[section], positions[link.moving]
                    )
                weight = np.full(len(nodes), link.weight)
                if robust:
                    residual = np.linalg.norm(predicted - positions[section], axis=1)
                    weight = weight / (1.0 + (residual / scale) ** 2)
                weight[~np.isfinite(predicted).all(axis=1)] = 0.0
                weights_seen[(link.fixed, link.moving, section)] = weight  # evidence × robust
                weight = weight * reach[link.fixed, link.moving]
                predicted = np.nan_to_num(predicted)
                total += weight[:, None] * predicted
                norm += weight
            update = norm > 1e-9
            new = total[update] / norm[update, None]
            positions[section][update] += _OMEGA * (new - positions[section][update])

    link_weights = {(k.fixed, k.moving): 0.0 for k in far}  # left out, if they were
    for link in links:
        w = [weights_seen.get((link.fixed, link.moving, s)) for s in (link.fixed, link.moving)]
        w = [x for x in w if x is not None]
        mean = np.mean(w, axis=0) if w else np.zeros(len(nodes))  # its evidence × robust
        link_weights[(link.fixed, link.moving)] = float(
            np.sum(mean * weight_nodes) / weight_nodes.sum()
        )
    section_weights, section_agreement = {reference: 1.0}, {reference: 1.0}
    for section in outward:
        own = [v for (f, m), v in link_weights.items() if section in (f, m)]
        section_weights[section] = float(np.median(own)) if own else 0.0
        agreement = [
            float(np.sum(seen * weight_nodes) / weight_nodes.sum()) / link.weight
            for link in touching[section]
            if link.weight > 0
            and (seen := weights_seen.get((link.fixed, link.moving, section))) is not None
        ]
        section_agreement[section] = float(np.median(agreement)) if agreement else np.nan

    # 3. rigid poses and the drift along the stack
    poses, displacements = {}, {}
    for section in order:
        pose = _robust_rigid_fit(nodes, positions[section], weight_nodes, scale)
        poses[section] = pose
        displacements[section] = apply_matrix(np.linalg.inv(pose), positions[section]) - nodes
    drift_um = {s: 0.0 for s in order}
    if drift == "linear" and len(order) >= 4:
        sections = [s for s in order if s != reference]
        w = np.array([max(section_weights[s], 0.0) for s in sections])
        dz = np.array([z[s] - z[reference] for s in sections])
        values = np.stack([displacements[s] for s in sections])  # (k, n, 2)
        # (a quadratic term, the "banana", gained nothing on benchmarks/stack.py's block)
        corrections = _drift_fit(values, w, dz, degree=1)
        for s, correction in zip(sections, corrections, strict=True):
            displacements[s] = displacements[s] - correction
            moved = np.linalg.norm(correction, axis=1)
            drift_um[s] = float(np.median(moved[weight_nodes > 0])) * (pixel_size_um or 1.0)
            positions[s] = apply_matrix(poses[s], nodes + displacements[s])

    transforms = {}
    for section in order:
        field_ = displacements[section].T.reshape(2, *grid_shape).astype(np.float32)
        transforms[section] = Transform(
            poses[section], field_, to_grid, tuple(reference_shape),
            tuple(moving_shapes[section]),
        )  # fmt: skip
    transforms[reference] = Transform.from_affine(np.eye(3), reference_shape, reference_shape)
    return StackResult(transforms, chain, positions, link_weights, section_weights, drift_um,
                       nodes, section_agreement, far_report)  # fmt: skip


# far links are left out when their triangles close this many times worse than the
# neighbours' (see far_links_check): ~1.2 expected; 1.2–1.6 on benchmarks/stack.py's blocks,
# 2.1–2.3 on three where they still help (seed 6: median 1.96 µm with them, 3.32 without; a
# stroma changing over 16 sections: 2.15 against 2.33) or not (a 30-section block: 3.05
# against 2.57 µm); 6.2 where far sections no longer look like the reference (a stroma
# changing over 8 sections, far links erring 5–30 µm: 4.56 against 3.76 µm). Measured
# before far links were presmoothed (cases.far_presmooth_um: seeds 0–3 1.25–1.47, seed 6
# 1.65, stroma period 8 5.5). Only a gross failure is acted on.
FAR_CLOSURE_RATIO = 3.0


def far_links_check(
    order: list[str],
    reference: str,
    links: list[Link],
    chain: dict[str, np.ndarray],
    where: np.ndarray,
    max_reach: int,
    max_ratio: float | None = None,
    min_closure: float = 0.0,
) -> dict:
    """Do the links onto the reference from beyond ``max_reach`` sections (the *far* links)
    agree with the neighbours' registrations as well as those agree among themselves?

    Three registrations that close a triangle (``a → b``, ``b → c`` and ``a → c``) should map
    a point alike; how far they miss (the *closure*, median over the nodes ``where`` carried
    into ``a`` by the ``chain``) measures their errors without the truth, and without the
    drift that a solve's residuals carry. A neighbour triangle (``a``, ``b``, ``c``
    consecutive, outwards) closes within the errors of registrations over 1, 1 and 2
    sections; a far triangle (the reference, ``b``, and ``c`` beyond ``max_reach``) within
    those of two far links and one neighbour. The solve counts a far link as one over
    ``max_reach`` sections; if so, far triangles close about √(9/6) ≈ 1.2× worse than
    neighbour ones (``max_reach`` 2, errors ∝ span); on benchmarks/stack.py's blocks they
    close 1.2–2.3× worse. Where far sections no longer look like the reference (a stroma whose
    texture changes with depth: far links erring 5–30 µm) they close ~6× worse; more than
    ``max_ratio``× (default :data:`FAR_CLOSURE_RATIO`), and by more than ``min_closure`` px
    (the solve's robust scale: below it a miss is no gross failure, e.g. where neighbours
    close almost exactly), and the far links are not kept: the neighbours carry the stack.

    Returns the median closures (px) of both kinds, their ratio, the triangles counted and
    whether the far links are kept (also when there are too few triangles to tell).
    """
    index = {s: i for i, s in enumerate(order)}
    r = index[reference]
    by_pair = {(k.fixed, k.moving): k.transform for k in links}
    max_ratio = FAR_CLOSURE_RATIO if max_ratio is None else max_ratio

    def closure(first: Transform, second: Transform, third: Transform, points) -> float:
        miss = np.linalg.norm(
            second.fixed_to_moving(first.fixed_to_moving(points)) - third.fixed_to_moving(points),
            axis=1,
        )
        miss = miss[np.isfinite(miss)]
        return float(np.median(miss)) if miss.size else np.nan

    near, far = [], []
    for step in (1, -1):
        side = [order[r + step * k] for k in range(len(order)) if 0 <= r + step * k < len(order)]
        for a, b, c in zip(side, side[1:], side[2:], strict=False):
            if {(a, b), (b, c), (a, c)} <= by_pair.keys():
                near.append(closure(by_pair[a, b], by_pair[b, c], by_pair[a, c], chain[a][where]))
            if (
                abs(index[c] - r) > max_reach
                and {(reference, b), (b, c), (reference, c)} <= by_pair.keys()
            ):
                far.append(closure(by_pair[reference, b], by_pair[b, c], by_pair[reference, c],
                                   chain[reference][where]))  # fmt: skip
    near = [v for v in near if np.isfinite(v)]
    far = [v for v in far if np.isfinite(v)]
    report = {"neighbour_closure_px": float(np.median(near)) if near else float("nan"),
              "far_closure_px": float(np.median(far)) if far else float("nan"),
              "triangles": [len(near), len(far)], "ratio": float("nan"),
              "min_closure_px": float(min_closure), "kept": True}  # fmt: skip
    if len(near) >= 3 and len(far) >= 3 and report["neighbour_closure_px"] > 0:
        report["ratio"] = report["far_closure_px"] / report["neighbour_closure_px"]
        report["kept"] = bool(
            report["ratio"] <= max_ratio or report["far_closure_px"] <= min_closure
        )
    return report


def side_links(order: list[str], pairs, max_distance: int = 2) -> dict[str, list[list]]:
    """Per section, its pairs ``(fixed, moving)`` with sections up to ``max_distance`` away,
    grouped by side (the sections before it, those after it; an end has one group)."""
    index = {s: i for i, s in enumerate(order)}
    sides = {}
    for section in order:
        groups = {-1: [], 1: []}
        for pair in pairs:
            if section in pair:
                other = pair[1] if pair[0] == section else pair[0]
                step = index[other] - index[section]
                if 0 < abs(step) <= max_distance:
                    groups[int(np.sign(step))].append(pair)
        sides[section] = [g for g in groups.values() if g]
    return sides


def torn_areas(
    order: list[str],
    links: list[Link],
    positions: dict[str, np.ndarray],
    grid_shape: tuple[int, int],
    max_jump: float,
    tissues: dict[str, np.ndarray] | None = None,
    grow: int = 0,
    reference: str | None = None,
) -> dict[str, np.ndarray]:
    """Per section, the nodes of the solve grid (reference frame, ``grid_shape``) where its
    own tissue is torn: where the fields of its registrations with its neighbours (distances
    1 and 2) change by more than ``max_jump`` px per px (:func:`regflow.review.jump_mask`, on
    the fixed section's tissue, ``tissues`` on its working grid).

    A registration shows the tears of both its sections; a section's own tear shows on both
    of its sides, a neighbour's on one. So the area is where some registration on each side
    shows a jump (on one side the registration with the next section may not follow the tear
    while the one with the section after does). At an end (one side) it is where all of its
    registrations show it (each also shows its other section's tear), or, with a single one,
    where it does and the neighbour is not torn. There the section is not registered (the field
    smears the tear's step over the smoothing scale); ``positions`` (the solve's, reference
    nodes in each section's pixels) carry each link's grid into the reference frame. Each area
    is grown by ``grow`` nodes (the smoothed step's tail beyond the band the jumps mark).

    The ``reference``'s own tear is every section's: each section reaches the reference's
    frame through registrations onto it, which all smooth its step the same way (the solve
    cannot out-vote it), so its area is added to every section's."""
    from scipy import ndimage as ndi

    from .qc import _resize_mask
    from .review import jump_mask

    index = {s: i for i, s in enumerate(order)}
    torn = {}
    for link in links:
        if not 0 < abs(index[link.fixed] - index[link.moving]) <= 2:
            continue
        transform = link.transform
        to_grid = np.asarray(transform.fixed_full_to_working, np.float64)
        jumps = jump_mask(transform.displacement, (1 / to_grid[1, 1], 1 / to_grid[0, 0]), max_jump)
        if tissues is not None and link.fixed in tissues:
            jumps &= _resize_mask(np.asarray(tissues[link.fixed], bool), jumps.shape)
        xy = apply_matrix(to_grid, positions[link.fixed])
        ok = np.isfinite(xy).all(axis=1)
        col = np.rint(np.nan_to_num(xy[:, 0], nan=-1)).astype(int)
        row = np.rint(np.nan_to_num(xy[:, 1], nan=-1)).astype(int)
        ok &= (col >= 0) & (col < jumps.shape[1]) & (row >= 0) & (row < jumps.shape[0])
        mask = np.zeros(len(xy), bool)
        mask[ok] = jumps[row[ok], col[ok]]
        torn[link.fixed, link.moving] = mask
    sides = side_links(order, list(torn))
    nothing = np.zeros(int(np.prod(grid_shape)), bool)
    areas = {}
    for section in sorted(order, key=lambda s: -len(sides[s])):  # the stack's ends last
        groups = sides[section]
        if len(groups) == 2:
            either = [np.logical_or.reduce([torn[p] for p in group]) for group in groups]
            area = either[0] & either[1]
        elif groups and len(groups[0]) >= 2:
            area = np.logical_and.reduce([torn[p] for p in groups[0]])
        elif groups:
            ((pair,),) = groups
            neighbour = pair[0] if pair[1] == section else pair[1]
            area = torn[pair] & ~areas.get(neighbour, nothing.reshape(grid_shape)).ravel()
        else:
            area = nothing
        areas[section] = area.reshape(grid_shape)
    if grow > 0:
        disk = np.hypot(*np.mgrid[-grow : grow + 1, -grow : grow + 1]) <= grow
        areas = {s: ndi.binary_dilation(a, disk) if a.any() else a for s, a in areas.items()}
    if reference is not None and areas[reference].any():
        areas = {s: a | areas[reference] for s, a in areas.items()}
    return {s: areas[s] for s in order}


def _drift_fit(values: np.ndarray, w: np.ndarray, dz: np.ndarray, degree: int) -> np.ndarray:
    """Per node, the part of the displacements ``values`` (k, n, 2) that is a polynomial of
    degree ``degree`` ≥ 1 in the distance from the reference ``dz`` (without its constant),
    fitted with weights ``w`` over the sections and the reference (``d = 0`` at ``dz = 0``),
    each coefficient shrunk by its own uncertainty: ``c · max(0, 1 − 2 se²/|c|²)``."""
    w_all, dz_all = np.append(w, 1.0), np.append(dz, 0.0)
    v_all = np.concatenate([values, np.zeros((1, *values.shape[1:]))])
    design = np.stack([dz_all**j for j in range(degree + 1)], axis=1)  # (k+1, p)
    normal = design.T @ (w_all[:, None] * design)
    if np.linalg.matrix_rank(normal) < degree + 1:
        return np.zeros_like(values)
    inverse = np.linalg.inv(normal)
    coef = np.tensordot(inverse @ (design.T * w_all), v_all, axes=1)  # (p, n, 2)
    residual = v_all - np.tensordot(design, coef, axes=1)
    dof = max(len(w_all) - degree - 1, 1)
    variance = np.tensordot(w_all, (residual**2).sum(axis=2), axes=1) / (2 * dof)  # (n,)
    correction = np.zeros_like(values)
    for j in range(1, degree + 1):
        se2 = variance * inverse[j, j]
        size2 = (coef[j] ** 2).sum(axis=1)
        shrink = np.clip(1.0 - 2.0 * se2 / np.maximum(size2, 1e-12), 0.0, 1.0)
        correction += (dz[:, None, None] ** j) * (coef[j] * shrink[:, None])[None]
    return correction


def chain_only(
    order: list[str], reference: str, links: list[Link], reference_shape, moving_shapes,
    grid: int = 128,
) -> StackResult:  # fmt: skip
    """The plain chain (composition of the neighbour registrations), for comparison."""
    return solve_stack(order, reference, links, reference_shape, moving_shapes, grid,
                       sweeps=0, drift="none")  # fmt: skip
