"""Checks of a sample sheet against the files it names, before any job runs.

Every problem is collected (not just the first), each naming the sample, the column, the
value and what to do, so that a cohort of hundreds of rows is fixed in one pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .annotations import AnnotationError, read_features
from .cases import ID, MODEL_COLUMNS, PAIR_COLUMNS, associated_name, reserved_id
from .channels import MODALITIES, ChannelError, resolve_channel
from .formats import (
    ImageInfo,
    ImageReadError,
    implausible_pixel_sizes,
    pixel_size_override,
    verify_image,
    with_pixel_size,
)
from .points import PointsError, read_points
from .warp import associated_scale

ROLES = ("fixed", "moving")
COLUMNS = PAIR_COLUMNS


def _blank(value) -> bool:
    return (
        value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""
    )


def _verify_or_error(path: str) -> ImageInfo | ImageReadError:
    try:
        return verify_image(path)
    except ImageReadError as exc:
        return exc


def _verified(path: str, cache: dict) -> ImageInfo | ImageReadError:
    """:func:`verify_image` once per file (a case's reference serves many registrations)."""
    if path not in cache:
        cache[path] = _verify_or_error(path)
    return cache[path]


def _formats_version() -> str:
    """The reader layer's source: a header read by another version is read again."""
    source = Path(__file__).with_name("formats.py").read_bytes()
    return hashlib.sha1(source).hexdigest()[:16]


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def verify_images(
    paths, cache_file: str | os.PathLike | None = None, workers: int | None = None
) -> dict[str, ImageInfo | ImageReadError]:
    """:func:`verify_image` of every distinct path: in threads (decoding releases the GIL),
    and, with ``cache_file``, only for files that changed (size or modification time) since
    they last passed. A cohort of thousands of images is planned again without opening one.
    """
    paths = sorted({str(p) for p in paths})
    version = _formats_version()
    known = {}
    if cache_file is not None:
        try:
            stored = json.loads(Path(cache_file).read_text())
            if stored.get("version") == version:
                known = stored.get("files", {})
        except (OSError, ValueError, AttributeError):
            known = {}
    results: dict[str, ImageInfo | ImageReadError] = {}
    todo = []
    stamps = {path: _stamp(path) for path in paths}  # before reading: a later change is seen
    for path in paths:
        entry = known.get(os.path.abspath(path))
        stamp = stamps[path]
        if entry and stamp is not None and tuple(entry["stamp"]) == stamp:
            info = dict(entry["info"], path=path)
            info["shape"] = tuple(info["shape"])
            info["level_shapes"] = [tuple(s) for s in info["level_shapes"]]
            info["notes"] = tuple(info["notes"])
            results[path] = ImageInfo(**info)
        else:
            todo.append(path)

    workers = workers or min(8, os.cpu_count() or 1)
    if len(todo) > 1 and workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results.update(zip(todo, pool.map(_verify_or_error, todo), strict=True))
    else:
        results.update((path, _verify_or_error(path)) for path in todo)
    if cache_file is not None and todo:
        files = {}
        for path, info in results.items():
            stamp = stamps[path]
            if isinstance(info, ImageInfo) and stamp is not None:
                files[os.path.abspath(path)] = {"stamp": stamp, "info": dataclasses.asdict(info)}
        try:
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            partial = Path(f"{cache_file}.{os.getpid()}.tmp")
            partial.write_text(json.dumps({"version": version, "files": known | files}))
            os.replace(partial, cache_file)
        except OSError:
            pass  # a read-only working directory: checked again next time
    return results


def _check_cells(row, role, named, verified, labels) -> list[str]:
    """A ``*_cells`` label image: readable, one integer channel, the size of its image (the
    reference's, for the fixed role: integrity is judged on the reference)."""
    path = row.get(f"{role}_cells")
    if _blank(path):
        return []
    where = named(role, f"{role}_cells", labels)
    info = _verified(str(path), verified)
    if isinstance(info, ImageReadError):
        return [info.describe(named(role, f"{role}_cells", labels, sep=","))]
    image_path = row.get("reference_path") if role == "fixed" else row.get("moving")
    image = verified.get(image_path if not _blank(image_path) else row.get(role))
    problems = []
    if info.n_channels != 1 or not np.issubdtype(np.dtype(info.dtype), np.integer):
        problems.append(f"{path} is {info.n_channels} channel(s) of {info.dtype}; a label image "
                        "is one channel of integers (0 = background), e.g. a Cellpose, StarDist "
                        "or Mesmer mask saved as TIFF")  # fmt: skip
    if isinstance(image, ImageInfo) and tuple(info.shape) != tuple(image.shape):
        problems.append(f"{path} is {info.shape[0]}×{info.shape[1]} px but its image is "
                        f"{image.shape[0]}×{image.shape[1]} px; export the labels at the "
                        "image's full resolution")  # fmt: skip
    return [f"{where}: {problem}" for problem in problems]


def _check_extras(row, named, verified, labels, images_sheet) -> list[str]:
    """Annotation files parse; associated images are readable, uniquely named, and their size
    matches the moving image's (or their pixel size says how they relate)."""
    errors = []
    if images_sheet:  # the reference's annotations, whatever the registration's target
        labels = labels | {"fixed": f"case {row['case']!r}, image {row['reference_image']!r}"}
    for role in ROLES:
        value = row.get(f"{role}_annotations")
        if not _blank(value):
            try:
                read_features(value)
            except AnnotationError as exc:
                errors.append(f"{named(role, f'{role}_annotations', labels)}: {exc}")
    for role in ROLES:
        errors += _check_cells(row, role, named, verified, labels)
    value = row.get("moving_associated")
    if _blank(value):
        return errors
    moving = verified.get(row.get("moving"))
    moving_size = pixel_size_override(row.get("moving_pixel_size_um"))
    names = {}
    for path in (p.strip() for p in str(value).split(";") if p.strip()):
        where = named("moving", "moving_associated", labels, sep=",")
        name = associated_name(path)
        if name in names:
            errors.append(f"{named('moving', 'moving_associated', labels)}: {path} and "
                          f"{names[name]} would both be written as associated/{name}.ome.tif; "
                          "rename one")  # fmt: skip
            continue
        names[name] = path
        info = _verified(path, verified)
        if isinstance(info, ImageReadError):
            errors.append(info.describe(where))
            continue
        if isinstance(moving, ImageInfo):
            try:
                associated_scale(info.shape, info.pixel_size_um, moving.shape,
                                 moving_size or moving.pixel_size_um)  # fmt: skip
            except ValueError as exc:
                errors.append(f"file {path} ({where}) {exc}")
    return errors


def check_sample_sheet(
    samples: pd.DataFrame,
    max_pixels: int | None = None,
    check_files: bool = True,
    headers: dict | None = None,
    cache_file: str | os.PathLike | None = None,
) -> tuple[list[str], list[str]]:
    """Validate rows and the files they name.

    Parameters
    ----------
    samples : DataFrame
        Registrations (:mod:`regflow.cases`: a pair sheet as read, or an images sheet
        converted), strings with missing cells NaN. Problems of a pair sheet name the sample
        and column; those of an images sheet the case, image and images-sheet column.
    max_pixels : int, optional
        Largest accepted full-resolution image (rows × columns).
    check_files : bool
        Also open every image header and landmark file. A cluster job process re-reads the
        sheet; it skips this (the submitting process checked them all), or each job of a
        300-pair cohort would open 600 headers.
    headers : dict, optional
        Filled with ``{path: ImageInfo}`` of every image that passed, so that callers (the
        resources of the rules) do not open the files again.
    cache_file : path, optional
        Headers of the files that passed before (:func:`verify_images`).

    Returns
    -------
    errors : list of str
    warnings : list of str
    """
    errors: list[str] = []
    warnings: list[str] = []
    unknown = [c for c in samples.columns if c not in COLUMNS + MODEL_COLUMNS]
    if unknown:
        errors.append(f"unknown column(s) {unknown}; the sample sheet takes {', '.join(COLUMNS)}")
    ids = samples["sample"].astype(str)
    for duplicate in sorted(set(ids[ids.duplicated()])):
        errors.append(
            f"sample {duplicate!r}: column sample: the id appears more than once; "
            "ids must be unique"
        )
    images_sheet = "image" in samples.columns and (samples["image"].fillna("") != "").any()
    verified: dict[str, ImageInfo | ImageReadError] = {}  # a reference is checked once
    if check_files:
        images = [p for role in ROLES if role in samples.columns for p in samples[role]
                  if not _blank(p)]  # fmt: skip
        verified.update(verify_images(images, cache_file))
    for _, row in samples.iterrows():
        sample = str(row["sample"])
        where = f"sample {sample!r}"
        if images_sheet:  # ids were checked when the images sheet was converted
            target = row.get("fixed_image") or row["reference_image"]
            labels = {"fixed": f"case {row['case']!r}, image {target!r}",
                      "moving": f"case {row['case']!r}, image {row['image']!r}"}  # fmt: skip
        else:
            labels = {"fixed": where, "moving": where}

        def named(role, column, _labels=labels, sep=":"):
            """``<where>: column <c>`` in the sheet's own terms (images sheet: ``channel``
            for ``moving_channel``, ``path`` for ``moving``)."""
            name = column if not images_sheet else (column.split("_", 1)[1:] or ["path"])[0]
            return f"{_labels[role]}{sep} column {name}"

        if not images_sheet and (not ID.match(sample) or ".." in sample):
            errors.append(
                f"{where}: column sample: unsafe id (ids become folder names); use letters, "
                "digits, '_', '-' and '.', starting with a letter or digit, without '..'"
            )
        elif not images_sheet and (why := reserved_id(sample)):
            errors.append(f"{where}: column sample: {why}")
        landmark_counts = {}
        infos = {}  # each role's header with the sheet's pixel size applied
        for role in ROLES:
            column = role
            path = row.get(column)
            if _blank(path):
                errors.append(f"{named(role, column)}: empty; give the {role} image path")
                continue
            info = None
            if check_files:
                # complete and decodable, not only a parsable header
                info = _verified(path, verified)
                if isinstance(info, ImageReadError):
                    errors.append(info.describe(named(role, column, sep=",")))
                    info = None
            size = row.get(f"{role}_pixel_size_um")
            if not _blank(size) and pixel_size_override(size) is None:
                errors.append(
                    f"{named(role, f'{role}_pixel_size_um')}: {size!r} is not a positive number "
                    "of micrometres per pixel (e.g. 0.25 for a 40× scan); leave it empty to "
                    "use the file's own pixel size"
                )
            modality = row.get(f"{role}_modality")
            modality = "brightfield" if _blank(modality) else str(modality)
            if modality not in MODALITIES:
                errors.append(
                    f"{named(role, f'{role}_modality')}: unknown modality {modality!r}; use "
                    f"{' or '.join(MODALITIES)} (empty means brightfield)"
                )
                continue
            if info is not None:
                override = pixel_size_override(size)
                if override is None:
                    warnings += [f"{named(role, column)}: {note}" for note in info.notes]
                infos[role] = with_pixel_size(info, override)
                if max_pixels and info.shape[0] * info.shape[1] > max_pixels:
                    errors.append(
                        f"{named(role, column)}: {path} has {info.shape[0]}×{info.shape[1]} "
                        f"pixels, more than preprocess.max_pixels={max_pixels}; raise the cap "
                        "or use a downsampled export"
                    )
                try:
                    resolve_channel(
                        row.get(f"{role}_channel"), modality, info.channel_names, info.rgb
                    )
                except ChannelError as exc:
                    errors.append(f"{named(role, f'{role}_channel')}: {exc}")
            landmarks = row.get(f"{role}_landmarks")
            if check_files and not _blank(landmarks):
                column = f"{role}_landmarks"
                if not os.path.isfile(str(landmarks)):
                    errors.append(f"{named(role, column)}: {landmarks}: file not found")
                    continue
                try:
                    landmark_counts[role] = len(read_points(landmarks))
                except PointsError as exc:
                    errors.append(f"{named(role, column)}: {exc}")
        if len(infos) == 2 and (trap := implausible_pixel_sizes(infos["fixed"], infos["moving"])):
            warnings.append(f"{where}: {trap}")
        if check_files:
            errors += _check_extras(row, named, verified, labels, images_sheet)
        if len(landmark_counts) == 2 and landmark_counts["fixed"] != landmark_counts["moving"]:
            warnings.append(
                f"{where}: fixed_landmarks has {landmark_counts['fixed']} rows and "
                f"moving_landmarks {landmark_counts['moving']}; the first "
                f"{min(landmark_counts.values())} rows are paired (ANHIR rule)"
            )
    if headers is not None:
        headers.update({p: i for p, i in verified.items() if isinstance(i, ImageInfo)})
    # An image shared by several registrations (a case's reference) is reported once.
    return list(dict.fromkeys(errors)), list(dict.fromkeys(warnings))
