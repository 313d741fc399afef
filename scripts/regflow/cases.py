"""One data model for pair sheets and image sheets: a case is a set of images of one tissue
with one reference; each non-reference image is one *registration*.

Two sheet layouts are accepted and converted here, in one place, to one table of
registrations (one row per moving image, the columns of the pair sheet):

- the **pair sheet**, one row per pair (``sample, fixed, moving, fixed_*, moving_*``): a pair
  is a case of two images whose reference is ``fixed``; its registration id is ``sample``;
- the **images sheet**, one row per image (``case, image, path, modality, channel,
  landmarks, pixel_size_um, reference, order``): the registration id is ``case/image``.

In *direct* mode every image is registered onto the reference. In *stack* mode
(``cases.chain``, serial sections) images are sorted by ``order``; each is registered onto its
neighbour one step nearer the reference, and also onto the section two steps nearer (extra
*link* rows, ``sample = "<case>/<moving>~<fixed>"``, that run only the registration stages);
the case's ``stack`` rule then combines all these pairwise transforms into one transform
per section (:mod:`regflow.stack`). ``stack`` names the case in stack mode (empty otherwise),
``link`` is true on link rows (``far_link`` on those onto the reference from beyond the link
distance), and ``anchor`` names the registration whose preprocessed fixed
image is the reference at working resolution. The registration's ``fixed_landmarks`` are
always the reference's, so errors are measured in the reference frame.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import pandas as pd

# a sample, case, image or associated-image id (each becomes a folder or file name)
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
ID = re.compile(rf"^{ID_PATTERN}$")
# Names regflow writes next to a sample's or case's folder: an id equal to one would share a
# path with regflow's own files (and make a stage's file look like another sample's output).
RESERVED_SAMPLE_IDS = frozenset({"logs", "benchmarks", "summary.tsv", "summary.png"})
# A sample's stage folders, and a case's own outputs, inside out/<case>/.
STAGE_FOLDERS = ("preprocess", "flow", "associated", "stack")
RESERVED_IMAGE_IDS = frozenset(
    {*STAGE_FOLDERS, "stack.json", "volume.ome.zarr", "volume.ome.tif", "case_qc.png",
     "integrity.tsv", "merged.ome.tif", "merged.ome.zarr"}
)  # fmt: skip


def reserved_id(value: str, image: bool = False) -> str:
    """Why ``value`` cannot be a sample/case id (``image``: an image id within a case), or ""."""
    names = RESERVED_IMAGE_IDS if image else RESERVED_SAMPLE_IDS
    if value in names:
        return (f"{value!r} is reserved (regflow writes its own "
                f"{'stage files' if image else 'files'} under that name); rename it")  # fmt: skip
    return ""


PAIR_COLUMNS = (
    "sample",
    "fixed",
    "moving",
    "fixed_modality",
    "moving_modality",
    "fixed_channel",
    "moving_channel",
    "fixed_landmarks",
    "moving_landmarks",
    "fixed_pixel_size_um",
    "moving_pixel_size_um",
    "fixed_annotations",
    "moving_annotations",
    "moving_associated",
    "fixed_cells",
    "moving_cells",
)
# images-sheet column → pair-sheet column suffix (fixed_* from the reference, moving_* here)
IMAGE_COLUMNS = {
    "path": "",
    "modality": "_modality",
    "channel": "_channel",
    "landmarks": "_landmarks",
    "pixel_size_um": "_pixel_size_um",
    "annotations": "_annotations",
    "associated": "_associated",
    "cells": "_cells",
}
IMAGES_SHEET_COLUMNS = ("case", "image", *IMAGE_COLUMNS, "reference", "order", "thickness_um")
# Added to every registration row (derived, not user columns).
MODEL_COLUMNS = (
    "case", "image", "fixed_image", "reference_image", "reference_path",
    "reference_pixel_size_um", "anchor", "stack", "link", "far_link",
)  # fmt: skip
TRUE = ("true", "yes", "1", "y", "t")
FALSE = ("false", "no", "0", "n", "f", "")


class SheetError(ValueError):
    """The sheet cannot be turned into registrations; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value) == ""


def sheet_kind(table: pd.DataFrame) -> str:
    """``pairs`` or ``images`` from the sheet's columns (raises with what was found)."""
    columns = set(table.columns)
    if {"case", "image", "path"} <= columns:
        return "images"
    if "sample" in columns:
        return "pairs"
    raise SheetError(
        [
            "no column 'sample' (pair sheet) nor 'case', 'image' and 'path' (images sheet); "
            f"found {list(table.columns)}"
        ]
    )


