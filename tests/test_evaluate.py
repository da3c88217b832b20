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
