import json

from pneumocnn import evaluate


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
    from helpers import write_dataset
    from pneumocnn.metadata import INT8_FILE, load_metadata

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
    from pneumocnn.metadata import INT8_FILE

    status = evaluate.main([str(exported_model / INT8_FILE), "--output-dir", str(tmp_path)])
    assert status == 2
    assert "--data-dir" in capsys.readouterr().err


def _site_folder(root):
    """A labelled site folder (class subfolders only) of tiny synthetic films."""
    from helpers import write_dataset

    data_root = write_dataset(root / "site_data", patients=8, images_per_patient=2, seed=21)
    return data_root / "train"


def test_every_report_has_patient_bootstrap_intervals_and_groups(trained_run, tmp_path):
    output = tmp_path / "eval"
    report, _ = evaluate.evaluate(trained_run, "val", output_dir=output)
    spread = report["uncertainty"]
    for key in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        low, high = spread["intervals"][key]
        assert 0.0 <= low <= high <= 1.0
    at = report["at_threshold"]
    assert (
        spread["intervals"]["accuracy"][0] <= at["accuracy"] <= spread["intervals"]["accuracy"][1]
    )
    assert sum(row["films"] for row in spread["groups"].values()) == report["images"]


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

    from pneumocnn import export

    metadata = export.export(
        run, tmp_path / "exported", calibration_images=40, require_parity=False
    )
    assert metadata["threshold"] == stored["threshold"]
    assert metadata["calibration"] == record


def test_site_calibration_of_an_exported_model_rewrites_its_metadata(exported_model, tmp_path):
    import shutil

    from pneumocnn.metadata import INT8_FILE, METADATA_FILE

    folder = tmp_path / "model"
    shutil.copytree(exported_model, folder)
    record = evaluate.calibrate(folder / INT8_FILE, _site_folder(tmp_path), 1.0)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    assert metadata["threshold"] == record["threshold"]
    assert metadata["calibration"]["achieved"]["sensitivity"] == 1.0


def test_calibrating_on_training_data_is_refused(trained_run, tmp_path, capsys):
    from helpers import write_dataset

    root = write_dataset(tmp_path / "chest_xray", patients=4, images_per_patient=1, seed=3)
    assert evaluate.main([str(trained_run), "--calibrate-on", str(root)]) == 2
    assert "calibrate on films from the site" in capsys.readouterr().err
