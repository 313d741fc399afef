"""Rule stack: one transform per serial section from the registrations of its neighbours at
distances 1 and 2 (regflow.stack); the sections' similarity to their neighbours, the drift
removed and orthogonal views for the case QC (stack.json, stack/views.npz)."""

import time
from pathlib import Path

import numpy as np
from regflow.annotations import mask_features, write_features
from regflow.flow import serial_smoothing
from regflow.imageops import gaussian
from regflow.metrics import ncc
from regflow.qc import WorkingImage, _resize_mask, field_on_tissue, warp_working
from regflow.review import alignment_evidence, evidence_weight
from regflow.runlog import provenance, read_json, stage_log, write_json
from regflow.stack import Link, side_links, solve_stack, torn_areas
from regflow.transform import Transform

case = snakemake.wildcards.case
settings = snakemake.params.section
order = [str(s) for s in snakemake.params.order]
reference = str(snakemake.params.reference)
TEAR_UM = 30.0  # the smallest tear the review flags (field_jumps)


def working(path):
    with np.load(path) as data:
        return WorkingImage(data["image"], data["tissue_mask"], data["full_to_working"])


with stage_log(snakemake.log[0], "stack", case) as log:
    start = time.perf_counter()
    min_evidence = settings.get("min_evidence", 9.0)
    link_distance = max(int(settings.get("link_distance", 2)), 1)
    links, link_evidence, nonrigid = [], {}, set()
    for (fixed, moving), path, info in zip(snakemake.params.links, snakemake.input.transforms,
                                           snakemake.input.infos, strict=True):  # fmt: skip
        # each registration counts by its evidence: a swapped section's hardly at all
        flow_info = read_json(info)
        evidence = flow_info.get("evidence")
        link = Link(str(fixed), str(moving), Transform.load(path),
                    evidence_weight(evidence, min_evidence))  # fmt: skip
        links.append(link)
        for section in (link.fixed, link.moving):
            if evidence is not None and np.isfinite(evidence):
                link_evidence.setdefault(section, []).append(float(evidence))
        # the solve gives a section a non-rigid field through a link that counts and whose
        # flow was kept (the QC status reads this, not its own one registration)
        if flow_info.get("accepted") and link.weight > 0:
            nonrigid.update((link.fixed, link.moving))
    with np.load(snakemake.input.reference) as data:
        ref = WorkingImage(data["image"], data["tissue_mask"], data["full_to_working"])
        reference_shape = tuple(int(v) for v in data["full_shape"])
    pixel_size = read_json(snakemake.input.anchor_info)["fixed"].get("pixel_size_um")
    shapes = {reference: reference_shape}
    shapes |= {link.moving: link.transform.moving_shape for link in links}
    shapes |= {link.fixed: link.transform.fixed_shape for link in links if link.fixed != reference}
    solve = settings.get("solve", "stack")
    images = {}
    for path in snakemake.input.working:
        images[Path(path).parent.parent.name] = working(path)
    result = solve_stack(
        order, reference, links, reference_shape, shapes,
        grid=settings.get("grid", 128), tissue=ref.tissue_mask,
        positions_z={k: float(v) for k, v in snakemake.params.positions.items()},
        pixel_size_um=pixel_size, robust_um=settings.get("robust_um", 5.0),
        drift=settings.get("drift", "linear") if solve == "stack" else "none",
        sweeps=12 if solve == "stack" else 0,
        max_reach=link_distance,
    )  # fmt: skip
    far = result.far_links
    if far and not far["kept"]:
        log.warning("the registrations onto the reference from beyond %d sections are left "
                    "out: their triangles close %.1f× worse than the neighbours' (%.2f against "
                    "%.2f px; far sections no longer look like the reference)",
                    link_distance, far["ratio"],
                    far["far_closure_px"], far["neighbour_closure_px"])  # fmt: skip
    elif far:
        log.info("far links kept: triangles close %.2f× the neighbours' (%s)", far["ratio"],
                 far["triangles"])  # fmt: skip
    folder = Path(snakemake.output.transforms)
    folder.mkdir(parents=True, exist_ok=True)
    solved = next(t for s, t in result.transforms.items() if s != reference)  # the solve grid
    solve_grid = solved.displacement.shape[1:]
    reference_tissue = _resize_mask(np.asarray(ref.tissue_mask, bool), solve_grid)
    on_tissue = reference_tissue.ravel() if reference_tissue.any() else slice(None)
    direct_positions = {
        k.moving: k.transform.fixed_to_moving(result.nodes) for k in links if k.fixed == reference
    }
    for section in order:
        if section != reference:
            result.transforms[section].save(folder / f"{section}.npz")

    # each section on the reference's working grid: by its rigid pose (the evidence, as the
    # review judges it, where a field cannot fit unrelated texture) and by its whole transform
    size = max(ref.image.shape)
    sigma = max(1.0, 0.032 * size)
    posed, final = {reference: (ref.image, ref.tissue_mask, np.ones_like(ref.tissue_mask))}, {}
    final[reference] = posed[reference]
    for section in order:
        if section == reference:
            continue
        transform = result.transforms[section]
        rigid = Transform.from_affine(transform.affine, transform.fixed_shape,
                                      transform.moving_shape)  # fmt: skip
        posed[section] = warp_working(ref, images[section], rigid)
        final[section] = warp_working(ref, images[section], transform)
    smooth = {s: gaussian(v[0], max(0.5, 0.004 * size)) for s, v in posed.items()}
    sections = {}
    index = {s: i for i, s in enumerate(order)}
    for section in order:
        evidences, similarities = [], []
        for other in order:
            distance = abs(index[other] - index[section])
            if distance not in (1, 2):
                continue
            a, b = posed[section], posed[other]
            region = (a[1] | b[1]) & a[2] & b[2]
            if region.sum() > 100:
                evidences.append(alignment_evidence(smooth[section], smooth[other], region,
                                                    sigma)["evidence"])  # fmt: skip
            if distance == 1:
                fa, fb = final[section], final[other]
                both = (fa[1] | fb[1]) & fa[2] & fb[2]
                similarities.append(ncc(fa[0], fb[0], both))
        chain_moved = np.linalg.norm(result.positions[section] - result.chain[section], axis=1)
        # the drift: the chain (composed along the stack) and the stack against this
        # section's direct registration onto the reference (a link of 1–2, or the far link)
        direct = direct_positions.get(section)
        drift = {
            f"{name}_vs_direct_um": (
                float(np.median(np.linalg.norm(positions - direct, axis=1)[on_tissue]))
                * (pixel_size or 1.0)
                if direct is not None
                else float("nan")
            )
            for name, positions in (("chain", result.chain[section]),
                                    ("stack", result.positions[section]))
        }  # fmt: skip
        sections[section] = {
            # the best match with a neighbour: at the stack's pose (distances 1–2) or at a
            # registration's own (a torn section's better piece leads its registration)
            "evidence": float(max(evidences + link_evidence.get(section, [])))
            if evidences or section in link_evidence
            else float("nan"),
            "link_weights": {
                f"{k.moving}~{k.fixed}": k.weight for k in links if section in (k.fixed, k.moving)
            },
            "ncc_neighbours": float(np.mean(similarities)) if similarities else float("nan"),
            "weight": result.section_weights.get(section, 1.0),
            "agreement": result.section_agreement.get(section, 1.0),
            "drift_removed_um": result.drift_um.get(section, 0.0),
            "chain_vs_stack_um": float(np.median(chain_moved)) * (pixel_size or 1.0),
            **drift,
            "position": index[section],
            "nonrigid": section in nonrigid,
        }
    # orthogonal views: an xz and a yz slice through the tissue's centre, before (each
    # section as scanned, centred on the grid) and after the alignment
    rows, cols = np.nonzero(ref.tissue_mask)
    cy, cx = (int(np.median(rows)), int(np.median(cols))) if rows.size else (0, 0)
    views = {}
    for name, stack in (("after", final), ("before", None)):
        xz, yz = [], []
        for section in order:
            if stack is None:
                image = images[section].image if section != reference else ref.image
                plane = np.zeros(ref.image.shape, np.float32)
                h, w = min(image.shape[0], plane.shape[0]), min(image.shape[1], plane.shape[1])
                plane[:h, :w] = image[:h, :w]
            else:
                plane = stack[section][0]
            xz.append(plane[cy])
            yz.append(plane[:, cx])
        views[f"xz_{name}"], views[f"yz_{name}"] = np.array(xz), np.array(yz)
    np.savez(folder / "views.npz", **views, order=np.array(order), centre=np.array([cx, cy]))
    # serial sections share structures, not cells, and blocks differ in texture: a section is
    # unrelated below the threshold and well below what this block's sections reach
    evidence = {s: v["evidence"] for s, v in sections.items() if s != reference}
    # (what the block's sections reach: a section without any evidence, a blank one, does
    # not pull it down)
    typical = np.nanmedian([v for v in evidence.values() if v > 0] or [np.nan])
    threshold = min(min_evidence, 0.6 * typical) if np.isfinite(typical) else min_evidence
    # or whose registrations with its neighbours disagree with one another (chance matches;
    # one of them can still score above the threshold)
    min_agreement = float(settings.get("min_agreement", 0.15))
    bad = [
        s
        for s, v in evidence.items()
        if (np.isfinite(v) and v < threshold) or sections[s]["agreement"] < min_agreement
    ]
    # the flow between sections is smoothed (flow.py): a tear of TEAR_UM leaves a gradient of
    # TEAR_UM / (σ √(2π)) in the field instead of a step; the review's jump limit follows
    working_um = pixel_size / float(ref.full_to_working[0, 0]) if pixel_size else None
    if working_um:
        sigma_px = serial_smoothing(ref.image.shape, working_um,
                                    settings.get("flow_smoothing_um", 64.0))  # fmt: skip
        max_jump = TEAR_UM / (sigma_px * working_um * np.sqrt(2 * np.pi))
    else:
        max_jump = 0.2  # a 30 µm tear under the default 64 µm smoothing

    # a section's field judged on its registrations with its neighbours (the stack's
    # transform also carries theirs and what the chain followed along z); a tear is the
    # section's own when a registration on each side shows it (regflow.stack.torn_areas): the
    # most torn field of each side, the least torn of the sides (at an end, the least torn)
    regularity = {
        (k.fixed, k.moving): field_on_tissue(
            k.transform, (ref if k.fixed == reference else images[k.fixed]).tissue_mask, max_jump
        )
        for k in links
        if 0 < abs(index[k.fixed] - index[k.moving]) <= 2
    }

    def jumps(field: dict) -> float:
        return float(np.nan_to_num(field["jump_fraction"]))

    for section, groups in side_links(order, list(regularity)).items():
        if len(groups) == 2:
            fields = [max((regularity[p] for p in g), key=jumps) for g in groups]
        else:
            fields = [regularity[p] for g in groups for p in g]
        if fields:
            sections[section]["field"] = min(fields, key=jumps)
    # where a section is torn its field smears the tear's step over the smoothing scale: that
    # area is not registered. The band the jumps mark (hysteresis: the step's slope above half
    # its peak), grown by ¾ σ, where the smoothed step still misses a 50 µm tear by > 1.3 µm.
    grid_to_pixels = np.linalg.inv(solved.fixed_full_to_working)
    sigma_full = (sigma_px if working_um else 0.04 * max(ref.image.shape)) / float(
        ref.full_to_working[0, 0]
    )
    tissues = {s: (ref if s == reference else images[s]).tissue_mask for s in order}
    areas = torn_areas(order, links, result.positions, solve_grid, max_jump, tissues,
                       grow=int(round(0.75 * sigma_full / grid_to_pixels[0, 0])),
                       reference=reference)  # fmt: skip
    if (reference_torn := areas[reference] & reference_tissue).any():
        torn = float(reference_torn.sum() / max(reference_tissue.sum(), 1))
        log.warning("the reference %s is torn over %.1f %% of its tissue: no registration "
                    "onto it follows its tear, so that area is not registered in any section "
                    "(marked in each); an untorn reference section avoids this", reference,
                    100 * torn)  # fmt: skip
    for section in order:
        area = areas[section] & reference_tissue
        sections[section]["not_registered_fraction"] = float(
            area.sum() / max(int(reference_tissue.sum()), 1)
        )
        write_features(folder / f"{section}.not_registered.geojson",
                       {"type": "FeatureCollection"},
                       mask_features(area, grid_to_pixels, "Not registered"))  # fmt: skip
    report = {
        "case": case,
        "solve": solve,
        "reference": reference,
        "order": order,
        "links": [
            {"fixed": f, "moving": m, "weight": w} for (f, m), w in result.link_weights.items()
        ],
        "sections": sections,
        # the links onto the reference from beyond link_distance: kept unless their triangles
        # close far worse than the neighbours' (regflow.stack.far_links_check)
        "far_links": result.far_links,
        "unrelated": bad,
        "min_evidence": float(threshold),
        "min_evidence_configured": min_evidence,
        "min_agreement": min_agreement,
        "max_jump": float(max_jump),
        "pixel_size_um": pixel_size,
        "working_pixel_um": working_um,
        "seconds": time.perf_counter() - start,
        "provenance": provenance(settings),
    }
    write_json(snakemake.output.info, report)
    for section in bad:
        log.warning("section %s: evidence against its neighbours %.1f (threshold %.1f), its "
                    "links' agreement %.3f (threshold %.2f): not the same block?", section,
                    sections[section]["evidence"], threshold, sections[section]["agreement"],
                    min_agreement)  # fmt: skip
    log.info("%s solve of %d sections, %d links in %.1f s", solve, len(order), len(links),
             report["seconds"])  # fmt: skip
