import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumocnn import export
from pneumocnn.core.metadata import (
    FP16_FILE,
    INT8_FILE,
    KERAS_FILE,
    LABELS_FILE,
    METADATA_FILE,
    MetadataError,
    load_metadata,
)
from pneumocnn.data.split import load_split
from pneumocnn.edge import export as edge_export
from pneumocnn.edge import parity as edge_parity
from pneumocnn.edge.convert import representative_images
from pneumocnn.edge.parity import MAX_AUC_DROP, MIN_AGREEMENT, ParityError, check_parity
from pneumocnn.network.model import load_model
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.runtime.runners import keras_probabilities as keras_model_probabilities


def test_export_writes_every_file_with_matching_checksums(exported_model):
    for name in (INT8_FILE, FP16_FILE, KERAS_FILE, LABELS_FILE, METADATA_FILE):
        assert (exported_model / name).is_file(), name
    assert not list(exported_model.glob(".export-*"))
    metadata = load_metadata(exported_model / METADATA_FILE, exported_model / INT8_FILE)
    assert metadata["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert (exported_model / LABELS_FILE).read_text().split() == metadata["class_names"]
    for name in (FP16_FILE, KERAS_FILE):
        load_metadata(exported_model / METADATA_FILE, exported_model / name)


def test_int8_model_takes_uint8_raw_pixels_and_uses_integer_ops_only(exported_model):
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    tensors = metadata["tensors"][INT8_FILE]
    assert tensors["input"]["dtype"] == "uint8"
    assert (tensors["input"]["scale"], tensors["input"]["zero_point"]) == (1.0, 0)
    assert tensors["output"]["dtype"] == "uint8"
    model = LiteModel(exported_model / INT8_FILE)
    float_ops = [
        t
        for t in model.interpreter.get_tensor_details()
        if t["dtype"] == np.float32 and t["quantization"][0] == 0
    ]
    assert not float_ops, [t["name"] for t in float_ops]


def test_int8_and_fp16_probabilities_stay_close_to_the_float_model(trained_run, exported_model):
    config = json.loads((trained_run / "config.json").read_text())
    split = pd.read_csv(trained_run / "split.csv")
    val = load_split(split, "val", config["image_size"], config["data_dir"])
    float_probabilities = keras_model_probabilities(
        load_model(exported_model / KERAS_FILE), val.images
    )
    int8_probabilities = LiteModel(exported_model / INT8_FILE).predict_proba(val.images)
    fp16_probabilities = LiteModel(exported_model / FP16_FILE).predict_proba(val.images)
    # Stated tolerances, each several times the error measured on the toy model (int8 0.003,
    # float16 0.0001): one uint8 output step is 1/256.
    np.testing.assert_allclose(int8_probabilities, float_probabilities, atol=0.05)
    np.testing.assert_allclose(fp16_probabilities, float_probabilities, atol=0.005)


def test_metadata_records_the_parity_it_measured(trained_run, exported_model):
    # The fixture exports with require_parity=False (see conftest.py): whether the toy model
    # meets the bars is a near-tie, so the test checks the record, not the verdict.
    config = json.loads((trained_run / "config.json").read_text())
    split = pd.read_csv(trained_run / "split.csv")
    val = load_split(split, "val", config["image_size"], config["data_dir"])
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    parity = metadata["parity"]
    expected = check_parity(
        val.labels,
        keras_model_probabilities(load_model(exported_model / KERAS_FILE), val.images),
        LiteModel(exported_model / INT8_FILE).predict_proba(val.images),
        metadata["threshold"],
        metadata["class_names"],
        strict=False,
    )
    assert parity.keys() == expected.keys()
    stability = metadata["stability"]
    assert stability["films"] == len(val.labels) and stability["films_used"] == "validation"
    assert 0 <= stability["mean_change"] <= stability["max_change"]
    assert 0 <= stability["p99_change"] <= stability["max_change"]
    assert parity["images"] == len(val.labels) == metadata["training_data"]["val_images"]
    assert parity["auc_float"] == pytest.approx(expected["auc_float"], abs=1e-6)
    assert (parity["min_agreement"], parity["max_auc_drop"]) == (
        MIN_AGREEMENT,
        MAX_AUC_DROP,
    )
    assert parity["passed"] == (
        parity["agreement"] >= MIN_AGREEMENT and parity["auc_drop"] <= MAX_AUC_DROP
    )


def test_metadata_records_threshold_training_data_and_validation_metrics(
    trained_run, exported_model
):
    metadata = load_metadata(exported_model / METADATA_FILE)
    stored = json.loads((trained_run / "threshold.json").read_text())
    assert metadata["threshold"] == stored["threshold"]
    assert metadata["image_size"] == 32 and metadata["channels"] == 1
    assert "raw 0-255" in metadata["preprocessing"]
    assert metadata["training_data"]["train_images"] > 0
    assert 0 <= metadata["validation_metrics"]["int8"]["roc_auc"] <= 1
    assert metadata["config"]["image_size"] == 32
    parity = metadata["parity"]
    assert {"agreement", "auc_drop", "auc_int8", "auc_float", "images"} <= set(parity)


def test_the_int8_files_come_from_the_equalized_model_and_say_so(trained_run, exported_model):
    from pneumocnn.edge.card import CARD_FILE

    metadata = load_metadata(exported_model / METADATA_FILE)
    conversion = metadata["int8_conversion"]
    assert conversion["calibration_images"] == 40
    assert conversion["equalization"]["relu_layers"] > 0
    assert "activation-equalized" in (exported_model / CARD_FILE).read_text()
    # The .keras is the trained model itself, not its equalized copy.
    trained, shipped = (
        load_model(trained_run / "best.keras"),
        load_model(exported_model / KERAS_FILE),
    )
    for before, after in zip(trained.get_weights(), shipped.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


def test_no_equalize_converts_the_model_as_it_is(trained_run, tmp_path):
    from pneumocnn.edge.card import CARD_FILE

    assert export.build_parser().parse_args([str(trained_run), "--no-equalize"]).no_equalize
    edge_export.export(
        trained_run, tmp_path, calibration_images=40, require_parity=False, equalize=False
    )
    metadata = load_metadata(tmp_path / METADATA_FILE)
    assert metadata["int8_conversion"]["equalization"] is None
    assert "without activation equalization" in (tmp_path / CARD_FILE).read_text()


def test_metadata_records_no_absolute_path_of_the_exporting_machine(trained_run, exported_model):
    text = (exported_model / METADATA_FILE).read_text()
    root = json.loads((trained_run / "config.json").read_text())["data_dir"]
    assert root not in text and str(trained_run) not in text
    metadata = json.loads(text)
    assert metadata["training_data"]["data_dir"] == "chest_xray"


def test_a_failed_parity_check_written_anyway_records_its_figures(
    trained_run, tmp_path, monkeypatch
):
    # require_parity=False (the notebooks' quick mode) still measures and records the figures.
    monkeypatch.setattr(edge_parity, "MIN_AGREEMENT", 1.01)
    metadata = edge_export.export(
        trained_run, tmp_path / "out", calibration_images=8, require_parity=False
    )
    assert metadata["parity"]["passed"] is False and metadata["parity"]["min_agreement"] == 1.01
    assert 0 <= metadata["parity"]["agreement"] <= 1 and "auc_drop" in metadata["parity"]
    assert "strays too far" in metadata["parity"]["message"]


def test_calibration_takes_the_asked_number_of_films_for_three_classes(subtype_run):
    # Until this test, a subtype run calibrated on half as many films again as asked (count // 2
    # per class, three classes).
    config = json.loads((subtype_run / "config.json").read_text())
    split = pd.read_csv(subtype_run / "split.csv")
    assert split.loc[split["subset"] == "train", "label"].nunique() == 3
    images = representative_images(split, Path(config["data_dir"]), 32, 30, seed=0)
    assert len(images) == 30


def test_parity_check_fails_and_says_by_how_much():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ParityError, match=r"agree on 50\.00%.*drop.*more --calibration-images"):
        check_parity(
            labels,
            np.array([0.1, 0.2, 0.8, 0.9]),
            np.array([0.6, 0.2, 0.4, 0.9]),
            0.5,
            ["NORMAL", "PNEUMONIA"],
        )


def test_a_failed_subtype_parity_check_names_the_pneumonia_calls_apart():
    labels = np.array([0, 1, 2, 2])
    reference = np.array([[0.8, 0.1, 0.1], [0.1, 0.6, 0.3], [0.1, 0.3, 0.6], [0.1, 0.3, 0.6]])
    candidate = reference[:, [0, 2, 1]]  # every subtype flips, no pneumonia call does
    with pytest.raises(ParityError, match=r"agree on 25\.00%.*calls alone on 100\.00%") as refused:
        check_parity(labels, reference, candidate, 0.5, ["NORMAL", "BACTERIAL", "VIRAL"])
    # Another calibration draw is not advice for a three-class model (docs/research/int8.md).
    assert "--calibration-images" not in str(refused.value)
    assert "near-ties" in str(refused.value)


def test_parity_check_passes_identical_predictions_and_records_its_bars():
    probabilities = np.array([0.1, 0.4, 0.6, 0.9])
    parity = check_parity(
        np.array([0, 0, 1, 1]), probabilities, probabilities, 0.5, ["NORMAL", "PNEUMONIA"]
    )
    assert parity["passed"] and parity["agreement"] == 1.0 and parity["auc_drop"] == 0.0
    assert parity["min_agreement"] == MIN_AGREEMENT
    assert parity["max_auc_drop"] == MAX_AUC_DROP


def test_parity_check_can_report_without_raising():
    parity = check_parity(
        np.array([0, 0, 1, 1]),
        np.array([0.1, 0.2, 0.8, 0.9]),
        np.array([0.6, 0.2, 0.4, 0.9]),
        0.5,
        ["NORMAL", "PNEUMONIA"],
        strict=False,
    )
    assert parity["passed"] is False and parity["agreement"] == 0.5


def test_failed_parity_writes_nothing_and_exits_4(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(edge_parity, "MIN_AGREEMENT", 1.01)
    output = tmp_path / "cli"
    assert (
        export.main([str(trained_run), "--output-dir", str(output), "--calibration-images", "8"])
        == 4
    )
    assert "strays too far" in capsys.readouterr().err
    assert not list(output.glob("*.tflite"))


def test_tampered_model_is_refused_by_its_metadata(exported_model, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (INT8_FILE, METADATA_FILE):
        (copy / name).write_bytes((exported_model / name).read_bytes())
    with open(copy / INT8_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(MetadataError, match="SHA-256"):
        LiteModel(copy / INT8_FILE)


def test_export_writes_into_the_run_by_default_and_leaves_saved_models_alone(
    trained_run, tmp_path, monkeypatch
):
    # Bars any model meets, so the toy model's near-tie cannot decide this test (conftest.py).
    monkeypatch.setattr(edge_parity, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(edge_parity, "MAX_AUC_DROP", 1.0)
    run = shutil.copytree(trained_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path)  # a relative saved_models/ would land here
    assert export.main([str(run), "--calibration-images", "8"]) == 0
    for name in (INT8_FILE, FP16_FILE, KERAS_FILE, LABELS_FILE, METADATA_FILE):
        assert (run / "export" / name).is_file(), name
    assert not (tmp_path / "saved_models").exists()
