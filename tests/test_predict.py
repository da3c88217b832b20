import json

import numpy as np
from PIL import Image

from helpers import synthetic_xray
from pneumocnn import predict
from pneumocnn.metadata import INT8_FILE, KERAS_FILE


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
    for row in rows:
        assert row["label"] in ("NORMAL", "PNEUMONIA")
        assert 0 <= row["probability"] <= 1
        assert row["label"] == ("PNEUMONIA" if row["probability"] >= row["threshold"] else "NORMAL")


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
