"""Cases: many images of one tissue onto one reference, directly or along a chain."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from helpers import planned_jobs, run_snakemake
from regflow.cases import SheetError, from_images, from_pairs
from regflow.example import make_round_case, make_serial_case
from regflow.io import read_image
from regflow.transform import Transform, compose


def _sheet(rows):
    return pd.DataFrame(rows, dtype=str)


def _image(case, image, reference="false", order="", **extra):
    return {"case": case, "image": image, "path": f"{image}.tif", "reference": reference,
            "order": order} | extra  # fmt: skip


def test_images_sheet_problems_name_case_image_and_column():
    sheet = _sheet(
        [
            _image("c1", "a", "true"),
            _image("c1", "b", "true"),  # two references
            _image("c2", "x"),  # none
            _image("c2", "y"),
            _image("c3", "he", "true"),
            _image("c3", "he"),  # duplicate id
            _image("c4", "../up", "true"),
            _image("c4", "ok", reference="maybe"),
            _image("logs", "he", "true"),  # the log folder's name
            _image("logs", "flow"),  # a stage folder's name
        ]
    )
    with pytest.raises(SheetError) as error:
        from_images(sheet)
    text = "\n".join(error.value.errors)
    assert "case 'c1': column reference: 2 images marked as reference ['a', 'b']" in text
    assert "case 'c2': column reference: 0 images marked" in text
    assert "case 'c3', image 'he': column image: appears more than once" in text
    assert "case 'c4', image '../up': column image: unsafe id" in text
    assert "case 'c4', image 'ok': column reference: 'maybe' is not true or false" in text
    assert "case 'logs': column case: 'logs' is reserved" in text
    assert "case 'logs', image 'flow': column image: 'flow' is reserved" in text


def test_chain_mode_needs_an_order_and_links_each_image_to_its_neighbour():
    sheet = _sheet([_image("c", "s1", order="1"), _image("c", "s2"),
                    _image("c", "s3", "true", order="3")])  # fmt: skip
    with pytest.raises(SheetError, match=r"chain mode \(cases.chain\) needs .* \['s2'\]"):
        from_images(sheet, chain=True)
    # the reference in the middle: both directions walk toward it
    sheet = _sheet([_image("c", f"s{i}", "true" if i == 3 else "false", order=str(i))
                    for i in (5, 1, 2, 3, 4)])  # fmt: skip
    model = from_images(sheet, chain=True)
    chain = model[model["link"] != "true"].set_index("image")
    assert chain.loc["s2", "fixed"] == "s3.tif" and chain.loc["s1", "fixed"] == "s2.tif"
    assert chain.loc["s5", "fixed"] == "s4.tif" and chain.loc["s4", "fixed"] == "s3.tif"
    assert chain.loc["s5", "anchor"] == "c/s4" and chain.loc["s1", "anchor"] == "c/s2"
    assert set(chain["stack"]) == {"c"}
    assert list(chain.index) == ["s1", "s2", "s4", "s5"]  # the stack's order, not the sheet's
    assert set(chain["fixed_landmarks"].fillna("")) == {""}  # always the reference's
    # the stack's extra links: two steps toward the reference, and across it
    links = model[model["link"] == "true"].set_index("sample")
    assert sorted(links.index) == ["c/s1~s3", "c/s4~s2", "c/s5~s3"]
    assert links.loc["c/s1~s3", "fixed"] == "s3.tif" and links.loc["c/s1~s3", "moving"] == "s1.tif"
    assert links.loc["c/s4~s2", "fixed"] == "s2.tif" and links.loc["c/s4~s2", "anchor"] == "c/s2"
    assert links["fixed_landmarks"].isna().all()  # registration stages only
    direct = from_images(sheet).set_index("image")
    assert (direct["fixed"] == "s3.tif").all() and (direct["stack"] == "").all()
    assert list(direct.index) == ["s5", "s1", "s2", "s4"]  # sheet order
    assert list(direct["sample"]) == ["c/s5", "c/s1", "c/s2", "c/s4"]


def test_a_pair_is_a_case_of_two_images():
    pairs = _sheet([{"sample": "p1", "fixed": "f.tif", "moving": "m.tif"}])
    model = from_pairs(pairs).iloc[0]
    assert model["sample"] == "p1" and model["case"] == "p1"
    assert model["reference_path"] == "f.tif" and model["anchor"] == "p1"
    assert model["stack"] == "" and model["link"] == ""


def _random_transform(rng, shape, amplitude):
    angle = rng.uniform(-0.3, 0.3)
    cos, sin = np.cos(angle), np.sin(angle)
    affine = np.array([[cos, -sin, rng.uniform(-20, 20)], [sin, cos, rng.uniform(-20, 20)],
                       [0, 0, 1]])  # fmt: skip
    grid = (40, 50)
    field = np.stack([np.outer(np.sin(np.linspace(0, 3, grid[0])),
                               np.cos(np.linspace(0, 2, grid[1]))) * amplitude] * 2)  # fmt: skip
    sy, sx = grid[0] / shape[0], grid[1] / shape[1]
    to_grid = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return Transform(affine, field.astype(np.float32), to_grid, shape, shape)


def test_composition_equals_applying_one_after_the_other():
    rng = np.random.default_rng(3)
    shape = (400, 500)
    first, second = _random_transform(rng, shape, 6.0), _random_transform(rng, shape, 4.0)
    composed = compose(first, second)
    points = rng.uniform(20, 380, (200, 2))
    expected = second.fixed_to_moving(first.fixed_to_moving(points))
    # exact at the grid nodes, bilinear between them: well under a pixel for smooth fields
    assert np.abs(composed.fixed_to_moving(points) - expected).max() < 0.2
    # purely global parts compose exactly
    a = Transform.from_affine(first.affine, shape, shape)
    b = Transform.from_affine(second.affine, shape, shape)
    np.testing.assert_allclose(
        compose(a, b).fixed_to_moving(points), b.fixed_to_moving(a.fixed_to_moving(points))
    )
    # a global first step followed by a deformable one keeps the deformation
    mixed = compose(a, second)
    assert mixed.has_displacement
    expected = second.fixed_to_moving(a.fixed_to_moving(points))
    assert np.abs(mixed.fixed_to_moving(points) - expected).max() < 0.2


# ---- the workflow on generated cases ----------------------------------------------------


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """A 4-round fluorescence case and a 4-section serial case; direct and chain runs."""
    workdir = tmp_path_factory.mktemp("cases")
    rounds, truth = make_round_case(workdir / "data", size=256)
    serial = make_serial_case(workdir / "data", size=256)
    pd.concat([rounds, serial]).to_csv(workdir / "images.tsv", sep="\t", index=False)
    (workdir / "config.yaml").write_text("samples: images.tsv\noutdir: out\n")
    run_snakemake(workdir, "--cores", "2")
    return workdir, truth


@pytest.mark.workflow
def test_rounds_report_every_reference_cell_in_long_form_and_lose_none(cases):
    """The reference's nucleus labels give every round's integrity: one row per cell and
    round in the case's table; intact rounds lose (almost) nothing and are not flagged."""
    workdir, _ = cases
    table = pd.read_csv(workdir / "out" / "rounds" / "integrity.tsv", sep="\t")
    assert list(table.columns) == ["cell", "x", "y", "image", "corr", "intensity_ratio", "lost"]
    per_round = table.groupby("image")["cell"].nunique()
    assert sorted(per_round.index) == ["r2", "r3", "r4"]
    labels = read_image(workdir / "data" / "rounds_r1_nuclei.ome.tif")[0]
    assert (per_round == len(np.unique(labels[labels > 0]))).all()
    assert table.groupby("image")["lost"].mean().max() <= 0.02
    summary = pd.read_csv(workdir / "out" / "summary.tsv", sep="\t")
    rounds = summary[summary["case"] == "rounds"]
    assert rounds["tissue_lost_fraction"].notna().all()
    assert not rounds["flags"].fillna("").str.contains("tissue_loss").any()
    # serial sections in brightfield share no nuclear channel: no integrity
    assert summary.loc[summary["case"] == "serial", "tissue_lost_fraction"].isna().all()


