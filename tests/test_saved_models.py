"""The shipped model in saved_models/: intact, consistent, and useful on real validation images."""

from pathlib import Path

import numpy as np
import pytest

from helpers import REAL_DATA, requires_real_data
from pneumocnn.core.config import Config
from pneumocnn.core.metadata import (
    FP16_FILE,
    INT8_FILE,
    KERAS_FILE,
    METADATA_FILE,
    SUBTYPE_FILES,
    load_metadata,
    model_files,
)
from pneumocnn.core.task import decide
from pneumocnn.data.folders import find_dataset
from pneumocnn.data.split import limit_per_class, load_split, prepare_split
from pneumocnn.edge.parity import MAX_AUC_DROP, MIN_AGREEMENT, check_parity
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.runtime.runners import open_model

SAVED = Path(__file__).resolve().parents[1] / "saved_models"


@pytest.mark.parametrize("name", [INT8_FILE, FP16_FILE, KERAS_FILE])
def test_every_shipped_file_matches_its_recorded_checksum(name):
    metadata = load_metadata(SAVED / METADATA_FILE, SAVED / name)
    assert metadata["class_names"] == ["NORMAL", "PNEUMONIA"]


@pytest.mark.parametrize("metadata_file", [METADATA_FILE, SUBTYPE_FILES["metadata"]])
def test_shipped_models_are_ready_for_stock_clients(metadata_file):
    """Every shipped .tflite has a batch of 1 (LiteRT.js and MediaPipe refuse a dynamic one) and
    the RGB variant for stock classifiers is there, intact. Fails until the models are
    re-exported with `python -m pneumocnn.export` (issue 18)."""
    metadata = load_metadata(SAVED / metadata_file)
    rgb = metadata["files"].get("rgb_int8")
    assert rgb, f"{metadata_file} names no RGB variant: re-export the model"
    load_metadata(SAVED / metadata_file, SAVED / rgb)
    for name, tensors in metadata["tensors"].items():
        if name.endswith(".tflite"):
            assert tensors["input"]["shape"][0] == 1, name
    assert metadata["warning"]


def test_shipped_int8_model_is_under_500_kb():
    assert (SAVED / INT8_FILE).stat().st_size < 500 * 1024


@pytest.fixture(scope="module")
def shipped_validation_sample():
    """60 images of the shipped model's own validation split (rebuilt from its metadata)."""
    metadata = load_metadata(SAVED / METADATA_FILE)
    config = Config.from_dict(metadata["config"])
    dataset = find_dataset(REAL_DATA)
    split = prepare_split(config, dataset)
    val = split[split["subset"] == "val"]
    sample = limit_per_class(val, 30, seed=0)
    return load_split(sample, "val", config.image_size, dataset.root)


@requires_real_data
def test_shipped_int8_model_classifies_real_validation_images(shipped_validation_sample):
    model = LiteModel(SAVED / INT8_FILE)
    probabilities = model.predict_proba(shipped_validation_sample.images)
    assert probabilities.shape == (len(shipped_validation_sample.labels), 2)
    predicted = np.array(decide(probabilities, model.threshold, model.class_names)) == "PNEUMONIA"
    assert np.mean(predicted == shipped_validation_sample.labels) >= 0.85


@requires_real_data
def test_shipped_int8_and_keras_models_agree(shipped_validation_sample):
    lite = LiteModel(SAVED / INT8_FILE)
    int8 = lite.predict_proba(shipped_validation_sample.images)
    keras = open_model(SAVED / KERAS_FILE).predict_proba(shipped_validation_sample.images)
    agree = np.mean(
        np.array(decide(int8, lite.threshold, lite.class_names))
        == np.array(decide(keras, lite.threshold, lite.class_names))
    )
    assert agree >= 0.95


@pytest.mark.parametrize("role", ["int8", "fp16", "keras"])
def test_every_shipped_subtype_file_matches_its_recorded_checksum(role):
    metadata = load_metadata(SAVED / SUBTYPE_FILES["metadata"], SAVED / SUBTYPE_FILES[role])
    assert metadata["task"] == "subtype"
    assert metadata["class_names"] == ["NORMAL", "BACTERIAL", "VIRAL"]


