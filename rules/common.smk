import hashlib
import inspect
import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

try:
    from snakemake.common import overwrite_function_params
except ImportError:  # a Snakemake without it reads each function's signature per job

    def overwrite_function_params(func, params):
        pass


# regflow's own files are found from this rule file's location, never from the working
# directory or workflow.basedir: used as a Snakemake module, the main Snakefile (and so
# workflow.basedir) is the user's, not regflow's.
REGFLOW_ROOT = Path(str(workflow.current_basedir)).resolve().parent
# The rule scripts' library, also used here to check the sample sheet before any job runs.
sys.path.insert(0, str(REGFLOW_ROOT / "scripts"))
from regflow.cases import (  # noqa: E402
    ID_PATTERN,
    STAGE_FOLDERS,
    SheetError,
    case_images,
    from_images,
    associated_name,
    is_reference,
    from_pairs,
    sheet_kind,
)
from regflow.samplesheet import check_sample_sheet  # noqa: E402

validate(config, schema="../config/schemas/config.schema.yaml")

OUTDIR = config["outdir"].rstrip("/")
# A registration id: a pair sheet's sample, an images sheet's case/image, or a serial stack's
# extra link case/moving~fixed. One generic pattern (an alternation of every id made planning
# quadratic in the cohort size). Its second part is never a stage folder (image ids cannot be
# one): else <sample>/flow/transform.npz would also read as refine's output of a sample
# "<sample>/flow", whose input function fails in a job run alone (a cluster job's
# --allowed-rules refine).
_STAGES = "|".join(STAGE_FOLDERS)
SAMPLE_PATTERN = rf"{ID_PATTERN}(?:/(?!(?:{_STAGES})/){ID_PATTERN}(?:~{ID_PATTERN})?)?"
# Output images: OME-TIFF files or OME-Zarr folders (warp.format)
ZARR = config["warp"]["format"] == "ome-zarr"
IMAGE = "ome.zarr" if ZARR else "ome.tif"
# a case with an order: its volume as OME-Zarr, and as an OME-TIFF z-stack with TIFF outputs
VOLUME_OUTPUTS = {"zarr": directory(f"{OUTDIR}/{{case}}/volume.ome.zarr")} | (
    {} if ZARR else {"tiff": f"{OUTDIR}/{{case}}/volume.ome.tif"}
)
if ZARR and config["warp"]["compression"] == "jpeg":
    raise ValueError(
        "config warp.compression: jpeg is for OME-TIFF output (OME-Zarr readers decode "
        "standard codecs only); with warp.format: ome-zarr use zlib or none"
    )


def image_output(pattern):
    """An output image: a folder for OME-Zarr (Snakemake's directory()), else a file."""
    return directory(pattern) if ZARR else pattern


LIBRARY = REGFLOW_ROOT / "scripts" / "regflow"


def read_sheet(path):
    """The sheet as strings (cells stripped, comments and blank lines skipped)."""
    if not Path(path).is_file():
        raise ValueError(
            f"sample sheet {path} not found; set `samples:` in the config or pass "
            "--config samples=PATH"
        )
    table = pd.read_csv(path, sep="\t", dtype=str, comment="#", skip_blank_lines=True)
    table.columns = [c.strip() for c in table.columns]
    table = table.apply(lambda column: column.str.strip())
    comma = len(table.columns) == 1 and "," in table.columns[0]
    if comma:
        raise ValueError(
            f"sample sheet {path}: one column {list(table.columns)}; the sheet must be "
            "tab-separated (TSV), not comma-separated"
        )
    if table.empty:
        raise ValueError(f"sample sheet {path} has no rows; add one row per image pair")
    return table


def load_registrations(path, chain, link_distance=2):
    """One row per registration (a pair sheet's rows, or an images sheet's non-reference
    images; see regflow.cases), and the images sheet itself (None for a pair sheet)."""
    table = read_sheet(path)
    try:
        kind = sheet_kind(table)
        if kind == "pairs":
            return from_pairs(table), None
        return from_images(table, chain, link_distance), table
    except SheetError as error:
        raise ValueError(
            f"sample sheet {path} has {len(error.errors)} problem(s):\n  - "
            + "\n  - ".join(error.errors)
        ) from None


