"""One interface for every saved form: `.keras`, int8 and float16 `.tflite`, run folders."""

import numpy as np
import pytest

from pneumocnn.core.locations import MODEL_DIR_ENV_VAR, default_model, shipped_model_dir
from pneumocnn.core.metadata import FP16_FILE, INT8_FILE, KERAS_FILE, METADATA_FILE
from pneumocnn.core.task import decide, pneumonia_probability
from pneumocnn.runtime.runners import keras_beside, open_model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (6, 32, 32, 1)).astype(np.uint8)


@pytest.mark.parametrize("name", [INT8_FILE, FP16_FILE, KERAS_FILE])
def test_every_form_returns_one_probability_per_class(exported_model, images, name):
    model = open_model(exported_model / name)
    probabilities = model.predict_proba(images)
    assert probabilities.shape == (len(images), len(model.class_names)) == (6, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert model.task.name == "binary" and 0 < model.threshold < 1


def test_a_run_folder_and_its_export_give_the_same_float_probabilities(
    trained_run, exported_model, images
):
    from_run = open_model(trained_run).predict_proba(images)
    exported = open_model(exported_model / KERAS_FILE).predict_proba(images)
    np.testing.assert_allclose(from_run, exported, atol=1e-6)


def test_a_binary_probability_is_kept_exactly_in_column_one(exported_model, images):
    from pneumocnn.network.model import load_model

    raw = load_model(exported_model / KERAS_FILE).predict(images.astype(np.float32), verbose=0)
    probabilities = open_model(exported_model / KERAS_FILE).predict_proba(images)
    assert np.array_equal(pneumonia_probability(probabilities), raw[:, 0])


def test_a_prediction_is_the_shared_decision_of_its_probabilities(exported_model, tmp_path):
    from PIL import Image

    from pneumocnn.testing import synthetic_xray

    path = tmp_path / "x.png"
    Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (40, 40))).save(path)
    model = open_model(exported_model / INT8_FILE)
    result = model.predict_file(path)
    assert (
        result.label
        == decide([list(result.probabilities.values())], model.threshold, model.class_names)[0]
    )
    assert result.probability == pytest.approx(result.probabilities["PNEUMONIA"])


def test_the_default_model_follows_the_model_dir_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(MODEL_DIR_ENV_VAR, raising=False)
    assert default_model() == shipped_model_dir() / INT8_FILE
    monkeypatch.setenv(MODEL_DIR_ENV_VAR, str(tmp_path))
    assert default_model("keras", "subtype") == tmp_path / "pneumocnn_subtype.keras"


def test_the_keras_of_an_export_is_found_from_its_tflite(exported_model):
    assert keras_beside(exported_model / INT8_FILE) == exported_model / KERAS_FILE


def test_a_file_that_is_not_a_model_is_refused_by_its_suffix(exported_model):
    with pytest.raises(ValueError, match=r"Expected a model file \(\.tflite or \.keras\)"):
        open_model(exported_model / METADATA_FILE)