def from_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Registrations of a pair sheet: the sheet itself plus the model's columns."""
    out = table.copy()
    out["case"] = out["sample"]
    out["image"] = ""
    out["fixed_image"] = ""
    out["reference_image"] = ""
    out["reference_path"] = out["fixed"]
    out["reference_pixel_size_um"] = out.get("fixed_pixel_size_um", "")
    out["anchor"] = out["sample"]
    out["stack"] = ""
    out["link"] = ""
    out["far_link"] = ""
    return out


def from_images(table: pd.DataFrame, chain: bool = False, link_distance: int = 2) -> pd.DataFrame:
    """Registrations of an images sheet (every problem at once in a :class:`SheetError`).

    Each non-reference image becomes one row with ``sample = "<case>/<image>"``, its own
    values as ``moving*`` and its target's (the reference, or in chain mode its neighbour) as
    ``fixed*``; ``fixed_landmarks`` are the reference's.
    """
    errors = []
    unknown = [c for c in table.columns if c not in IMAGES_SHEET_COLUMNS]
    if unknown:
        errors.append(
            f"unknown column(s) {unknown}; the images sheet takes {', '.join(IMAGES_SHEET_COLUMNS)}"
        )
    rows = []
    # plain records, grouped by case in sheet order (per-case pandas work costs ~1 ms a case)
    groups = case_images(table)
    if "" in groups:
        errors.append(f"column case: empty on {len(groups.pop(''))} row(s); every image "
                      "belongs to a case")  # fmt: skip
    for case, records in groups.items():
        where = f"case {case!r}"
        if not ID.match(str(case)) or ".." in str(case):
            errors.append(
                f"{where}: column case: unsafe id (it becomes a folder name); use letters, "
                "digits, '_', '-' and '.', starting with a letter or digit"
            )
        elif why := reserved_id(str(case)):
            errors.append(f"{where}: column case: {why}")
        ids = [str(r.get("image")) for r in records]
        for duplicate in sorted(i for i, n in Counter(ids).items() if n > 1):
            errors.append(f"{where}, image {duplicate!r}: column image: appears more than once "
                          "in the case; image ids must be unique within a case")  # fmt: skip
        for image in ids:
            if not ID.match(image) or ".." in image:
                errors.append(f"{where}, image {image!r}: column image: unsafe id (it becomes "
                              "a folder name); use letters, digits, '_', '-' and '.'")  # fmt: skip
            elif why := reserved_id(image, image=True):
                errors.append(f"{where}, image {image!r}: column image: {why}")
        flags = [
            "" if _blank(r.get("reference")) else str(r["reference"]).strip().lower()
            for r in records
        ]
        for image, flag in zip(ids, flags, strict=True):
            if flag not in TRUE + FALSE:
                errors.append(f"{where}, image {image!r}: column reference: {flag!r} is not "
                              "true or false")  # fmt: skip
        is_reference = [flag in TRUE for flag in flags]
        if sum(is_reference) != 1:
            marked = [i for i, r in zip(ids, is_reference, strict=True) if r]
            errors.append(
                f"{where}: column reference: {len(marked)} images marked as reference "
                f"{marked}; mark exactly one image per case 'true'"
            )
            continue
        if len(records) < 2:
            errors.append(f"{where}: only the reference; a case needs at least one image to "
                          "register onto it")  # fmt: skip
            continue
        positions = []
        for image, value in zip(ids, (r.get("order") for r in records), strict=True):
            if _blank(value):
                positions.append(None)
                continue
            try:
                positions.append(int(str(value).strip()))
            except ValueError:
                errors.append(f"{where}, image {image!r}: column order: {value!r} is not an "
                              "integer (section order along the block)")  # fmt: skip
                positions.append(None)
        if chain:
            missing = [i for i, p in zip(ids, positions, strict=True) if p is None]
            if missing:
                errors.append(f"{where}: column order: chain mode (cases.chain) needs the "
                              f"section order of every image; missing for {missing}")  # fmt: skip
                continue
            known = [p for p in positions if p is not None]
            if len(set(known)) != len(known):
                errors.append(f"{where}: column order: repeated values {sorted(known)}; each "
                              "section needs its own position in chain mode")  # fmt: skip
                continue
        if "thickness_um" in table.columns:
            values = {str(r["thickness_um"]).strip() for r in records
                      if not _blank(r.get("thickness_um"))}  # fmt: skip
            if len(values) > 1:
                errors.append(f"{where}: column thickness_um: {sorted(values)} differ; the "
                              "section thickness is one value per case, on every row")  # fmt: skip
            for value in values:
                try:
                    ok = float(value) > 0
                except ValueError:
                    ok = False
                if not ok:
                    errors.append(f"{where}: column thickness_um: {value!r} is not a positive "
                                  "number (µm)")  # fmt: skip
        reference = records[is_reference.index(True)]
        rows += _case_registrations(str(case), records, reference, positions, chain,
                                    link_distance)  # fmt: skip
    if errors:
        raise SheetError(errors)
    return pd.DataFrame(rows)


