import json

import pytest

from helpers import dead_process_id, killed_after_the_first_rename
from pneumocnn import evaluate
from pneumocnn.adaptation.calibration import calibrate, format_calibration
from pneumocnn.evaluation import scoring


def test_evaluating_a_run_on_val_stores_the_threshold_and_writes_metrics_and_plots(
    trained_run, tmp_path
):
    output = tmp_path / "eval"
    assert evaluate.main([str(trained_run), "--split", "val", "--output-dir", str(output)]) == 0
    stored = json.loads((trained_run / "threshold.json").read_text())
    assert stored["chosen_on"] == "val" and stored["rule"] == "youden"
    report = json.loads((output / "metrics.json").read_text())
    assert report["at_threshold"]["threshold"] == stored["threshold"]
    assert report["at_0.5"]["threshold"] == 0.5
    for key in ("accuracy", "sensitivity", "specificity", "confusion_matrix", "per_class"):
        assert key in report["at_threshold"]
    for name in (
        "confusion_matrix.png",
        "roc.png",
        "precision_recall.png",
        "reliability.png",
        "training_curves.png",
    ):
        assert (output / name).stat().st_size > 1000, name


def test_test_split_without_a_test_folder_says_how_to_fix_it(trained_run, tmp_path, capsys):
    status = evaluate.main([str(trained_run), "--split", "test", "--output-dir", str(tmp_path)])
    assert status == 2
    assert "has no test/ folder" in capsys.readouterr().err


def test_missing_model_gives_a_clear_error(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / "nothing.tflite")]) == 2
    assert "Model not found" in capsys.readouterr().err


def test_exported_int8_model_is_scored_on_a_test_folder_at_its_stored_threshold(
    exported_model, tmp_path
):
    from pneumocnn.core.metadata import INT8_FILE, load_metadata
    from pneumocnn.testing import write_dataset

    root = write_dataset(tmp_path / "chest_xray", patients=5, images_per_patient=1, seed=11)
    (root / "train").rename(root / "test")
    (root / "train").mkdir()
    for name in ("NORMAL", "PNEUMONIA"):  # a train/ folder with one image per class
        (root / "train" / name).mkdir()
        first = sorted((root / "test" / name).iterdir())[0]
        (root / "train" / name / first.name).write_bytes(first.read_bytes())
    output = tmp_path / "eval"
    status = evaluate.main(
        [
            str(exported_model / INT8_FILE),
            "--split",
            "test",
            "--data-dir",
            str(root),
            "--output-dir",
            str(output),
        ]
    )
    assert status == 0
    report = json.loads((output / "metrics.json").read_text())
    assert report["images"] == 10 and report["split"] == "test"
    stored = load_metadata(exported_model / "pneumocnn.json")["threshold"]
    assert report["at_threshold"]["threshold"] == stored


def test_an_exported_model_without_its_data_folder_names_the_fix(exported_model, tmp_path, capsys):
    # Metadata records the training folder's name only, not a path of the exporting machine.
    from pneumocnn.core.metadata import INT8_FILE

    status = evaluate.main([str(exported_model / INT8_FILE), "--output-dir", str(tmp_path)])
    assert status == 2
    assert "--data-dir" in capsys.readouterr().err


def _site_folder(root):
    """A labelled site folder (class subfolders only) of tiny synthetic films."""
    from pneumocnn.testing import write_dataset

    data_root = write_dataset(root / "site_data", patients=8, images_per_patient=2, seed=21)
    return data_root / "train"


def test_every_report_has_patient_bootstrap_intervals_and_groups(trained_run, tmp_path):
    output = tmp_path / "eval"
    report, _ = scoring.evaluate(trained_run, "val", output_dir=output)
    spread = report["uncertainty"]
    for key in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        low, high = spread["intervals"][key]
        assert 0.0 <= low <= high <= 1.0
    at = report["at_threshold"]
    assert (
        spread["intervals"]["accuracy"][0] <= at["accuracy"] <= spread["intervals"]["accuracy"][1]
    )
    assert sum(row["films"] for row in spread["groups"].values()) == report["images"]