samples, images_sheet = load_registrations(
    config["samples"], config["cases"]["chain"], config["cases"]["link_distance"]
)
# All problems at once (ids, files, headers, channels, landmarks), then the schema's defaults.
# Cluster job processes re-read the sheet: the files were checked before submission.
HEADERS = {}  # path → ImageInfo, read once by the checks and reused by the resources
_errors, _warnings = check_sample_sheet(
    samples,
    config["preprocess"]["max_pixels"],
    check_files=workflow.is_main_process,
    headers=HEADERS,
    # unchanged files are not opened again at the next plan (keyed by size and mtime)
    cache_file=".snakemake/regflow/headers.json",
)
for _warning in _warnings if workflow.is_main_process else []:
    logger.warning(f"sample sheet {config['samples']}: {_warning}")
if _errors:
    raise ValueError(
        f"sample sheet {config['samples']} has {len(_errors)} problem(s):\n  - "
        + "\n  - ".join(_errors)
    )
if images_sheet is None:
    validate(samples, schema="../config/schemas/samples.schema.yaml")
else:
    validate(images_sheet, schema="../config/schemas/images.schema.yaml")
samples = samples.set_index("sample", drop=False)
# each registration's row as a dict, blank cells None (input functions run once per job)
ROW = {
    sample: {k: (None if pd.isna(v) else v) for k, v in record.items()}
    for sample, record in zip(samples.index, samples.to_dict("records"))
}
# The registrations whose results are outputs (every row but the stack's extra links, which
# run the registration stages only).
SECTIONS = [
    sample
    for sample, link in zip(samples.index, samples["link"].fillna(""))
    if link != "true"
]
CHAIN = config["cases"]["chain"]


def _cell(record, column, default=""):
    value = record.get(column)
    return default if value is None or pd.isna(value) or value == "" else value


def case_summary(case, records):
    """What the case-level rules need of one case of an images sheet."""
    reference = next(r for r in records if is_reference(r))
    # the section order, when every image has its own (a volume); else none
    orders = [_cell(r, "order") for r in records]
    positions = {r["image"]: int(o) for r, o in zip(records, orders) if o != ""}
    ordered = []
    if all(o != "" for o in orders) and len(set(map(int, orders))) == len(orders):
        records = [
            r for _, r in sorted(zip(map(int, orders), records), key=lambda x: x[0])
        ]
        ordered = [r["image"] for r in records]
    # (serial sections in their order: the case QC's panels follow the stack)
    others = [r for r in records if r is not reference]
    folder = f"{OUTDIR}/{case}"
    fluorescence = [r for r in records if _cell(r, "modality") == "fluorescence"]
    links = CASE_REGISTRATIONS.get(case) if CHAIN else None
    return {
        "reference": reference["image"],
        "reference_path": reference["path"],
        "reference_modality": _cell(reference, "modality", "brightfield"),
        "reference_channel": _cell(reference, "channel"),
        "reference_pixel_size_um": _cell(reference, "pixel_size_um"),
        "images": [r["image"] for r in others],
        "modalities": [_cell(r, "modality", "brightfield") for r in others],
        "channels": [_cell(r, "channel") for r in others],
        "warped": [f"{folder}/{r['image']}/warped.{IMAGE}" for r in others],
        "metrics": [f"{folder}/{r['image']}/metrics.json" for r in others],
        # a merge needs two fluorescence images (the reference counts when it is one)
        "merge_images": (
            [r["image"] for r in fluorescence] if len(fluorescence) > 1 else []
        ),
        "merge_paths": [
            r["path"] if r is reference else f"{folder}/{r['image']}/warped.{IMAGE}"
            for r in fluorescence
        ],
        # rounds that share the reference's nuclear channel: the case's long-form integrity
        "integrity_images": [
            r["image"]
            for r in others
            if r in fluorescence and reference in fluorescence
        ],
        "integrity_reports": [
            f"{folder}/{r['image']}/integrity.json"
            for r in others
            if r in fluorescence and reference in fluorescence
        ],
        "integrity_tables": [
            f"{folder}/{r['image']}/integrity.tsv"
            for r in others
            if r in fluorescence and reference in fluorescence
        ],
        # serial sections: the volume's planes in order, and the stack solve's registrations
        "ordered": ordered,
        "positions": positions,
        "thickness_um": _cell(reference, "thickness_um"),
        "planes": [
            (
                reference["path"]
                if image == reference["image"]
                else f"{folder}/{image}/warped.{IMAGE}"
            )
            for image in ordered
        ],
        "links": [] if links is None else list(links["sample"]),
        "stack_outputs": (
            [f"{folder}/stack", f"{folder}/stack.json"] if links is not None else []
        ),
        "link_pairs": (
            []
            if links is None
            else [[f, m] for f, m in zip(links["fixed_image"], links["image"])]
        ),
    }