def test_shipped_subtype_int8_model_is_under_500_kb():
    assert (SAVED / SUBTYPE_FILES["int8"]).stat().st_size < 500 * 1024


@requires_real_data
def test_shipped_subtype_model_classifies_real_validation_images():
    metadata = load_metadata(SAVED / SUBTYPE_FILES["metadata"])
    config = Config.from_dict(metadata["config"])
    dataset = find_dataset(REAL_DATA)
    split = prepare_split(config, dataset)
    sample = limit_per_class(split[split["subset"] == "val"], 20, seed=0)
    val = load_split(sample, "val", config.image_size, dataset.root)
    model = LiteModel(SAVED / SUBTYPE_FILES["int8"])
    probabilities = model.predict_proba(val.images)
    assert probabilities.shape == (len(val.labels), 3)
    predicted = np.array(
        [
            model.class_names.index(n)
            for n in decide(probabilities, model.threshold, model.class_names)
        ]
    )
    # Pneumonia vs NORMAL must be as good as the binary model's bar; the subtypes are harder
    # (bacterial and viral films look alike), so the three-class bar is lower.
    assert np.mean((predicted > 0) == (val.labels > 0)) >= 0.85
    assert np.mean(predicted == val.labels) >= 0.6


@pytest.mark.parametrize("name", ["pneumocnn", "pneumocnn_subtype"])
def test_shipped_model_passed_the_strict_parity_check_on_its_whole_validation_split(name):
    # Unlike the toy fixtures (see conftest.py), the shipped models are held to the export's bars.
    metadata = load_metadata(SAVED / model_files(name)["metadata"])
    parity = metadata["parity"]
    assert parity["passed"]
    assert parity["images"] == metadata["training_data"]["val_images"] > 1000
    assert parity["agreement"] >= MIN_AGREEMENT
    assert parity["auc_drop"] <= MAX_AUC_DROP


@requires_real_data
@pytest.mark.parametrize("name", ["pneumocnn", "pneumocnn_subtype"])
def test_shipped_model_still_passes_the_strict_parity_check_here(name):
    """Re-measures the shipped int8 model against its float twin on this machine, on its whole
    validation split (rebuilt from the metadata), with the export's strict check."""
    files = model_files(name)
    metadata = load_metadata(SAVED / files["metadata"])
    config = Config.from_dict(metadata["config"])
    dataset = find_dataset(REAL_DATA)
    split = prepare_split(config, dataset)
    val = load_split(split, "val", config.image_size, dataset.root)
    assert len(val.labels) == metadata["parity"]["images"]
    check_parity(
        val.labels,
        open_model(SAVED / files["keras"]).predict_proba(val.images),
        LiteModel(SAVED / files["int8"]).predict_proba(val.images),
        metadata["threshold"],
        metadata["class_names"],
        strict=True,
    )


@requires_real_data
def test_shipped_int8_file_reaches_its_recorded_site_calibration():
    """The int8 file, at its stored threshold, makes the calls its calibration record reports on
    the folder it was calibrated on (the development half): the operating point belongs to the
    file users embed, not to its float twin."""
    from pneumocnn.core.task import pneumonia_labels
    from pneumocnn.data.images import load_images
    from pneumocnn.evaluation.metrics import pneumonia_figures

    files = model_files("pneumocnn")
    metadata = load_metadata(SAVED / files["metadata"])
    record = metadata["calibration"]
    assert record["folder"] == "test", "this test knows only the development half's folder"
    model = LiteModel(SAVED / files["int8"])
    paths, labels = [], []
    for label, folder in enumerate(("NORMAL", "PNEUMONIA")):
        found = sorted((REAL_DATA / "test" / folder).iterdir())
        paths += found
        labels += [label] * len(found)
    images, kept, skipped = load_images(paths, metadata["config"]["image_size"])
    assert not skipped and len(kept) == record["films"]
    labels = np.array(labels)[kept]
    figures = pneumonia_figures(
        pneumonia_labels(labels), model.predict_proba(images), metadata["threshold"]
    )
    assert record["model"] == files["int8"], "calibrate the int8 file itself, not the run"
    assert figures["sensitivity"] >= record["target_sensitivity"]
    for key in ("sensitivity", "specificity", "accuracy"):
        assert figures[key] == pytest.approx(record["achieved"][key]), key