def test_a_bound_calibration_shows_the_point_estimate_with_its_interval(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    record = calibrate(run, _site_folder(tmp_path), 0.8, confidence=0.5)
    point = record["point_estimate"]
    low, high = point["intervals"]["specificity"]
    assert record["bound"] and low <= point["specificity"] <= high
    assert f"(specificity {point['specificity']:.4f} [{low:.4f}-{high:.4f}]" in (
        format_calibration(record)
    )


def test_site_calibration_of_a_run_reaches_the_target_and_feeds_the_export(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    site = _site_folder(tmp_path)
    assert (
        evaluate.main([str(run), "--calibrate-on", str(site), "--target-sensitivity", "0.9"]) == 0
    )
    stored = json.loads((run / "threshold.json").read_text())
    record = stored["calibration"]
    assert stored["threshold"] == record["threshold"] and stored["chosen_on"] == "train"
    assert record["films"] == 32 and record["target_sensitivity"] == 0.9
    assert record["achieved"]["sensitivity"] >= 0.9
    low, high = record["intervals"]["sensitivity"]
    assert low <= record["achieved"]["sensitivity"] <= high

    from pneumocnn.edge.export import export, recalibration_advice

    metadata = export(run, tmp_path / "exported", calibration_images=40, require_parity=False)
    assert metadata["threshold"] == stored["threshold"]
    assert metadata["calibration"] == record
    advice = recalibration_advice(metadata, tmp_path / "exported")
    assert "--calibrate-on train" in advice
    assert str(tmp_path / "exported" / "pneumocnn_int8.tflite") in advice


def _exported_copy(exported_model, tmp_path):
    """A copy of the shared exported fixture, to calibrate."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(exported_model, folder)
    return folder


def _site_films(site, image_size):
    """The site folder's films, as calibrate loads them (sorted by class, then name)."""
    from pneumocnn.data.images import load_images

    paths = [
        str(path) for name in ("NORMAL", "PNEUMONIA") for path in sorted((site / name).iterdir())
    ]
    images, _, skipped = load_images(paths, image_size)
    assert not skipped
    return images


def test_site_calibration_of_an_exported_model_keeps_its_whole_family_consistent(
    exported_model, tmp_path
):
    import numpy as np

    from pneumocnn.core.metadata import FILM_SIZE, METADATA_FILE, load_metadata, model_files
    from pneumocnn.core.task import class_probabilities, decide
    from pneumocnn.edge.embedded import read_embedded_metadata
    from pneumocnn.edge.rgb import operating_scores
    from pneumocnn.runtime.lite import LiteModel
    from pneumocnn.testing import read_embedded_labels

    folder = _exported_copy(exported_model, tmp_path)
    files = model_files("pneumocnn")
    site = _site_folder(tmp_path)
    record = calibrate(folder / files["int8"], site, 1.0)
    threshold = record["threshold"]
    for role in ("int8", "fp16", "rgb_int8", "keras"):  # every checksum matches its file
        metadata = load_metadata(folder / METADATA_FILE, folder / files[role])
    assert metadata["threshold"] == threshold and metadata["calibration"] == record
    assert metadata["edge"]["rgb_variant"]["parity_with_int8"]["films"] == site.name
    from pneumocnn.edge.export import recalibration_advice

    assert recalibration_advice(metadata, folder) is None  # calibrated on the int8 file itself
    assert not list(folder.glob(".export-*"))

    int8 = LiteModel(folder / files["int8"])
    assert int8.threshold == threshold
    images = _site_films(site, int8.image_size)
    rows = class_probabilities(int8.predict_proba(images))
    films = _site_films(site, FILM_SIZE)  # the RGB variant takes them and resizes inside
    scores = LiteModel(folder / files["rgb_int8"]).predict_proba(np.repeat(films, 3, axis=-1))
    names = np.array(int8.class_names)
    expected = np.array(decide(rows, threshold, int8.class_names))
    np.testing.assert_array_equal(names[scores.argmax(axis=1)], expected)  # near-ties included
    np.testing.assert_allclose(scores, operating_scores(rows, threshold), atol=1e-4)

    for role, labels in (
        ("int8", ["PNEUMONIA"]),
        ("fp16", ["PNEUMONIA"]),
        ("rgb_int8", list(names)),
    ):
        content = (folder / files[role]).read_bytes()
        assert read_embedded_labels(content) == labels, role
        description = read_embedded_metadata(content)["description"]
        assert f"{threshold:.4f}" in description and "not a medical device" in description


def test_recalibrating_an_rgb_variant_from_another_version_names_the_fix(
    exported_model, tmp_path, capsys
):
    """An RGB variant whose head does not hold the threshold's constant (one made by an older
    export) is refused before anything is written, with the command that remakes it."""
    from pneumocnn.core.metadata import METADATA_FILE, model_files, sha256_of
    from pneumocnn.edge.rgb import retarget_rgb_variant

    folder = _exported_copy(exported_model, tmp_path)
    files = model_files("pneumocnn")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    rgb = folder / files["rgb_int8"]
    rgb.write_bytes(
        retarget_rgb_variant(rgb.read_bytes(), metadata["threshold"], 0.123)
    )  # its head now holds another threshold than the metadata's
    metadata["sha256"][files["rgb_int8"]] = sha256_of(rgb)
    metadata["file_bytes"][files["rgb_int8"]] = rgb.stat().st_size
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    site = _site_folder(tmp_path)
    status = evaluate.main([str(folder / files["int8"]), "--calibrate-on", str(site)])
    assert status == 2
    error = capsys.readouterr().err
    assert "Cannot recalibrate" in error and "pneumocnn.export RUN_DIR" in error
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_an_uncommitted_recalibration_leaves_the_previous_family(exported_model, tmp_path):
    """A kill before the new metadata is written (the commit point) leaves half-written files in
    the scratch folder only; the next recalibration removes them and finds the family intact."""
    from pneumocnn.edge.family import read_family

    folder = _exported_copy(exported_model, tmp_path)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    scratch = folder / ".export-pneumocnn"
    scratch.mkdir()
    (scratch / "owner.pid").write_text(f"{dead_process_id()}\n")
    (scratch / "pneumocnn_rgb_int8.tflite").write_bytes(b"half a model")
    family = read_family(folder / "pneumocnn_int8.tflite")
    assert not scratch.exists()
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert family.metadata["threshold"] == json.loads(before["pneumocnn.json"])["threshold"]


def test_a_recalibration_killed_after_its_commit_is_completed_by_the_next(
    exported_model, tmp_path, monkeypatch
):
    """A kill between the renames (after the commit point) leaves a family whose files disagree;
    the next reader of it completes the renames first."""
    from pneumocnn.core.metadata import MetadataError, load_metadata, model_files
    from pneumocnn.edge.family import read_family

    folder = _exported_copy(exported_model, tmp_path)
    files = model_files("pneumocnn")
    site = _site_folder(tmp_path)
    with killed_after_the_first_rename(monkeypatch) as moved:
        calibrate(folder / files["int8"], site, 1.0)
    with pytest.raises(MetadataError):  # the old metadata does not match the renamed file
        load_metadata(folder / files["metadata"], folder / moved[0].name)
    scratch = folder / ".export-pneumocnn"
    (scratch / "owner.pid").write_text(f"{dead_process_id()}\n")  # as a kill leaves it
    family = read_family(folder / files["int8"])
    assert not scratch.exists()
    for role in ("int8", "fp16", "rgb_int8", "keras"):
        load_metadata(folder / files["metadata"], folder / files[role])
    assert family.metadata["calibration"]["folder"] == site.name


def test_calibrating_on_training_data_is_refused(trained_run, tmp_path, capsys):
    from pneumocnn.testing import write_dataset

    root = write_dataset(tmp_path / "chest_xray", patients=4, images_per_patient=1, seed=3)
    assert evaluate.main([str(trained_run), "--calibrate-on", str(root)]) == 2
    assert "calibrate on films from the site" in capsys.readouterr().err
