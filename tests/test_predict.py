import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pneumocnn import predict
from pneumocnn.core.metadata import INT8_FILE, KERAS_FILE
from pneumocnn.data.images import IMAGE_EXTENSIONS
from pneumocnn.testing import synthetic_xray


def _images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name, mode, size in (
        ("a.png", "L", (40, 60)),
        ("b.jpeg", "RGB", (123, 77)),
        ("c.jpg", "L", (300, 300)),
        ("d.png", "RGBA", (20, 20)),
    ):
        pixels = synthetic_xray(rng, len(paths) % 2, size)
        Image.fromarray(pixels).convert(mode).save(folder / name)
        paths.append(folder / name)
    return paths


def test_predict_prints_one_json_line_per_image(exported_model, tmp_path, capsys):
    paths = _images(tmp_path / "xrays")
    status = predict.main(
        [str(tmp_path / "xrays"), "--model", str(exported_model / INT8_FILE), "--json"]
    )
    assert status == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == [str(p) for p in paths]
    *films, icon = rows  # d.png is 20x20 px: refused by the input guard, not classified
    for row in films:
        assert row["label"] in ("NORMAL", "PNEUMONIA")
        assert row["verdict"] in ("ok", "flagged") and isinstance(row["ood_score"], float)
        assert 0 <= row["probability"] <= 1
        assert row["label"] == ("PNEUMONIA" if row["probability"] >= row["threshold"] else "NORMAL")
    assert (icon["verdict"], icon["label"], icon["probability"]) == ("refused", "", None)
    assert icon["reason"].startswith("too small")


