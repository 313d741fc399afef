import functools
import hashlib
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

# The rule scripts' library, also used here to check the sample sheet before any job runs.
sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
from regflow.samplesheet import check_sample_sheet  # noqa: E402

validate(config, schema="../config/schemas/config.schema.yaml")

OUTDIR = config["outdir"].rstrip("/")
LIBRARY = Path(workflow.basedir) / "scripts" / "regflow"


def load_samples(path):
    if not Path(path).is_file():
        raise ValueError(
            f"sample sheet {path} not found; set `samples:` in the config or pass "
            "--config samples=PATH"
        )
    table = pd.read_csv(path, sep="\t", dtype=str, comment="#", skip_blank_lines=True)
    table.columns = [c.strip() for c in table.columns]
    table = table.apply(lambda column: column.str.strip())
    if "sample" not in table.columns:
        comma = len(table.columns) == 1 and "," in table.columns[0]
        hint = (
            "; the sheet must be tab-separated (TSV), not comma-separated"
            if comma
            else ""
        )
        raise ValueError(
            f"sample sheet {path}: no column 'sample'; found {list(table.columns)}{hint}"
        )
    if table.empty:
        raise ValueError(f"sample sheet {path} has no rows; add one row per image pair")
    return table


samples = load_samples(config["samples"])
# All problems at once (ids, files, headers, channels, landmarks), then the schema's defaults.
# Cluster job processes re-read the sheet: the files were checked before submission.
_errors, _warnings = check_sample_sheet(
    samples,
    config["preprocess"]["max_pixels"],
    check_files=workflow.is_main_process,
)
for _warning in _warnings if workflow.is_main_process else []:
    logger.warning(f"sample sheet {config['samples']}: {_warning}")
if _errors:
    raise ValueError(
        f"sample sheet {config['samples']} has {len(_errors)} problem(s):\n  - "
        + "\n  - ".join(_errors)
    )
validate(samples, schema="../config/schemas/samples.schema.yaml")
samples = samples.set_index("sample", drop=False)


def sample_value(column, default=""):
    """Input/params function: a sample-sheet cell (default when empty or absent)."""

    def get(wildcards):
        value = samples.loc[wildcards.sample].get(column)
        return default if value is None or pd.isna(value) else value

    return get


def has_landmarks(sample, role):
    value = samples.loc[sample].get(f"{role}_landmarks")
    return value is not None and not pd.isna(value) and value != ""


def sample_row(wildcards):
    """Every sheet value of a sample, so that editing one row reruns that sample only."""
    row = samples.loc[wildcards.sample]
    return {k: ("" if pd.isna(v) else v) for k, v in row.items()}


def library_hash(*modules):
    """Hash of the library modules a stage imports (Snakemake does not track those)."""
    digest = hashlib.sha256()
    for module in sorted(modules):
        digest.update((LIBRARY / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def image_header(path):
    """An image's header (cached: resources ask repeatedly)."""
    from regflow.io import read_info

    return read_info(path)


def image_megabytes(path):
    """Full-resolution size of an image in memory."""
    info = image_header(path)
    itemsize = pd.api.types.pandas_dtype(info.dtype).itemsize
    return info.shape[0] * info.shape[1] * info.n_channels * itemsize / 2**20


def mem_mb_warp(wildcards, attempt):
    """Moving image + output of the fixed size (+ a third for the pyramid) + overhead."""
    row = samples.loc[wildcards.sample]
    moving = image_megabytes(row["moving"])
    fixed = image_megabytes(row["fixed"])
    return int((600 + 2 * moving + 1.5 * fixed) * attempt)


def warp_threads(wildcards):
    """Two threads for a warp of at least 16 output tiles (whole slides), else one: below
    that, a thread pool gains nothing and a 2-thread job waits for two free cores."""
    row = samples.loc[wildcards.sample]
    height, width = image_header(row["fixed"]).shape
    tile = config["warp"]["tile"]
    return 2 if (height / tile) * (width / tile) >= 16 else 1


def mem_mb_preprocess(wildcards, attempt):
    row = samples.loc[wildcards.sample]
    largest = max(image_megabytes(row["fixed"]), image_megabytes(row["moving"]))
    return int((800 + 6 * largest) * attempt)


def sample_outputs(sample):
    """Every final output of one sample."""
    names = ["warped.ome.tif", "transform.npz", "metrics.json", "qc.png"]
    if has_landmarks(sample, "moving"):
        names.append("landmarks_warped.csv")
    return [f"{OUTDIR}/{sample}/{name}" for name in names]


def all_outputs():
    outputs = [f"{OUTDIR}/summary.tsv", f"{OUTDIR}/summary.png"]
    for sample in samples.index:
        outputs += sample_outputs(sample)
    return outputs


def qc_inputs(wildcards):
    inputs = {
        "fixed": rules.preprocess.output.fixed.format(sample=wildcards.sample),
        "moving": rules.preprocess.output.moving.format(sample=wildcards.sample),
        "preprocess": rules.preprocess.output.info.format(sample=wildcards.sample),
        "rigid": rules.rigid.output[0].format(sample=wildcards.sample),
        "flow": rules.flow.output.info.format(sample=wildcards.sample),
        "transform": rules.flow.output.transform.format(sample=wildcards.sample),
    }
    if has_landmarks(wildcards.sample, "fixed") and has_landmarks(
        wildcards.sample, "moving"
    ):
        inputs["fixed_landmarks"] = samples.loc[wildcards.sample, "fixed_landmarks"]
        inputs["moving_landmarks"] = samples.loc[wildcards.sample, "moving_landmarks"]
        inputs["landmarks_warped"] = rules.points.output[0].format(
            sample=wildcards.sample
        )
    return inputs


def write_summary_after_failure():
    """onerror: summary.tsv/png with every sample; a sample any of whose stages failed (its
    outputs are incomplete, e.g. the warp failed after QC) is failed, with its log's reason.
    """
    import json

    from regflow.qc import cohort_table, failure_reason, write_summary

    results, failures = {}, {}
    for sample in samples.index:
        metrics = Path(OUTDIR, sample, "metrics.json")
        complete = all(Path(p).is_file() for p in sample_outputs(sample))
        results[sample] = json.loads(metrics.read_text()) if complete else None
        if results[sample] is None:
            logs = sorted(Path(OUTDIR, "logs").glob(f"*/{sample}.log"))
            reasons = [failure_reason(log.read_text(errors="replace")) for log in logs]
            failures[sample] = next((r for r in reasons if r), None)
    table = cohort_table(results, failures)
    Path(OUTDIR).mkdir(parents=True, exist_ok=True)
    target = Path(OUTDIR, "summary.tsv")
    write_summary(table, target, Path(OUTDIR, "summary.png"))
    failed = table.loc[table["status"] == "failed", ["sample", "reason"]]
    logger.error(
        f"{len(failed)} sample(s) failed; the others completed. Summary: {target}\n"
        + "\n".join(f"  {row.sample}: {row.reason}" for row in failed.itertuples())
    )