def _errors_px(reference_csv, mapped_csv):
    fixed = pd.read_csv(reference_csv)[["X", "Y"]].to_numpy()
    mapped = pd.read_csv(mapped_csv)[["X", "Y"]].to_numpy()
    return np.hypot(*(mapped - fixed).T)


@pytest.mark.workflow
def test_rounds_register_within_half_a_pixel_and_merge_to_the_truth(cases):
    workdir, truth = cases
    out = workdir / "out" / "rounds"
    reference_landmarks = workdir / "data" / "rounds_r1_landmarks.csv"
    for image in ("r2", "r3", "r4"):
        errors = _errors_px(reference_landmarks, out / image / "landmarks_warped.csv")
        assert np.isfinite(errors).all() and errors.max() < 0.5, (image, errors)
        for name in ("warped.ome.tif", "transform.npz", "metrics.json", "qc.png"):
            assert (out / image / name).is_file()
    with tifffile.TiffFile(out / "merged.ome.tif") as tif:
        merged = tif.series[0].asarray()
        names = re.findall(r'<Channel[^>]* Name="([^"]+)"', tif.ome_metadata)
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
    expected_names = [f"r{i} {c}" for i in range(1, 5) for c in ("DAPI", f"marker{i}")]
    assert names == expected_names and len(set(names)) == 8  # every DAPI distinct
    assert merged.shape == (8, 256, 256) and merged.dtype == np.uint16
    inner = (slice(32, -32), slice(32, -32))  # away from the borders no round covers
    truths = [truth[f"r{i}"][c][inner].astype(float).ravel() for i in range(1, 5) for c in (0, 1)]
    for index in range(8):
        got = merged[index][inner].astype(float).ravel()
        if index < 2:  # round 1 is the reference itself
            np.testing.assert_array_equal(got, truths[index])
            continue
        # the others went through two interpolations (rendering, warping back): close to
        # their own truth, and far closer to it than to any other channel (no mix-up)
        assert np.median(np.abs(got - truths[index])) <= 0.02 * np.ptp(truths[index])
        correlations = [np.corrcoef(got, t)[0, 1] for t in truths]
        assert correlations[index] > 0.95, (index, correlations)
        if index % 2:  # markers differ per round (DAPI is the same section every round)
            others = [c for i, c in enumerate(correlations) if i != index and i % 2]
            assert correlations[index] > max(others) + 0.1, (index, correlations)
    assert (out / "case_qc.png").stat().st_size > 20_000
    summary = pd.read_csv(workdir / "out" / "summary.tsv", sep="\t")
    assert {"sample", "case", "image"} <= set(summary.columns)
    assert len(summary) == 6 and set(summary["case"]) == {"rounds", "serial"}


