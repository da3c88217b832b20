import numpy as np
from PIL import Image

from pneumocnn import explain
from pneumocnn.core.metadata import INT8_FILE


def _blob_image(size, centre, background=90.0):
    yy, xx = np.mgrid[:size, :size]
    image = background + 140 * np.exp(
        -((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * (size / 8) ** 2)
    )
    return np.clip(image, 0, 255).astype(np.uint8)[..., np.newaxis]


def test_cli_writes_one_overlay_per_image_and_reports_bad_files(trained_run, tmp_path, capsys):
    folder = tmp_path / "xrays"
    folder.mkdir()
    Image.fromarray(_blob_image(64, (20, 40))[..., 0]).save(folder / "one.png")
    Image.fromarray(_blob_image(50, (10, 10))[..., 0]).convert("RGB").save(folder / "two.jpeg")
    (folder / "three.jpeg").write_bytes(b"broken")
    output = tmp_path / "cams"
    status = explain.main(
        [str(folder), "--model", str(trained_run / "best.keras"), "--output-dir", str(output)]
    )
    assert status == 1
    assert sorted(p.name for p in output.iterdir()) == ["one_gradcam.png", "two_gradcam.png"]
    assert "three.jpeg" in capsys.readouterr().err


def test_given_a_tflite_it_explains_the_keras_model_beside_it(exported_model, tmp_path):
    Image.fromarray(_blob_image(40, (20, 20))[..., 0]).save(tmp_path / "one.png")
    output = tmp_path / "cams"
    status = explain.main(
        [
            str(tmp_path / "one.png"),
            "--model",
            str(exported_model / INT8_FILE),
            "--output-dir",
            str(output),
        ]
    )
    assert status == 0
    assert [p.name for p in output.iterdir()] == ["one_gradcam.png"]


def test_a_tflite_without_its_keras_says_that_grad_cam_needs_it(exported_model, tmp_path, capsys):
    for name in (INT8_FILE, "pneumocnn.json"):
        (tmp_path / name).write_bytes((exported_model / name).read_bytes())
    status = explain.main([str(tmp_path), "--model", str(tmp_path / INT8_FILE)])
    assert status == 2
    assert "needs the float .keras" in capsys.readouterr().err


def test_an_empty_folder_is_an_error_not_a_silent_success(trained_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status = explain.main([str(tmp_path / "empty"), "--model", str(trained_run / "best.keras")])
    assert status == 1
    assert "No JPEG, PNG or DICOM images found" in capsys.readouterr().err


def test_a_refused_image_gets_no_overlay_and_its_reason(exported_model, tmp_path, capsys):
    Image.new("L", (64, 64), 255).save(tmp_path / "blank.png")
    Image.fromarray(_blob_image(40, (20, 20))[..., 0]).save(tmp_path / "film.png")
    output = tmp_path / "cams"
    status = explain.main(
        [str(tmp_path), "--model", str(exported_model / INT8_FILE), "--output-dir", str(output)]
    )
    assert status == 1
    assert [p.name for p in output.iterdir()] == ["film_gradcam.png"]
    assert "near-constant" in capsys.readouterr().err
