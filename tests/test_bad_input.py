"""Bad input and faults: clear errors, nothing partial, one bad sample never sinks the cohort."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import snakemake_command
from regflow.io import read_info, write_ome_tiff

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


def run(workdir: Path, *args: str, background: bool = False):
    command = snakemake_command(workdir, "--cores", "2", *args)
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A good pair (from the example generator, 128 px) and material for bad ones."""
    folder = tmp_path_factory.mktemp("data")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/make_example_cohort.py"),
            "--outdir",
            str(folder),
            "--size",
            "128",
            "--sheet",
            str(folder / "example.tsv"),
        ],
        check=True,
    )
    return folder


def sheet(workdir: Path, data: Path, bad: dict, extra_config: str = "") -> None:
    """A sheet with the good sample and one (or more) bad ones; config pointing at it."""
    good = {
        "sample": "good",
        "fixed": str(data / "ihc_fixed.ome.tif"),
        "moving": str(data / "ihc_rigid_moving.ome.tif"),
        "fixed_channel": "hematoxylin",
        "moving_channel": "hematoxylin",
    }
    rows = [good] + (bad if isinstance(bad, list) else [bad])
    pd.DataFrame(rows).to_csv(workdir / "samples.tsv", sep="\t", index=False)
    (workdir / "config.yaml").write_text(f"samples: samples.tsv\noutdir: out\n{extra_config}")


def bad_row(name: str, data: Path, **values) -> dict:
    row = {
        "sample": name,
        "fixed": str(data / "ihc_fixed.ome.tif"),
        "moving": str(data / "ihc_rigid_moving.ome.tif"),
    }
    row.update(values)
    return row


# ---- problems found before any job runs -------------------------------------------------