@pytest.mark.workflow
def test_chain_mode_composes_serial_sections_to_the_reference(cases):
    """The plain chain (cases.solve: chain) composes the neighbour registrations exactly:
    this case's sections accumulate their deformation step by step (a genuine trend, which
    the stack solve's drift removal is not for)."""
    workdir, _ = cases
    (workdir / "chain.yaml").write_text(
        "samples: images.tsv\noutdir: out_chain\ncases:\n  chain: true\n  solve: chain\n"
    )
    run_snakemake(workdir, "--cores", "2", "--configfile", str(workdir / "chain.yaml"))
    out = workdir / "out_chain" / "serial"
    reference = pd.read_csv(workdir / "data" / "serial_s1_landmarks.csv")[["X", "Y"]].to_numpy()
    for image in ("s2", "s3", "s4"):
        transform = Transform.load(out / image / "transform.npz")
        truth = pd.read_csv(workdir / "data" / f"serial_{image}_landmarks.csv")[["X", "Y"]]
        # the composed transform maps reference points where the accumulated steps put them
        errors = np.hypot(*(transform.fixed_to_moving(reference) - truth.to_numpy()).T)
        assert errors.max() < 0.5, (image, errors)
        mapped = _errors_px(workdir / "data" / "serial_s1_landmarks.csv",
                            out / image / "landmarks_warped.csv")  # fmt: skip
        assert mapped.max() < 0.5, (image, mapped)
    report = json.loads((out / "stack.json").read_text())
    assert report["solve"] == "chain" and report["order"] == ["s1", "s2", "s3", "s4"]
    # the extra link s3 → s1 ran its registration stages only
    assert (out / "s3~s1" / "flow" / "transform.npz").exists()
    assert not (out / "s3~s1" / "warped.ome.tif").exists()
    # with TIFF outputs (the default) the one volume job also writes the OME-TIFF z-stack:
    # the same planes as the OME-Zarr, in order
    with tifffile.TiffFile(out / "volume.ome.tif") as tif:
        assert tif.series[0].axes == "ZYXS"
        stack = np.moveaxis(tif.series[0].asarray(), -1, 0)  # (c, z, y, x)
    volume = zarr.open_group(str(out / "volume.ome.zarr"), mode="r")["0"]
    assert stack.shape == volume.shape and stack.shape[1] == 4
    np.testing.assert_array_equal(stack, volume[:])
    warped = tifffile.imread(out / "s3" / "warped.ome.tif")
    np.testing.assert_array_equal(stack[:, 2], np.moveaxis(warped, -1, 0))