CASE_REGISTRATIONS = (
    {str(case): rows for case, rows in samples.groupby("case", sort=False)}
    if CHAIN
    else {}
)
CASES = (
    {}
    if images_sheet is None
    else {
        case: case_summary(case, rows)
        for case, rows in case_images(images_sheet).items()
    }
)


def job_function(func):
    """An input, params or resource function whose signature Snakemake reads once.

    Snakemake inspects a function's signature (which of wildcards, input, attempt, … it
    takes) every time it calls it, for every job: ~170 000 times for 750 cases of 4 images,
    ~4 % of their plan (benchmarks/plan.py). Recorded here once, as Snakemake's own path
    helpers do.
    """
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


def case_value(key):
    """Input/params function: one value of a case (see case_summary)."""
    return job_function(lambda wildcards: CASES[wildcards.case][key])


def sample_value(column, default=""):
    """Input/params function: a sample-sheet cell (default when empty or absent)."""

    def get(wildcards):
        value = ROW[wildcards.sample].get(column)
        return default if value is None else value

    return job_function(get)


def has_value(sample, column):
    value = ROW[sample].get(column)
    return value is not None and value != ""


def has_landmarks(sample, role):
    return has_value(sample, f"{role}_landmarks")


# annotations_<direction>.geojson: which sheet column, which way, drawn on which image.
ANNOTATIONS = {
    "warped": {
        "file": "moving_annotations",
        "direction": "moving_to_fixed",
        "image": "moving",
        "pixel_size": "moving_pixel_size_um",
    },
    "in_moving": {
        "file": "fixed_annotations",
        "direction": "fixed_to_moving",
        "image": "reference_path",
        "pixel_size": "reference_pixel_size_um",
    },
}


def annotation_value(key):
    """Input/params function of the annotations rule (see ANNOTATIONS)."""

    def get(wildcards):
        entry = ANNOTATIONS[wildcards.direction][key]
        if key == "direction":
            return entry
        return sample_value(entry)(wildcards)

    return job_function(get)


def associated_names(sample):
    """``{output name: path}`` of a sample's associated images (file names less extensions)."""
    if not has_value(sample, "moving_associated"):
        return {}
    paths = [
        p.strip() for p in ROW[sample]["moving_associated"].split(";") if p.strip()
    ]
    return {associated_name(p): p for p in paths}


@job_function
def associated_path(wildcards):
    return associated_names(wildcards.sample)[wildcards.name]


@job_function
def flow_serial(wildcards):
    """Flow settings of a serial section's registration (none outside a stack): the field
    smoothed over tissue scale, and for a link onto the reference from beyond link_distance
    the images smoothed at cell scale first (see cases.far_presmooth_um)."""
    row = ROW[wildcards.sample]
    if not row["stack"]:
        return {}
    serial = {"smoothing_um": config["cases"]["flow_smoothing_um"]}
    if row.get("far_link") == "true":
        serial["presmooth_um"] = config["cases"]["far_presmooth_um"]
    return serial