VALIDATION_CASES = {
    "unknown modality": (
        {"moving_modality": "brightfeld"},
        "column moving_modality: unknown modality 'brightfeld'",
    ),
    "unknown channel keyword": (
        {"moving_channel": "hematoxilin"},
        "column moving_channel: channel 'hematoxilin' not found",
    ),
    "missing file": (
        {"moving": "/nonexistent/slide.ome.tif"},
        "file /nonexistent/slide.ome.tif (sample 'bad', column moving) not found",
    ),
    "unreadable header": ("garbage", "(sample 'bad', column moving) is truncated or corrupt"),
    # A cut copy is reported as such, never as a channel problem of its damaged metadata.
    "truncated OME-TIFF": ("TRUNCATED", "(sample 'bad', column moving) is truncated or corrupt"),
    "text file named .svs": ("TEXT_SVS", "(sample 'bad', column moving) is not a supported image"),
    "pixel size not a number": (
        {"moving_pixel_size_um": "fast"},
        "column moving_pixel_size_um: 'fast' is not a positive number",
    ),
    "channel not in OME": (
        {"moving": "FLUO", "moving_modality": "fluorescence", "moving_channel": "CD8"},
        "available channel names: ['DAPI', 'DAB-marker']",
    ),
    "landmarks without X/Y": ({"moving_landmarks": "NOXY"}, "column moving_landmarks"),
    "annotations not GeoJSON": ("BAD_GEOJSON", "column moving_annotations:"),
    "associated image of another size": (
        "SMALL_LABELS",
        "(sample 'bad', column moving_associated) is 32×32 px but the moving image is",
    ),
    "duplicate id": (
        {"sample": "good"},
        "sample 'good': column sample: the id appears more than once",
    ),
    "unsafe id": ({"sample": "../escape"}, "sample '../escape': column sample: unsafe id"),
    "reserved id": ({"sample": "logs"}, "sample 'logs': column sample: 'logs' is reserved"),
    "image over the size cap": ({}, "more than preprocess.max_pixels=10000"),
}


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
def test_validation_errors_name_sample_column_and_value(tmp_path, data, case):
    values, message = VALIDATION_CASES[case]
    extra = ""
    if values == "garbage":
        (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
        values = {"moving": str(tmp_path / "broken.tif")}
    elif values == "TRUNCATED":
        good = (data / "fluorescence_moving.ome.tif").read_bytes()
        (tmp_path / "cut.ome.tif").write_bytes(good[: len(good) // 2])
        values = {"moving": str(tmp_path / "cut.ome.tif"), "moving_channel": "DAPI",
                  "moving_modality": "fluorescence"}  # fmt: skip
    elif values == "BAD_GEOJSON":
        (tmp_path / "a.geojson").write_text('{"type": "Topology"}')
        values = {"moving_annotations": str(tmp_path / "a.geojson")}
    elif values == "SMALL_LABELS":
        write_ome_tiff(tmp_path / "labels.ome.tif", np.zeros((1, 32, 32), np.uint16), ["L"])
        values = {"moving_associated": str(tmp_path / "labels.ome.tif")}
    elif values == "TEXT_SVS":
        (tmp_path / "slide.svs").write_text("sample\tfixed\nnot an image\n")
        values = {"moving": str(tmp_path / "slide.svs")}
    values = {
        k: (str(data / "fluorescence_moving.ome.tif") if v == "FLUO" else v)
        for k, v in values.items()
    }
    if values.get("moving_landmarks") == "NOXY":
        (tmp_path / "noxy.csv").write_text("a,b\n1,2\n")
        values["moving_landmarks"] = str(tmp_path / "noxy.csv")
    if case == "image over the size cap":
        extra = "preprocess:\n  max_pixels: 10000\n"
    name = values.pop("sample", "bad")
    sheet(tmp_path, data, bad_row(name, data, **values), extra)
    result = run(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-3000:]
    if case == "truncated OME-TIFF":
        assert "not found; available" not in output  # never a misleading channel error
    if name not in ("good",):
        assert f"sample {name!r}" in output
    assert not (tmp_path / "out").exists(), "no job may run when the sheet is invalid"


def test_jpeg_with_ome_zarr_is_refused_before_any_job(tmp_path, data):
    sheet(tmp_path, data, [], "warp:\n  format: ome-zarr\n  compression: jpeg\n")
    result = run(tmp_path)
    assert result.returncode != 0
    assert "warp.compression: jpeg is for OME-TIFF output" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_all_sheet_problems_are_reported_at_once(tmp_path, data):
    sheet(
        tmp_path,
        data,
        [
            bad_row("a", data, moving="/nope.tif"),
            bad_row("b", data, moving_modality="fluoro"),
            bad_row("c", data, fixed_channel="eosine"),
        ],
    )
    result = run(tmp_path)
    output = result.stdout + result.stderr
    assert "has 3 problem(s)" in output
    for sample in ("a", "b", "c"):
        assert f"sample '{sample}'" in output


# ---- problems found at run time: the sample fails, the others finish --------------------


@pytest.fixture(scope="module")
def faulty_cohort(tmp_path_factory, data):
    """One run with a good sample and every run-time case; returns (workdir, result)."""
    workdir = tmp_path_factory.mktemp("faulty")
    fixed = str(data / "ihc_fixed.ome.tif")
    rgb = np.moveaxis(tifffile.imread(fixed), -1, 0)  # (3, Y, X) uint8

    # Corrupt: a complete pyramidal file whose smallest level decodes (so it passes the
    # checks before any job) but one full-resolution tile is garbage: the warp fails.
    big = np.kron(rgb, np.ones((1, 9, 9), np.uint8))  # 1152 px: two pyramid levels
    write_ome_tiff(workdir / "corrupt.ome.tif", big, ["R", "G", "B"], rgb=True, tile=256)
    with tifffile.TiffFile(workdir / "corrupt.ome.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    damaged = bytearray((workdir / "corrupt.ome.tif").read_bytes())
    damaged[offset : offset + count] = b"\x01" * count
    (workdir / "corrupt.ome.tif").write_bytes(damaged)
    # Blank scan.
    write_ome_tiff(
        workdir / "blank.ome.tif", np.full((3, 128, 128), 240, np.uint8), ["R", "G", "B"], rgb=True
    )
    # Float fluorescence with NaN and Inf pixels.
    fluo = tifffile.imread(data / "fluorescence_fixed.ome.tif").astype(np.float32)
    fluo[:, :10, :10] = np.nan
    fluo[:, 50, 50] = np.inf
    write_ome_tiff(workdir / "nan.ome.tif", fluo, ["DAPI", "DAB-marker"])
    # RGBA and single-channel (grayscale) brightfield PNGs.
    from skimage.io import imsave

    rgba = np.concatenate([rgb, np.full((1, *rgb.shape[1:]), 255, np.uint8)])
    imsave(workdir / "rgba.png", np.moveaxis(rgba, 0, -1), check_contrast=False)
    imsave(workdir / "gray.png", rgb[1], check_contrast=False)
    # A much larger moving image: the slide in a corner of a 1.75× canvas of glass.
    canvas = np.full((3, 224, 224), 255, np.uint8)
    canvas[:, 60:188, 40:168] = rgb
    write_ome_tiff(workdir / "large_canvas.ome.tif", canvas, ["R", "G", "B"], rgb=True)

    rows = [
        # 9× finer pixels than the fixed image: registered at level 1, warped from level 0
        bad_row(
            "corrupt",
            data,
            moving=str(workdir / "corrupt.ome.tif"),
            fixed_pixel_size_um="2.25",
            moving_pixel_size_um="0.25",
        ),  # fmt: skip
        bad_row("blank", data, moving=str(workdir / "blank.ome.tif")),
        bad_row(
            "nan_pixels",
            data,
            fixed=str(data / "fluorescence_fixed.ome.tif"),
            fixed_modality="fluorescence",
            moving=str(workdir / "nan.ome.tif"),
            moving_modality="fluorescence",
        ),
        bad_row("rgba", data, moving=str(workdir / "rgba.png")),
        bad_row("grayscale", data, moving=str(workdir / "gray.png")),
        bad_row("different_size", data, moving=str(workdir / "large_canvas.ome.tif")),
    ]
    sheet(workdir, data, rows)
    return workdir, run(workdir)


def _summary(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "out" / "summary.tsv", sep="\t").set_index("sample")


def test_run_fails_overall_but_the_good_sample_completes(faulty_cohort):
    workdir, result = faulty_cohort
    assert result.returncode != 0  # failures are never silent
    for name in ("warped.ome.tif", "metrics.json", "qc.png", "transform.npz"):
        assert (workdir / "out" / "good" / name).is_file()
    assert _summary(workdir).loc["good", "status"] in ("ok", "rigid_only")


@pytest.mark.parametrize(
    ("sample", "stage", "reason"),
    [("corrupt", "warp", "truncated or corrupt"), ("blank", "preprocess", "is blank (constant)")],
)
def test_failing_sample_has_reason_and_no_partial_outputs(faulty_cohort, sample, stage, reason):
    workdir, result = faulty_cohort
    summary = _summary(workdir)
    assert summary.loc[sample, "status"] == "failed"
    assert reason in summary.loc[sample, "reason"]
    log = (workdir / "out" / "logs" / stage / f"{sample}.log").read_text()
    assert f"FAILED sample={sample} stage={stage} reason=" in log
    assert reason in result.stdout + result.stderr
    folder = workdir / "out" / sample
    leftovers = list(folder.glob("*")) if folder.exists() else []
    if stage == "preprocess":  # nothing at all
        assert [p for p in leftovers if p.is_file() or any(p.iterdir())] == []
    else:  # the completed earlier stages stay (a rerun resumes); no partial warp output
        assert not (folder / "warped.ome.tif").exists()
        assert list(folder.glob(".warped*")) == []


@pytest.mark.parametrize("sample", ["nan_pixels", "rgba", "grayscale", "different_size"])
def test_awkward_but_valid_inputs_work(faulty_cohort, sample):
    workdir, _ = faulty_cohort
    summary = _summary(workdir)
    assert summary.loc[sample, "status"] in ("ok", "rigid_only"), summary.loc[sample, "reason"]
    warped = tifffile.imread(workdir / "out" / sample / "warped.ome.tif")
    assert np.isfinite(warped).all(), "never NaN in a written image"
    metrics = json.loads((workdir / "out" / sample / "metrics.json").read_text())
    assert metrics["similarity"]["final"]["ncc"] > 0.5


def test_different_size_recovers_the_offset(faulty_cohort):
    workdir, _ = faulty_cohort
    rigid = json.loads((workdir / "out" / "different_size" / "rigid.json").read_text())
    # The fixed slide itself sits at (x=40, y=60) in the larger canvas.
    assert abs(rigid["rotation_deg"]) < 0.5
    np.testing.assert_allclose(rigid["translation_px"], [40.0, 60.0], atol=1.0)


def test_rerun_after_fixing_completes_only_the_failed_sample(faulty_cohort, data):
    workdir, _ = faulty_cohort
    table = pd.read_csv(workdir / "samples.tsv", sep="\t")
    table = table[~table["sample"].isin(["corrupt"])]
    table.loc[table["sample"] == "blank", "moving"] = str(data / "ihc_rigid_moving.ome.tif")
    table.to_csv(workdir / "fixed.tsv", sep="\t", index=False)
    result = run(workdir, "--config", "samples=fixed.tsv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _summary(workdir).loc["blank", "status"] in ("ok", "rigid_only")


# ---- interrupts ---------------------------------------------------------------------------


def test_killed_warp_leaves_nothing_mistaken_for_finished(tmp_path, data):
    """SIGKILL the warp job while it works; the rerun redoes warp and the file is valid."""
    big = np.moveaxis(tifffile.imread(data / "ihc_rigid_moving.ome.tif"), -1, 0)
    from skimage.transform import resize

    big = (resize(np.moveaxis(big, 0, -1), (2048, 2048), order=1) * 255).astype(np.uint8)
    fixed = (
        resize(
            np.moveaxis(np.moveaxis(tifffile.imread(data / "ihc_fixed.ome.tif"), -1, 0), 0, -1),
            (2048, 2048),
            order=1,
        )
        * 255
    ).astype(np.uint8)
    write_ome_tiff(tmp_path / "fixed.ome.tif", np.moveaxis(fixed, -1, 0), ["R", "G", "B"], rgb=True)
    write_ome_tiff(tmp_path / "moving.ome.tif", np.moveaxis(big, -1, 0), ["R", "G", "B"], rgb=True)
    pd.DataFrame(
        [
            {
                "sample": "big",
                "fixed": str(tmp_path / "fixed.ome.tif"),
                "moving": str(tmp_path / "moving.ome.tif"),
            }
        ]
    ).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    (tmp_path / "config.yaml").write_text(
        "samples: samples.tsv\noutdir: out\nwarp:\n  order: 3\n  tile: 256\n"
    )
    process = run(tmp_path, background=True)
    warp_log = tmp_path / "out" / "logs" / "warp" / "big.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (warp_log.is_file() and "started" in warp_log.read_text()):
        time.sleep(0.05)
    assert warp_log.is_file(), "warp never started"
    time.sleep(0.3)
    victims = [pid for pid in _processes_in_group(process.pid) if "warp.py" in _cmdline(pid)]
    assert victims, "the warp job's process was not found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    first = process.communicate()[0]
    assert process.returncode != 0, first[-2000:]
    output = tmp_path / "out" / "big" / "warped.ome.tif"
    assert not output.exists(), "a killed warp must not leave a file under the output name"

    result = run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_info(output)
    assert info.shape == (2048, 2048) and info.n_channels == 3
    tifffile.imread(output)  # every tile decodes
    assert list(output.parent.glob(".*.tmp")) == [], "the killed writer's temporary file is gone"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _processes_in_group(group: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == group:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sample\tfixed\tmoving\n", "has no rows; add one row per image pair"),
        ("sample,fixed,moving\na,b,c\n", "must be tab-separated (TSV), not comma-separated"),
    ],
)
def test_malformed_sheet(tmp_path, content, message):
    (tmp_path / "samples.tsv").write_text(content)
    (tmp_path / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    result = run(tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
