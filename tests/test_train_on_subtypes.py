"""`Config.train_on_subtypes`: a binary model whose network trains on NORMAL / BACTERIAL / VIRAL
and whose one output is 1 - P(NORMAL)."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers import TINY_RUN, flags
from pneumocnn import train
from pneumocnn.core.config import Config
from pneumocnn.core.errors import DataError
from pneumocnn.data.folders import find_dataset
from pneumocnn.data.split import load_split
from pneumocnn.edge.export import export
from pneumocnn.network.model import (
    OUTPUT_LAYER,
    SUBTYPE_HEAD_LAYER,
    build_model,
    fitting_model,
    load_model,
    with_pneumonia_head,
)
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.training import loop
from pneumocnn.training.compile import PneumoniaAUC

TINY_MODEL = dict(image_size=32, base_filters=4, num_blocks=2, train_on_subtypes=True)


@pytest.fixture(scope="module")
def subtype_trained_run(tmp_path_factory):
    """A binary run trained briefly on synthetic NORMAL / BACTERIAL / VIRAL films."""
    from pneumocnn.testing import write_dataset

    base = tmp_path_factory.mktemp("binary_on_subtypes")
    root = write_dataset(
        base / "chest_xray", patients=40, images_per_patient=2, seed=5, subtypes=True
    )
    run_dir = base / "run"
    argv = flags(data_dir=root, output_dir=run_dir, **{**TINY_RUN, "epochs": 3, "batch_size": 8})
    assert train.main([*argv, "--train-on-subtypes"]) == 0
    return run_dir


def test_the_output_is_one_minus_normal_of_the_three_class_softmax():
    model = build_model(Config(**TINY_MODEL))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    three = np.asarray(fitting_model(model)(images))
    assert model.output_shape == (None, 1)
    assert three.shape == (4, 3)
    np.testing.assert_allclose(np.asarray(model(images))[:, 0], 1 - three[:, 0], atol=1e-6)


def test_only_the_three_class_network_trains():
    model = build_model(Config(**TINY_MODEL))
    assert not model.get_layer(OUTPUT_LAYER).trainable
    trained = {id(w) for w in fitting_model(model).trainable_weights}
    assert trained == {id(w) for w in model.trainable_weights}


def test_a_plain_model_is_its_own_fitting_model():
    model = build_model(Config(image_size=32, base_filters=4, num_blocks=2))
    assert fitting_model(model) is model


def test_a_subtype_model_is_the_same_with_or_without_train_on_subtypes():
    # A subtype model trains on the three classes anyway: its head stays the softmax.
    model = build_model(
        Config(task="subtype", image_size=32, base_filters=4, num_blocks=2, train_on_subtypes=True)
    )
    assert model.output_shape == (None, 3)
    assert model.get_layer(OUTPUT_LAYER).get_config()["activation"] == "softmax"
    assert SUBTYPE_HEAD_LAYER not in [layer.name for layer in model.layers]


def test_pneumonia_auc_reads_a_softmax_as_one_minus_normal():
    one_hot = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype="float32")
    # P(NORMAL): 0.9 and 0.2 for the NORMAL films, 0.3 and 0.1 for the pneumonia films.
    softmax = np.array(
        [[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]], dtype="float32"
    )
    auc = PneumoniaAUC()
    auc.update_state(one_hot, softmax)
    # 1 - P(NORMAL): NORMAL films 0.1 and 0.8, pneumonia 0.7 and 0.9: 3 of 4 pairs ranked right.
    assert float(auc.result()) == pytest.approx(0.75, abs=0.01)


def test_the_binary_form_keeps_the_checkpoint_weights():
    config = Config(**TINY_MODEL, seed=3)
    trained = fitting_model(build_model(config))
    binary = with_pneumonia_head(trained, config)
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(binary(images))[:, 0], 1 - np.asarray(trained(images))[:, 0], atol=1e-6
    )


def test_the_run_saves_a_one_output_binary_model_and_binary_labels(subtype_trained_run):
    run_dir = subtype_trained_run
    model = load_model(run_dir / "best.keras")
    assert model.output_shape == (None, 1)
    assert SUBTYPE_HEAD_LAYER in [layer.name for layer in model.layers]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert summary["trained_on"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert len(summary["train_images_per_class"]) == 2
    assert set(pd.read_csv(run_dir / "split.csv")["label"]) == {0, 1}
    history = pd.read_csv(run_dir / "history.csv")
    assert history["val_auc"].between(0, 1).all()


def test_the_run_exports_an_int8_file_with_one_output_near_the_float_model(
    subtype_trained_run, tmp_path
):
    export(subtype_trained_run, tmp_path, calibration_images=40, require_parity=False)
    lite = LiteModel(tmp_path / "pneumocnn_int8.tflite")
    keras_model = load_model(tmp_path / "pneumocnn.keras")
    dataset = find_dataset(
        json.loads((subtype_trained_run / "config.json").read_text())["data_dir"]
    )
    split = pd.read_csv(subtype_trained_run / "split.csv")
    val = load_split(split, "val", TINY_RUN["image_size"], dataset.root)
    lite_p = lite.predict_proba(val.images)
    float_p = np.asarray(keras_model.predict(val.images.astype("float32"), verbose=0))
    assert lite_p.shape == (len(val.labels), 2)
    # Stated tolerance: a few int8 steps of the [0, 1] output (1/255 each).
    np.testing.assert_allclose(lite_p[:, 1], float_p[:, 0], atol=0.05)


def test_files_without_a_subtype_are_named_when_training_on_subtypes(make_dataset, tmp_path):
    root = make_dataset(patients=4, subtypes=True)
    stray = root / "train" / "PNEUMONIA" / "scan_0042.png"
    stray.write_bytes((root / "train" / "NORMAL" / "IM-0000-0002.png").read_bytes())
    with pytest.raises(DataError, match=r"scan_0042\.png.*--train-on-subtypes"):
        loop.train(
            Config(
                **{**TINY_RUN, "epochs": 1},
                train_on_subtypes=True,
                data_dir=str(root),
                output_dir=str(tmp_path / "run"),
            )
        )