@job_function
def sample_row(wildcards):
    """Every sheet value of a sample, so that editing one row reruns that sample only."""
    return {k: ("" if v is None else v) for k, v in ROW[wildcards.sample].items()}


def library_modules(*modules):
    """The library modules ``modules`` import, directly or not (``from .x import``, also
    inside functions), themselves included."""
    found, pending = set(), list(modules)
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.add(current)
        text = (LIBRARY / f"{current}.py").read_text()
        named = re.findall(r"^\s*from \. import (\w+)", text, flags=re.M)
        pending += re.findall(r"^\s*from \.(\w+) import", text, flags=re.M)
        pending += [name for name in named if (LIBRARY / f"{name}.py").exists()]
    return found


def library_hash(*modules):
    """Hash of the library modules a stage runs (Snakemake does not track those): the ones
    named and every library module they import."""
    digest = hashlib.sha256()
    for name in sorted(library_modules(*modules)):
        digest.update((LIBRARY / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def image_header(path):
    """An image's header (cached: resources ask repeatedly; the checks read most already)."""
    if path not in HEADERS:
        from regflow.io import read_info

        HEADERS[path] = read_info(path)
    return HEADERS[path]


def image_megabytes(path):
    """Full-resolution size of an image in memory."""
    info = image_header(path)
    itemsize = pd.api.types.pandas_dtype(info.dtype).itemsize
    return info.shape[0] * info.shape[1] * info.n_channels * itemsize / 2**20


@job_function
def mem_mb_warp(wildcards, attempt):
    """Moving image + output of the fixed size (+ a third for the pyramid) + overhead."""
    row = ROW[wildcards.sample]
    moving = image_megabytes(row["moving"])
    fixed = image_megabytes(row["fixed"])
    return int((600 + 2 * moving + 1.5 * fixed) * attempt)


@job_function
def warp_threads(wildcards):
    """Two threads for a warp of at least 16 output tiles (whole slides), else one: below
    that, a thread pool gains nothing and a 2-thread job waits for two free cores."""
    row = ROW[wildcards.sample]
    height, width = image_header(row["fixed"]).shape
    tile = config["warp"]["tile"]
    return 2 if (height / tile) * (width / tile) >= 16 else 1


@job_function
def mem_mb_refine(wildcards, attempt):
    """A tile window per thread (a few dozen MiB each) and the node grid of the fine field
    (2 float64 + 1 weight per node, a node every few refinement px), with overhead."""
    row = ROW[wildcards.sample]
    height, width = image_header(row["fixed"]).shape
    nodes = height * width / max(config["refine"]["grid_step"], 1) ** 2
    return int((800 + 40 * nodes / 2**20) * attempt)


@job_function
def mem_mb_preprocess(wildcards, attempt):
    row = ROW[wildcards.sample]
    largest = max(image_megabytes(row["fixed"]), image_megabytes(row["moving"]))
    return int((800 + 6 * largest) * attempt)


def working_megapixels(path):
    """Pixels (2**20) of an image's working image (preprocess.max_size, or the working pixel
    size when the file states its own; see regflow.preprocess.working_scale)."""
    from regflow.preprocess import working_scale

    info = image_header(path)
    scale = working_scale(
        info.shape,
        config["preprocess"]["max_size"],
        info.pixel_size_um,
        config["preprocess"].get("pixel_size_um"),
    )
    return info.shape[0] * info.shape[1] * scale**2 / 2**20


@job_function
def mem_mb_stack(wildcards, attempt):
    """The solve holds every registration's coarse field (2 float32 per working pixel of its
    fixed section) and every section's working image (float32 + mask) at once, with
    overhead: 24 sections of 768² px and 64 registrations peaked at 0.83 GB (1.03 GB asked);
    100 sections of 1024² px with ~290 registrations ask ~4.0 GB."""
    links = CASES[wildcards.case]["links"]
    fields = sum(8 * working_megapixels(ROW[s]["fixed"]) for s in links)
    sections = {ROW[s][role] for s in links for role in ("fixed", "moving")}
    images = sum(5 * working_megapixels(path) for path in sections)
    return int((600 + 1.2 * (fields + images)) * attempt)


@job_function
def stack_inputs(wildcards):
    """The stack solve of a case: every registration's coarse transform (neighbours at
    distance 1 and 2), each section's working image, and the reference's."""
    info = CASES[wildcards.case]
    sections = [s for s in info["links"] if ROW[s]["link"] != "true"]
    anchor = ROW[sections[0]]["anchor"]
    return {
        "transforms": [
            rules.flow.output.transform.format(sample=s) for s in info["links"]
        ],
        "infos": [rules.flow.output.info.format(sample=s) for s in info["links"]],
        "working": [rules.preprocess.output.moving.format(sample=s) for s in sections],
        "reference": rules.preprocess.output.fixed.format(sample=anchor),
        "anchor_info": rules.preprocess.output.info.format(sample=anchor),
    }


def sample_outputs(sample, targets=False):
    """Every final output of one sample (``targets``: those ``all`` asks for, see
    all_outputs)."""
    names = [f"warped.{IMAGE}"]
    if not targets:
        names += ["transform.npz", "metrics.json", "qc.png"]
    if has_landmarks(sample, "moving"):
        names.append("landmarks_warped.csv")
    for direction, entry in ANNOTATIONS.items():
        if has_value(sample, entry["file"]):
            names.append(f"annotations_{direction}.geojson")
    names += [f"associated/{name}.{IMAGE}" for name in associated_names(sample)]
    if has_integrity(sample):
        names += ["integrity.tsv", "integrity.ome.tif", "integrity.png"]
    return [f"{OUTDIR}/{sample}/{name}" for name in names]


def all_outputs():
    """The targets of ``all``: every final output that no other target's job already needs
    (the summary needs every sample's metrics, so its QC job and figure; the warp needs the
    transform). Asking for those again changes nothing but costs Snakemake an edge per file
    when it plans: 6750 of 9752 for 750 cases of 4 images."""
    outputs = [f"{OUTDIR}/summary.tsv"]
    for sample in SECTIONS:
        outputs += sample_outputs(sample, targets=True)
    for case, info in CASES.items():
        outputs.append(f"{OUTDIR}/{case}/case_qc.png")
        if info["ordered"]:
            outputs.append(f"{OUTDIR}/{case}/volume.ome.zarr")
            if not ZARR:
                outputs.append(f"{OUTDIR}/{case}/volume.ome.tif")
        if info["merge_images"]:
            outputs.append(f"{OUTDIR}/{case}/merged.{IMAGE}")
        if info["integrity_images"]:
            outputs.append(f"{OUTDIR}/{case}/integrity.tsv")
    return outputs


@job_function
def refine_inputs(wildcards):
    """The reference and this image at full resolution, the coarse transform, and the
    reference's working image (its tissue mask), which in chain mode is the chain's first
    registration's fixed image, as for the QC."""
    sample = wildcards.sample
    anchor = ROW[sample]["anchor"]
    stack = ROW[sample]["stack"]
    return {
        "fixed": ROW[sample]["reference_path"],
        "moving": ROW[sample]["moving"],
        # serial sections: this section's transform from the case's stack solve
        "transform": (
            f"{OUTDIR}/{stack}/stack"
            if stack
            else rules.flow.output.transform.format(sample=sample)
        ),
        "info": rules.preprocess.output.info.format(sample=sample),
        "anchor_info": rules.preprocess.output.info.format(sample=anchor),
        "working": rules.preprocess.output.fixed.format(sample=anchor),
    }


def has_integrity(sample):
    """Integrity for rounds that share a nuclear channel: both images fluorescence."""
    row = ROW[sample]
    return all(
        str(row.get(f"{role}_modality") or "brightfield") == "fluorescence"
        for role in ("fixed", "moving")
    )


@job_function
def integrity_inputs(wildcards):
    sample = wildcards.sample
    anchor = ROW[sample]["anchor"]
    inputs = {
        "reference": ROW[sample]["reference_path"],
        "warped": rules.warp.output[0].format(sample=sample),
        "transform": rules.refine.output.transform.format(sample=sample),
        "info": rules.preprocess.output.info.format(sample=sample),
        "anchor_info": rules.preprocess.output.info.format(sample=anchor),
        "working": rules.preprocess.output.fixed.format(sample=anchor),
    }
    if has_value(sample, "fixed_cells"):
        inputs["cells"] = ROW[sample]["fixed_cells"]
    return inputs


@job_function
def qc_inputs(wildcards):
    # The reference at working resolution: this registration's fixed image, or in chain mode
    # that of the chain's first registration (the one whose fixed image is the reference).
    anchor = ROW[wildcards.sample]["anchor"]
    inputs = {
        "fixed": rules.preprocess.output.fixed.format(sample=anchor),
        "moving": rules.preprocess.output.moving.format(sample=wildcards.sample),
        "preprocess": rules.preprocess.output.info.format(sample=wildcards.sample),
        "rigid": rules.rigid.output[0].format(sample=wildcards.sample),
        "flow": rules.flow.output.info.format(sample=wildcards.sample),
        "transform": rules.refine.output.transform.format(sample=wildcards.sample),
        "refine": rules.refine.output.info.format(sample=wildcards.sample),
        # the full-resolution images and the reference's channel, for cell-level crops
        "fixed_image": ROW[wildcards.sample]["reference_path"],
        "moving_image": ROW[wildcards.sample]["moving"],
        "anchor_info": rules.preprocess.output.info.format(sample=anchor),
    }
    if has_landmarks(wildcards.sample, "fixed") and has_landmarks(
        wildcards.sample, "moving"
    ):
        inputs["fixed_landmarks"] = ROW[wildcards.sample]["fixed_landmarks"]
        inputs["moving_landmarks"] = ROW[wildcards.sample]["moving_landmarks"]
        inputs["landmarks_warped"] = rules.points.output[0].format(
            sample=wildcards.sample
        )
    stack = ROW[wildcards.sample]["stack"]
    if stack:  # serial sections: the evidence is judged against the neighbours
        inputs["stack"] = f"{OUTDIR}/{stack}/stack.json"
    if has_value(wildcards.sample, "moving_annotations"):  # drawn on the QC figure
        inputs["annotations_warped"] = (
            f"{OUTDIR}/{wildcards.sample}/annotations_warped.geojson"
        )
    return inputs


def write_summary_after_failure():
    """onerror: summary.tsv/png with every sample; a sample any of whose stages failed (its
    outputs are incomplete, e.g. the warp failed after QC) is failed, with its log's reason.
    """
    import json

    from regflow.qc import cohort_table, failure_reason, write_summary

    results, failures = {}, {}
    for sample in SECTIONS:
        metrics = Path(OUTDIR, sample, "metrics.json")
        complete = all(Path(p).exists() for p in sample_outputs(sample))
        results[sample] = json.loads(metrics.read_text()) if complete else None
        if results[sample] is None:
            logs = sorted(Path(OUTDIR, "logs").glob(f"*/{sample}.log"))
            reasons = [failure_reason(log.read_text(errors="replace")) for log in logs]
            failures[sample] = next((r for r in reasons if r), None)
    table = cohort_table(results, failures)
    Path(OUTDIR).mkdir(parents=True, exist_ok=True)
    target = Path(OUTDIR, "summary.tsv")
    write_summary(table, target, Path(OUTDIR, "summary.png"))
    failed = [row for row in table if row["status"] == "failed"]
    logger.error(
        f"{len(failed)} sample(s) failed; the others completed. Summary: {target}\n"
        + "\n".join(f"  {row['sample']}: {row['reason']}" for row in failed)
    )