def test_an_int8_model_is_run_without_importing_tensorflow(exported_model, tmp_path):
    # The core install (`pip install pneumocnn`) has LiteRT and no TensorFlow: the command
    # must classify with a .tflite without importing it; a .keras does import it.
    image = _images(tmp_path / "films")[0]
    script = (
        "import sys\n"
        "from pneumocnn import predict\n"
        "code = predict.main([{image!r}, '--model', {model!r}, '--json'])\n"
        "assert code == 0, code\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    for model, heavy in ((INT8_FILE, "[]"), (KERAS_FILE, "['keras', 'tensorflow']")):
        code = script.format(image=str(image), model=str(exported_model / model))
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip().splitlines()[-1] == heavy


def test_a_keras_model_without_tensorflow_is_a_usage_error_naming_the_install(
    exported_model, tmp_path
):
    # The core install has no Keras: a .keras model is refused with the fix, not a traceback.
    image = _images(tmp_path / "films")[0]
    keras_model = str(exported_model / KERAS_FILE)
    script = (
        "import sys\n"
        "sys.modules['keras'] = None  # what an install without Keras gives: ImportError\n"
        "from pneumocnn import predict\n"
        f"sys.exit(predict.main([{str(image)!r}, '--model', {keras_model!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2
    assert 'pip install "pneumocnn[train]"' in done.stderr and ".tflite files only" in done.stderr
    assert "Traceback" not in done.stderr


def test_keras_and_int8_models_give_close_probabilities(exported_model, tmp_path, capsys):
    _images(tmp_path / "xrays")
    predict.main([str(tmp_path / "xrays"), "--model", str(exported_model / INT8_FILE), "--json"])
    int8 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (
        predict.main(
            [str(tmp_path / "xrays"), "--model", str(exported_model / KERAS_FILE), "--json"]
        )
        == 0
    )
    keras = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for a, b in zip(int8, keras, strict=True):
        assert a["verdict"] == b["verdict"]  # the same guard, from the same metadata
        if a["probability"] is not None:
            assert abs(a["probability"] - b["probability"]) < 0.05


def test_bad_file_gets_an_error_line_and_nonzero_exit_but_others_are_classified(
    exported_model, tmp_path, capsys
):
    good = _images(tmp_path / "xrays")[0]
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not an image")
    status = predict.main([str(bad), str(good), "--model", str(exported_model / INT8_FILE)])
    out = capsys.readouterr()
    assert status == 1
    assert "ERROR" in out.out and "broken.jpeg" in out.out
    assert str(good) in out.out.splitlines()[-1]
    assert "1 of 2 files could not be read" in out.err


def test_missing_model_gives_a_clear_error_and_exit_2(tmp_path, capsys):
    status = predict.main([str(tmp_path), "--model", str(tmp_path / "none.tflite")])
    assert status == 2
    assert "Model not found" in capsys.readouterr().err


def test_a_file_that_is_not_a_model_is_named_as_such(exported_model, tmp_path, capsys):
    # Regression: `--model x.json` blamed a SHA-256 mismatch.
    status = predict.main([str(tmp_path), "--model", str(exported_model / "pneumocnn.json")])
    assert status == 2
    err = capsys.readouterr().err
    assert "Expected a model file (.tflite or .keras)" in err and "SHA-256" not in err


def test_a_run_folder_without_a_threshold_is_refused_and_left_untouched(
    trained_run, tmp_path, capsys
):
    # Regression: predict chose a threshold and wrote threshold.json into the run folder.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("threshold.json", "eval"))
    before = sorted(p.name for p in run.iterdir())
    _images(tmp_path / "xrays")
    status = predict.main([str(tmp_path / "xrays"), "--model", str(run)])
    assert status == 2
    assert "pneumocnn.evaluate" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_an_empty_folder_exits_1_with_a_message(exported_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status = predict.main([str(tmp_path / "empty"), "--model", str(exported_model / INT8_FILE)])
    assert status == 1
    assert "No JPEG, PNG or DICOM images found" in capsys.readouterr().err


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_has_one_row_per_file_with_refused_and_unreadable_ones(
    exported_model, tmp_path, capsys
):
    paths = _images(tmp_path / "xrays")
    (tmp_path / "xrays" / "e.png").write_bytes(b"not an image")
    status = predict.main(
        [str(tmp_path / "xrays"), "--model", str(exported_model / INT8_FILE), "--format", "csv"]
    )
    assert status == 1
    rows = _csv_rows(capsys.readouterr().out)
    assert [row["path"] for row in rows] == [*map(str, paths), str(tmp_path / "xrays" / "e.png")]
    assert [row["verdict"] for row in rows][-2:] == ["refused", "unreadable"]
    assert rows[-2]["reason"].startswith("too small") and "e.png" in rows[-1]["reason"]
    assert {"P(NORMAL)", "P(PNEUMONIA)", "ood_score", "threshold_source"} <= set(rows[0])


def test_a_threshold_for_one_run_decides_and_is_recorded(exported_model, tmp_path, capsys):
    image = _images(tmp_path / "xrays")[0]
    model = ["--model", str(exported_model / INT8_FILE)]
    predict.main([str(image), *model, "--format", "json"])
    probability = json.loads(capsys.readouterr().out)["probability"]
    for threshold, label in (
        (min(probability + 0.01, 0.999), "NORMAL"),
        (max(probability - 0.01, 0.001), "PNEUMONIA"),
    ):
        assert (
            predict.main([str(image), *model, "--format", "csv", "--threshold", str(threshold)])
            == 0
        )
        (row,) = _csv_rows(capsys.readouterr().out)
        assert (row["label"], float(row["threshold"])) == (label, pytest.approx(threshold))
        assert row["threshold_source"] == "command line"


@pytest.mark.parametrize("value", ["0", "1", "1.5", "abc"])
def test_a_threshold_outside_zero_to_one_is_a_usage_error(exported_model, tmp_path, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path), "--threshold", value])
    assert exit_info.value.code == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err


def test_the_table_shows_the_verdict_next_to_the_label(exported_model, tmp_path, capsys):
    _images(tmp_path / "xrays")
    assert predict.main([str(tmp_path / "xrays"), "--model", str(exported_model / INT8_FILE)]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert "verdict" in header and "OOD" in header
    assert "refused" in lines[-1] and "too small" in lines[-1]


def _dicom(path, pixels):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)


def test_a_clinic_folder_of_films_a_photo_and_a_blank_goes_through_csv(
    exported_model, tmp_path, capsys
):
    # Issue #17's "done when": films get labels with an OOD score; the photo and the blank are
    # refused with reasons; nothing crashes.
    folder = tmp_path / "clinic"
    folder.mkdir()
    rng = np.random.default_rng(3)
    films = {"film1.jpeg": "L", "film2.png": "L", "film3.jpg": "RGB", "film4.png": "I;16"}
    for name, mode in films.items():
        pixels = synthetic_xray(rng, len(name) % 2, (90, 110))
        image = Image.fromarray(pixels)
        if mode == "I;16":
            image = Image.fromarray(pixels.astype(np.uint16) * 257)
        image.convert(mode if mode != "I;16" else "I;16").save(folder / name)
    if ".dcm" in IMAGE_EXTENSIONS:  # DICOM in folder walks (issue #17, the robust branch)
        _dicom(folder / "film5.dcm", synthetic_xray(rng, 1, (96, 96)))
        films["film5.dcm"] = "DICOM"
    photo = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((320, 240))
    photo.save(folder / "photo.jpeg")
    Image.new("L", (200, 160), 255).save(folder / "blank.png")
    status = predict.main(
        [str(folder), "--model", str(exported_model / INT8_FILE), "--format", "csv"]
    )
    assert status == 0
    rows = {row["path"].split("/")[-1]: row for row in _csv_rows(capsys.readouterr().out)}
    assert set(rows) == {*films, "photo.jpeg", "blank.png"}
    for name in films:
        assert rows[name]["label"] in ("NORMAL", "PNEUMONIA"), rows[name]
        assert rows[name]["verdict"] in ("ok", "flagged")
        assert float(rows[name]["ood_score"]) >= 0
    assert rows["photo.jpeg"]["verdict"] == "refused" and rows["photo.jpeg"]["label"] == ""
    assert "strongly coloured" in rows["photo.jpeg"]["reason"]
    assert rows["blank.png"]["verdict"] == "refused" and rows["blank.png"]["label"] == ""
    assert "near-constant" in rows["blank.png"]["reason"]


def test_threshold_help_does_not_claim_every_default_threshold_was_chosen_on_validation():
    # The bug: the help said the default was "chosen on validation"; the shipped model's
    # threshold is site-calibrated (threshold_rule "target_sensitivity=0.96 on test").
    from pneumocnn.core.locations import default_model_dir
    from pneumocnn.core.metadata import load_metadata

    text = " ".join(predict.build_parser().format_help().split())
    assert "site-calibrated" in text and "threshold_rule" in text
    assert "on test" in load_metadata(default_model_dir() / "pneumocnn.json")["threshold_rule"]