@pytest.mark.workflow
def test_adding_an_image_reruns_that_image_and_the_case_outputs_only(cases):
    workdir, _ = cases
    sheet = pd.read_csv(workdir / "images.tsv", sep="\t", dtype=str)
    extra = sheet[(sheet["case"] == "rounds") & (sheet["image"] == "r4")].copy()
    extra["image"] = "r5"
    pd.concat([sheet, extra]).to_csv(workdir / "more.tsv", sep="\t", index=False)
    jobs = planned_jobs(workdir, "--config", "samples=more.tsv")
    # rounds share a nuclear channel: the new round gets its integrity too
    per_image = {"preprocess", "rigid", "flow", "refine", "warp", "points", "qc", "integrity"}
    assert {rule: jobs[rule] for rule in per_image} == dict.fromkeys(per_image, 1)
    assert jobs["merge"] == 1 and jobs["case_qc"] == 1 and jobs["summary"] == 1
    assert set(jobs) == per_image | {"merge", "case_qc", "case_integrity", "summary"}
    assert planned_jobs(workdir) == {}  # the original sheet: nothing to do


@pytest.mark.workflow
def test_images_sheet_validation_names_case_image_and_column(cases, tmp_path):
    workdir, _ = cases
    sheet = pd.read_csv(workdir / "images.tsv", sep="\t", dtype=str)
    sheet.loc[(sheet["case"] == "rounds") & (sheet["image"] == "r3"), "channel"] = "CD99"
    sheet.loc[(sheet["case"] == "serial") & (sheet["image"] == "s2"), "path"] = "/no/such.svs"
    sheet.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    (tmp_path / "config.yaml").write_text(f"samples: {tmp_path / 'bad.tsv'}\noutdir: out\n")
    result = run_snakemake(tmp_path, "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "case 'rounds', image 'r3': column channel: channel 'CD99' not found" in output
    assert "file /no/such.svs (case 'serial', image 's2', column path) not found" in output
    assert not (tmp_path / "out").exists()


def test_metrics_name_the_registration(cases):
    workdir, _ = cases
    metrics = json.loads((workdir / "out" / "serial" / "s3" / "metrics.json").read_text())
    assert metrics["sample"] == "serial/s3" and metrics["status"] in ("ok", "rigid_only")


def test_case_annotations_go_both_ways_between_each_image_and_the_reference():
    sheet = _sheet([_image("c", "he", "true", "1", annotations="he.geojson"),
                    _image("c", "ihc", order="2", annotations="ihc.geojson", associated="m.tif"),
                    _image("c", "ki67", order="3")])  # fmt: skip
    for chain in (False, True):
        model = from_images(sheet, chain=chain)
        model = model[model["link"] != "true"].set_index("image")
        # the reference's annotations go to every image, each image's to the reference
        assert list(model["fixed_annotations"]) == ["he.geojson", "he.geojson"]
        assert model.loc["ihc", "moving_annotations"] == "ihc.geojson"
        assert pd.isna(model.loc["ki67", "moving_annotations"])
        assert model.loc["ihc", "moving_associated"] == "m.tif"
        assert "fixed_associated" not in model.columns


def test_thickness_is_one_positive_value_per_case_and_links_reach_further_when_asked():
    sheet = _sheet([_image("c", f"s{i}", "true" if i == 3 else "false", order=str(i),
                           thickness_um="5" if i != 2 else "4") for i in range(1, 6)]
                   + [_image("d", "a", "true", order="1", thickness_um="-3"),
                      _image("d", "b", order="2", thickness_um="-3")])  # fmt: skip
    with pytest.raises(SheetError) as error:
        from_images(sheet, chain=True)
    text = "\n".join(error.value.errors)
    assert "case 'c': column thickness_um: ['4', '5'] differ" in text
    assert "case 'd': column thickness_um: '-3' is not a positive number" in text
    sheet = _sheet([_image("c", f"s{i}", "true" if i == 3 else "false", order=str(i))
                    for i in range(1, 8)])  # fmt: skip
    model = from_images(sheet, chain=True, link_distance=3)
    links = sorted(model.loc[model["link"] == "true", "sample"])
    # two and three steps toward the reference (s3) on each side, and across it (1+1, 1+2,
    # 2+1), each onto the section nearer the reference; s7, farther than 3, also onto s3
    assert links == ["c/s1~s3", "c/s1~s4", "c/s4~s2", "c/s5~s2", "c/s5~s3", "c/s6~s3",
                     "c/s6~s4", "c/s7~s3", "c/s7~s4", "c/s7~s5"], links  # fmt: skip
    # only s7's link onto the reference is a far one (its flow smooths the images first)
    far = model.loc[model["far_link"] == "true", "sample"].tolist()
    assert far == ["c/s7~s3"], far
