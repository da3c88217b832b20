import json

import numpy as np
import pytest

from pneumocnn import evaluate


def test_youden_threshold_separates_cleanly_separable_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    threshold = evaluate.choose_threshold(labels, scores)
    assert 0.3 < threshold <= 0.6
    at = evaluate.metrics_at(labels, scores, threshold, ["NORMAL", "PNEUMONIA"])
    assert at["sensitivity"] == at["specificity"] == 1.0


def test_target_sensitivity_gives_best_specificity_reaching_the_target():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.7, 0.3, 0.6, 0.8, 0.9])
    threshold = evaluate.choose_threshold(labels, scores, target_sensitivity=1.0)
    assert threshold == pytest.approx(0.3)  # the highest threshold keeping every positive
    threshold = evaluate.choose_threshold(labels, scores, target_sensitivity=0.75)
    assert threshold == pytest.approx(0.6)


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        evaluate.choose_threshold(np.array([1, 1]), np.array([0.2, 0.9]))


def test_expected_calibration_error_is_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(size=20000)
    labels = (rng.uniform(size=20000) < probabilities).astype(int)
    assert evaluate.expected_calibration_error(labels, probabilities) < 0.02
    overconfident = np.where(probabilities > 0.5, 0.99, 0.01)
    assert evaluate.expected_calibration_error(labels, overconfident) > 0.2


def test_metrics_agree_with_the_confusion_matrix():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.95, 0.85])
    report = evaluate.compute_metrics(labels, scores, 0.5, ["NORMAL", "PNEUMONIA"])
    (tn, fp), (fn, tp) = report["at_threshold"]["confusion_matrix"]
    assert (tn, fp, fn, tp) == (3, 1, 1, 5)
    assert report["at_threshold"]["sensitivity"] == tp / (tp + fn)
    assert report["at_threshold"]["specificity"] == tn / (tn + fp)
    assert report["at_threshold"]["per_class"]["PNEUMONIA"]["recall"] == tp / (tp + fn)
    assert report["images_per_class"] == [4, 6]


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


def test_a_model_with_one_output_for_every_film_still_gets_a_usable_threshold():
    # The +inf point of the ROC curve (nothing positive) is never chosen: the threshold stays
    # inside (0, 1), which the metadata requires.
    labels = np.array([0, 1, 0, 1])
    threshold = evaluate.choose_threshold(labels, np.full(4, 0.62))
    assert threshold == pytest.approx(0.62)