def _case_registrations(case, records, reference, positions, chain, distance=2) -> list[dict]:
    def values(record, role):
        return {f"{role}{suffix}": record.get(column) for column, suffix in IMAGE_COLUMNS.items()}

    def rid(record):
        return f"{case}/{record['image']}"

    reference_id = str(reference["image"])
    targets, anchor, links = {}, {}, []
    if chain:
        ordered = sorted(zip(positions, records, strict=True), key=lambda item: item[0])
        ordered = [record for _, record in ordered]
        r = next(i for i, rec in enumerate(ordered) if rec is reference)
        for i, record in enumerate(ordered):
            if i == r:
                continue
            step = -1 if i > r else 1
            targets[id(record)] = ordered[i + step]
            anchor[id(record)] = rid(ordered[r - step])  # the first section after the reference
            for skip in range(2, distance + 1):  # links that skip the neighbour(s)
                if abs(i - r) >= skip:
                    links.append((record, ordered[i + skip * step], anchor[id(record)], False))
            if abs(i - r) > distance:  # and onto the reference: a constraint that never drifts
                links.append((record, reference, anchor[id(record)], True))
        for below in range(1, distance):  # across the reference
            for above in range(1, distance - below + 1):
                if r - below >= 0 and r + above < len(ordered):
                    near, far = sorted((r - below, r + above), key=lambda k: (abs(k - r), k))
                    links.append((ordered[far], ordered[near], rid(ordered[r - below]), False))
    # serial sections: their rows (and summary.tsv's) in the stack's order
    others = [r for r in (ordered if chain else records) if r is not reference]
    rows = []
    for record in others:
        target = targets.get(id(record), reference)
        row = {"sample": rid(record)}
        row |= values(target, "fixed") | values(record, "moving")
        # landmarks and annotations of the reference, whatever the registration's target
        row["fixed_landmarks"] = reference.get("landmarks")
        row["fixed_annotations"] = reference.get("annotations")
        row["fixed_cells"] = reference.get("cells")  # integrity is judged on the reference
        row.pop("fixed_associated", None)  # associated images belong to the moving image
        row |= {
            "case": case,
            "image": str(record["image"]),
            "fixed_image": str(target["image"]),
            "reference_image": reference_id,
            "reference_path": reference.get("path"),
            "reference_pixel_size_um": reference.get("pixel_size_um"),
            "anchor": anchor.get(id(record), rid(record)),
            "stack": case if chain else "",
            "link": "",
            "far_link": "",
        }
        rows.append(row)
    for moving, fixed, first, far in links:
        # registration stages only: no landmarks, annotations, cells or associated images
        row = {"sample": f"{case}/{moving['image']}~{fixed['image']}"}
        row |= {f"fixed{suffix}": fixed.get(column) for column, suffix in IMAGE_COLUMNS.items()
                if column in ("path", "modality", "channel", "pixel_size_um")}  # fmt: skip
        row |= {f"moving{suffix}": moving.get(column) for column, suffix in IMAGE_COLUMNS.items()
                if column in ("path", "modality", "channel", "pixel_size_um")}  # fmt: skip
        row |= {
            "case": case,
            "image": str(moving["image"]),
            "fixed_image": str(fixed["image"]),
            "reference_image": reference_id,
            "reference_path": reference.get("path"),
            "reference_pixel_size_um": reference.get("pixel_size_um"),
            "anchor": first,
            "stack": case,
            "link": "true",
            # onto the reference from beyond link_distance (its flow: see flow_serial)
            "far_link": "true" if far else "",
        }
        rows.append(row)
    return rows


def associated_name(path: str) -> str:
    """Output name of an associated image: its file name without extensions
    (``cells.labels.ome.tif`` → ``cells.labels``)."""
    name = os.path.basename(str(path))
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def case_images(table: pd.DataFrame) -> dict[str, list[dict]]:
    """Images sheet → ``{case: [row, …]}`` in sheet order (the reference included)."""
    groups: dict[str, list[dict]] = {}
    for record in table.to_dict("records"):
        case = record.get("case")
        groups.setdefault("" if _blank(case) else str(case).strip(), []).append(record)
    return groups


def is_reference(record: dict) -> bool:
    return str(record.get("reference", "")).strip().lower() in TRUE
