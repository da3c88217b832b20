"""The three-class task (`--task subtype`): NORMAL / BACTERIAL / VIRAL from the file names."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers import REAL_DATA, requires_real_data
from pneumocnn import explain, predict
from pneumocnn.core.config import Config
from pneumocnn.core.errors import DataError
from pneumocnn.core.metadata import SUBTYPE_FILES, find_metadata, load_metadata
from pneumocnn.core.task import Task, decide
from pneumocnn.data.folders import find_dataset, label_for_task, list_images, subtype_of
from pneumocnn.data.images import load_image
from pneumocnn.data.pipeline import class_weights, make_datasets
from pneumocnn.data.split import load_split, prepare_split
from pneumocnn.evaluation import reports
from pneumocnn.evaluation.metrics import compute_metrics
from pneumocnn.evaluation.scoring import evaluate
from pneumocnn.network.model import build_model, load_model
from pneumocnn.runtime import gradcam
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.runtime.runners import open_model
from pneumocnn.training.compile import Sensitivity, Specificity

SUBTYPES = ["NORMAL", "BACTERIAL", "VIRAL"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person12_virus_3.jpeg", "virus"),
        ("person1000_bacteria_2931.jpeg", "bacteria"),
        ("PERSON7_Bacteria_30.PNG", "bacteria"),
        ("IM-0115-0001.jpeg", None),
        ("NORMAL2-IM-0135-0001.jpeg", None),
        ("virus.jpeg", None),
    ],
)
def test_subtype_is_read_from_the_file_name(name, expected):
    assert subtype_of(name) == expected


def test_subtype_labels_keep_normal_and_split_pneumonia(make_dataset):
    root = make_dataset(patients=4, subtypes=True)
    dataset = find_dataset(root)
    folders = list_images(dataset.development, dataset.class_names)
    labelled = label_for_task(folders, dataset.class_names, "subtype")
    names = labelled["path"].map(lambda p: p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1])
    for name, label in zip(names, labelled["label"], strict=True):
        expected = 0 if name.startswith("NORMAL/") else (2 if "_virus_" in name else 1)
        assert label == expected, name
    # The binary task leaves the folder labels alone.
    assert label_for_task(folders, dataset.class_names, "binary").equals(folders)


def test_pneumonia_file_without_a_subtype_is_named_in_the_error(make_dataset):
    root = make_dataset(patients=4, subtypes=True)
    stray = root / "train" / "PNEUMONIA" / "scan_0042.png"
    stray.write_bytes((root / "train" / "NORMAL" / "IM-0000-0002.png").read_bytes())
    dataset = find_dataset(root)
    folders = list_images(dataset.development, dataset.class_names)
    with pytest.raises(DataError, match=r"scan_0042\.png.*--task binary"):
        label_for_task(folders, dataset.class_names, "subtype")


def test_subtype_folders_give_the_labels_whatever_the_file_names(make_dataset):
    # A clinic's own films: sorted into NORMAL/, BACTERIAL/ and VIRAL/, named by number.
    root = make_dataset(patients=6, subtypes=True)
    expected = {}
    for index, path in enumerate(sorted((root / "train" / "PNEUMONIA").iterdir())):
        folder = root / "train" / ("VIRAL" if "_virus_" in path.name else "BACTERIAL")
        folder.mkdir(exist_ok=True)
        expected[f"film{index}.png"] = SUBTYPES.index(folder.name)
        path.rename(folder / f"film{index}.png")
    (root / "train" / "PNEUMONIA").rmdir()
    for path in (root / "train" / "NORMAL").iterdir():
        expected[path.name] = 0
    dataset = find_dataset(root)
    listed = list_images(dataset.development, dataset.class_names)
    labelled = label_for_task(listed, dataset.class_names, "subtype")
    names = [path.rsplit("/", 1)[-1] for path in labelled["path"]]
    got = dict(zip(names, labelled["label"], strict=True))
    assert got == expected and set(got.values()) == {0, 1, 2}
    # Training reads the same layout (a split with every class).
    split = prepare_split(Config(task="subtype", val_fraction=0.25), dataset)
    assert set(split["label"]) == {0, 1, 2}
    # A binary model cannot learn from three folders; the refusal says what to do.
    with pytest.raises(DataError, match="use --task subtype, or move BACTERIAL/ and VIRAL/"):
        prepare_split(Config(task="binary", val_fraction=0.25), dataset)
    # Other folders are refused, naming both layouts.
    with pytest.raises(DataError, match=r"\['NORMAL', 'BACTERIAL', 'VIRAL'\]"):
        label_for_task(listed, ("A", "B", "C"), "subtype")


def test_subtype_split_is_patient_grouped_and_has_every_class_on_both_sides(make_dataset):
    root = make_dataset(patients=10, subtypes=True)
    config = Config(task="subtype", val_fraction=0.25, seed=3)
    split = prepare_split(config, find_dataset(root))
    assert split.groupby("patient")["subset"].nunique().max() == 1
    for subset in ("train", "val"):
        assert set(split.loc[split["subset"] == subset, "label"]) == {0, 1, 2}


def test_three_class_pipeline_yields_one_hot_labels_and_balanced_weights(make_dataset):
    root = make_dataset(patients=8, subtypes=True)
    config = Config(
        task="subtype",
        image_size=32,
        batch_size=64,
        val_fraction=0.25,
        augment_strength=0,
        intensity_strength=0,
        mixup_alpha=0,
    )
    dataset = find_dataset(root)
    split = prepare_split(config, dataset)
    train = load_split(split, "train", 32, dataset.root)
    val = load_split(split, "val", 32, dataset.root)
    train_ds, val_ds, _ = make_datasets(config, train, val, num_classes=3)
    images, labels, weights = next(iter(train_ds))
    assert labels.shape[1] == 3
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0)
    expected = class_weights(train.labels, 3)
    classes = labels.numpy().argmax(axis=1)
    np.testing.assert_allclose(weights.numpy(), [expected[c] for c in classes], rtol=1e-6)
    assert next(iter(val_ds))[1].shape[1] == 3


def test_subtype_model_has_a_softmax_head():
    model = build_model(Config(task="subtype", image_size=32, base_filters=4, num_blocks=2))
    assert model.output_shape == (None, 3)
    outputs = model.predict(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)), verbose=0)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)


def test_sensitivity_and_specificity_read_three_classes_as_pneumonia_vs_normal():
    y_true = np.eye(3, dtype="float32")[[0, 0, 1, 2, 2]]
    # P(NORMAL) 0.9, 0.2 | 0.1, 0.3, 0.8: one NORMAL missed, one VIRAL missed.
    y_pred = np.array(
        [[0.9, 0.05, 0.05], [0.2, 0.4, 0.4], [0.1, 0.8, 0.1], [0.3, 0.1, 0.6], [0.8, 0.1, 0.1]],
        "float32",
    )
    sensitivity, specificity = Sensitivity(), Specificity()
    sensitivity.update_state(y_true, y_pred)
    specificity.update_state(y_true, y_pred)
    assert float(sensitivity.result()) == pytest.approx(2 / 3)
    assert float(specificity.result()) == pytest.approx(1 / 2)


def test_decision_rule_calls_pneumonia_on_the_threshold_then_the_likelier_subtype():
    rows = [[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.05, 0.6, 0.35], [0.2, 0.3, 0.5]]
    assert decide(rows, 0.5, SUBTYPES) == ["NORMAL", "VIRAL", "BACTERIAL", "VIRAL"]
    assert decide(rows, 0.9, SUBTYPES) == ["NORMAL", "NORMAL", "BACTERIAL", "NORMAL"]
    assert decide(np.array([0.2, 0.6]), 0.5, ["NORMAL", "PNEUMONIA"]) == ["NORMAL", "PNEUMONIA"]


def test_subtype_metrics_give_the_matrix_per_class_macro_ovr_auc_and_the_binary_view():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],  # NORMAL, right
            [0.4, 0.5, 0.1],  # NORMAL called BACTERIAL (P(pneumonia) 0.6)
            [0.1, 0.7, 0.2],  # BACTERIAL, right
            [0.2, 0.3, 0.5],  # BACTERIAL called VIRAL
            [0.1, 0.2, 0.7],  # VIRAL, right
            [0.7, 0.1, 0.2],  # VIRAL missed: NORMAL
        ]
    )
    report = compute_metrics(labels, probabilities, 0.5, SUBTYPES)
    at = report["at_threshold"]
    assert at["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert at["accuracy"] == pytest.approx(3 / 6)
    assert at["per_class"]["VIRAL"]["recall"] == pytest.approx(1 / 2)
    assert at["macro"]["recall"] == pytest.approx(1 / 2)
    # One-vs-rest, ranked pairs of the two films of the class against the other four: NORMAL
    # 7 of 8, BACTERIAL 7 of 8, VIRAL 6.5 of 8 (its 0.2 ties a BACTERIAL film's 0.2).
    assert report["ovr_auc"] == pytest.approx(
        {"NORMAL": 7 / 8, "BACTERIAL": 7 / 8, "VIRAL": 6.5 / 8}
    )
    assert report["macro_ovr_auc"] == pytest.approx((7 / 8 + 7 / 8 + 6.5 / 8) / 3)
    binary = report["binary"]["at_threshold"]
    assert binary["confusion_matrix"] == [[1, 1], [1, 3]]
    assert binary["sensitivity"] == pytest.approx(3 / 4)
    assert binary["specificity"] == pytest.approx(1 / 2)
    assert "BACTERIAL" in reports.format_summary(
        {**report, "model": "m", "split": "val", "unreadable_files": 0}
    )


def test_subtype_run_records_three_classes(subtype_run):
    summary = json.loads((subtype_run / "summary.json").read_text())
    assert summary["class_names"] == SUBTYPES
    assert summary["task"] == "subtype"
    assert len(summary["train_images_per_class"]) == 3
    split = pd.read_csv(subtype_run / "split.csv")
    assert set(split["label"]) == {0, 1, 2}


def test_subtype_evaluation_writes_three_class_report_and_plots(subtype_run, tmp_path):
    report, output = evaluate(subtype_run, "val", output_dir=tmp_path / "eval")
    assert report["task"] == "subtype"
    assert np.array(report["at_threshold"]["confusion_matrix"]).shape == (3, 3)
    assert report["binary"]["roc_auc"] is not None
    for name in ("confusion_matrix.png", "roc_one_vs_rest.png", "pneumonia_roc.png"):
        assert (output / name).stat().st_size > 1000
    # The synthetic subtypes are easy: the model must have learned them, not guessed.
    assert report["macro_ovr_auc"] > 0.8


def test_subtype_export_names_its_files_and_carries_task_and_classes(subtype_model):
    metadata_path = subtype_model / SUBTYPE_FILES["metadata"]
    for role in ("int8", "fp16", "keras"):
        model_file = subtype_model / SUBTYPE_FILES[role]
        assert find_metadata(model_file) == metadata_path
        load_metadata(metadata_path, model_file)
    metadata = json.loads(metadata_path.read_text())
    assert metadata["task"] == "subtype"
    assert metadata["class_names"] == SUBTYPES
    assert (subtype_model / SUBTYPE_FILES["labels"]).read_text().split() == SUBTYPES
    # One score per class; the batch is fixed at 1 for stock clients (see pneumocnn.edge).
    assert metadata["tensors"][SUBTYPE_FILES["int8"]]["output"]["shape"][-1] == 3
    # Measured on the three-class decisions and recorded (the verdict of a toy model is a
    # near-tie, so the fixture does not require it; see conftest.py).
    assert metadata["parity"]["images"] == metadata["training_data"]["val_images"]
    assert 0 <= metadata["parity"]["agreement"] <= 1
    assert "macro_ovr_auc" in metadata["validation_metrics"]["int8"]


def test_lite_and_keras_classifiers_give_three_probabilities(subtype_model, subtype_run):
    split = pd.read_csv(subtype_run / "split.csv")
    config = Config.load(subtype_run / "config.json")
    val = load_split(split, "val", config.image_size, config.data_dir)
    lite = LiteModel(subtype_model / SUBTYPE_FILES["int8"])
    keras_model = open_model(subtype_model / SUBTYPE_FILES["keras"])
    int8, float_ = lite.predict_proba(val.images), keras_model.predict_proba(val.images)
    assert int8.shape == float_.shape == (len(val.labels), 3)
    assert lite.task == keras_model.task and lite.task.name == "subtype"
    # A stated tolerance, several times the error measured on the toy model (0.011).
    tolerance = 0.05
    np.testing.assert_allclose(int8, float_, atol=tolerance)
    # So the decisions agree wherever the float model is not within that tolerance of a tie:
    # P(pneumonia) against the threshold, and bacterial against viral (each may move by it).
    clear = (np.abs(1 - float_[:, 0] - lite.threshold) > tolerance) & (
        np.abs(float_[:, 1] - float_[:, 2]) > 2 * tolerance
    )
    assert clear.any()
    assert decide(int8[clear], lite.threshold, SUBTYPES) == decide(
        float_[clear], lite.threshold, SUBTYPES
    )


def test_predict_cli_prints_subtype_labels_and_probabilities(subtype_model, subtype_run, capsys):
    images = sorted((subtype_run.parent / "chest_xray" / "train" / "PNEUMONIA").iterdir())[:4]
    status = predict.main(
        [*map(str, images), "--model", str(subtype_model / SUBTYPE_FILES["int8"]), "--json"]
    )
    assert status == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["label"] in SUBTYPES
        assert set(row["probabilities"]) == set(SUBTYPES)
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=0.02)
        assert row["probability"] == pytest.approx(1 - row["probabilities"]["NORMAL"], abs=1e-5)


def test_grad_cam_explains_the_decided_subtype(subtype_model, subtype_run, tmp_path):
    image = sorted((subtype_run.parent / "chest_xray" / "train" / "PNEUMONIA").iterdir())[0]
    status = explain.main(
        [
            str(image),
            "--model",
            str(subtype_model / SUBTYPE_FILES["keras"]),
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert status == 0
    assert (tmp_path / f"{image.stem}_gradcam.png").stat().st_size > 5000
    metadata = load_metadata(subtype_model / SUBTYPE_FILES["metadata"])
    cam = gradcam.GradCam(load_model(subtype_model / SUBTYPE_FILES["keras"]))
    result = gradcam.explain_image(
        cam, load_image(image, 32), metadata["threshold"], Task.of_metadata(metadata)
    )
    assert result.explained == result.label and result.label in SUBTYPES
    assert (
        result.heatmap.shape == (32, 32) and 0 <= result.heatmap.min() <= result.heatmap.max() <= 1
    )


@requires_real_data
def test_real_file_names_give_the_documented_subtype_counts():
    dataset = find_dataset(REAL_DATA)
    folders = list_images(dataset.development, dataset.class_names)
    labels = label_for_task(folders, dataset.class_names, "subtype")["label"]
    # ../shared/chest_xray/README.md: 1,341 NORMAL, 2,530 bacterial, 1,345 viral.
    assert np.bincount(labels).tolist() == [1341, 2530, 1345]


def test_grad_cam_explains_a_decision_made_elsewhere(subtype_model, subtype_run):
    # The app shows the int8 model's label; the float model's Grad-CAM must explain that class.
    image = sorted((subtype_run.parent / "chest_xray" / "train" / "NORMAL").iterdir())[0]
    cam = gradcam.GradCam(load_model(subtype_model / SUBTYPE_FILES["keras"]))
    result = gradcam.explain_image(
        cam, load_image(image, 32), 0.5, Task.of("subtype"), label="VIRAL"
    )
    assert result.explained == result.label == "VIRAL"
