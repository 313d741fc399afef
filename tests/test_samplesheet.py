import numpy as np
import pandas as pd
from regflow.io import write_ome_tiff
from regflow.samplesheet import check_sample_sheet


def _images(tmp_path):
    write_ome_tiff(
        tmp_path / "f.ome.tif", np.zeros((3, 32, 32), np.uint8), ["R", "G", "B"], rgb=True
    )
    write_ome_tiff(tmp_path / "m.ome.tif", np.zeros((2, 32, 32), np.uint16), ["DAPI", "CD3"])
    (tmp_path / "lm.csv").write_text(",X,Y\n0,1,2\n1,3,4\n")
    (tmp_path / "lm3.csv").write_text("X,Y\n1,2\n3,4\n5,6\n")
    (tmp_path / "nolm.csv").write_text("a,b\n1,2\n")
    return str(tmp_path / "f.ome.tif"), str(tmp_path / "m.ome.tif")


def test_good_sheet_passes_with_landmark_count_warning(tmp_path):
    fixed, moving = _images(tmp_path)
    sheet = pd.DataFrame(
        [
            {
                "sample": "a",
                "fixed": fixed,
                "moving": moving,
                "moving_modality": "fluorescence",
                "moving_channel": "CD3",
                "fixed_landmarks": str(tmp_path / "lm.csv"),
                "moving_landmarks": str(tmp_path / "lm3.csv"),
            }
        ]
    )
    errors, warnings = check_sample_sheet(sheet)
    assert errors == []
    assert len(warnings) == 1 and "first 2 rows are paired" in warnings[0]


def test_all_problems_reported_at_once_naming_sample_and_column(tmp_path):
    fixed, moving = _images(tmp_path)
    sheet = pd.DataFrame(
        [
            {"sample": "dup", "fixed": fixed, "moving": moving, "moving_modality": "fluorescence"},
            {"sample": "dup", "fixed": fixed, "moving": moving, "moving_modality": "fluorescence"},
            {
                "sample": "missing",
                "fixed": str(tmp_path / "nope.tif"),
                "moving": moving,
                "moving_modality": "fluorescence",
            },
            {
                "sample": "badchannel",
                "fixed": fixed,
                "moving": moving,
                "moving_modality": "fluorescence",
                "moving_channel": "CD8",
            },
            {
                "sample": "badlm",
                "fixed": fixed,
                "moving": moving,
                "moving_modality": "fluorescence",
                "fixed_landmarks": str(tmp_path / "nolm.csv"),
            },
            {
                "sample": "../evil",
                "fixed": fixed,
                "moving": moving,
                "moving_modality": "fluorescence",
            },
        ]
    )
    errors, _ = check_sample_sheet(sheet)
    text = "\n".join(errors)
    assert "sample 'dup': column sample" in text
    assert "(sample 'missing', column fixed) not found" in text
    assert "sample 'badchannel': column moving_channel" in text and "['DAPI', 'CD3']" in text
    assert "sample 'badlm': column fixed_landmarks" in text and "missing column" in text
    assert "sample '../evil': column sample: unsafe id" in text


def test_job_processes_skip_file_checks_but_not_sheet_checks(tmp_path):
    """What a cluster job re-reads: no file is opened (the submitter checked them), but the
    sheet's own problems are still errors."""
    sheet = pd.DataFrame(
        [
            {"sample": "a", "fixed": str(tmp_path / "gone.tif"), "moving": "x.tif"},
            {"sample": "b", "fixed": "f.tif", "moving": "m.tif", "moving_modality": "xray"},
        ]
    )
    errors, _ = check_sample_sheet(sheet, check_files=False)
    assert len(errors) == 1 and "sample 'b': column moving_modality" in errors[0]
    errors, _ = check_sample_sheet(sheet)
    assert any("(sample 'a', column fixed) not found" in e for e in errors)


def test_unchanged_files_are_not_opened_again_changed_ones_are(tmp_path, monkeypatch):
    import os

    from regflow import samplesheet

    fixed, moving = _images(tmp_path)
    cache = tmp_path / "cache" / "headers.json"
    first = samplesheet.verify_images([fixed, moving, fixed], cache)
    assert set(first) == {fixed, moving} and first[moving].channel_names == ["DAPI", "CD3"]
    opened = []

    def spy(path):
        opened.append(path)
        return samplesheet.ImageInfo(str(path), (1, 1), 1, "uint8", ["C0"])

    monkeypatch.setattr(samplesheet, "verify_image", spy)
    again = samplesheet.verify_images([fixed, moving], cache)
    assert opened == [] and again == first  # the same headers, read from the cache
    # a file rewritten (new size and time) is opened again; a cut file would be refused
    write_ome_tiff(tmp_path / "m.ome.tif", np.ones((2, 48, 48), np.uint16), ["DAPI", "CD3"])
    os.utime(moving, ns=(1, 1))
    third = samplesheet.verify_images([fixed, moving], cache)
    assert opened == [moving] and third[fixed] == first[fixed]
