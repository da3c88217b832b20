"""Activation equalization: the same float function, int8's range shared evenly by channels."""

from __future__ import annotations

import keras
import numpy as np

from pneumocnn.core.config import Config
from pneumocnn.edge.equalize import MAX_FACTOR, equalize_activations
from pneumocnn.network.model import build_model


def _images(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 1)).astype("float32")


def _uneven_model(seed: int = 0) -> keras.Model:
    """The package's model at 32 px with BatchNormalization weights drawn so that channels'
    ranges differ by up to 30x (as trained models' do, less evenly)."""
    keras.utils.set_random_seed(seed)
    model = build_model(Config(image_size=32))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.1, 3.0, channels).astype("float32"),
                    rng.uniform(-0.5, 0.5, channels).astype("float32"),
                    rng.normal(0, 0.1, channels).astype("float32"),
                    rng.uniform(0.5, 2.0, channels).astype("float32"),
                ]
            )
    return model


def test_the_equalized_model_computes_what_the_original_computes_on_other_images():
    model = _uneven_model()
    equalized = equalize_activations(model, _images(16, 32, seed=1))
    unseen = _images(8, 32, seed=2)
    np.testing.assert_allclose(
        equalized.model.predict(unseen, verbose=0), model.predict(unseen, verbose=0), atol=1e-5
    )
    # The original is left as it was.
    assert equalized.model is not model
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(model.get_weights(), equalized.model.get_weights(), strict=True)
    )


def test_every_relu_channel_is_stretched_towards_the_tensors_peak():
    model = _uneven_model()
    images = _images(16, 32, seed=1)
    equalized = equalize_activations(model, images)
    names = list(equalized.relu_layers)
    assert len(names) == 11  # the stem and ten separable convolutions

    def peaks(of):
        outputs = keras.Model(of.inputs, [of.get_layer(n).output for n in names]).predict(
            images, verbose=0
        )
        return [out.reshape(-1, out.shape[-1]).max(axis=0) for out in outputs]

    for name, before, after in zip(names, peaks(model), peaks(equalized.model), strict=True):
        # Each channel reaches the peak, unless the cap stopped it at MAX_FACTOR times its own.
        reached = np.isclose(after, after.max(), rtol=1e-3)
        capped = np.isclose(after, before * MAX_FACTOR, rtol=1e-3)
        assert np.all(reached | capped), name
        live = before > 0  # a channel that never fires stays at zero
        if live.sum() > 1:
            assert np.mean(after[live] / after.max()) > np.mean(before[live] / before.max()), name


def _two_channel_model() -> keras.Model:
    """Raw pixels -> a convolution of two channels -> BatchNormalization that leaves the second
    channel 100x narrower -> ReLU -> pooling -> a linear output weighing it 100x more: both
    channels count alike, and int8 gives the narrow one a few levels of the shared range."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(2, 3, padding="same", use_bias=False)(x)
    bn = keras.layers.BatchNormalization()
    x = keras.layers.ReLU()(bn(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1)
    model = keras.Model(inputs, dense(x))
    model.layers[2].set_weights([np.full((3, 3, 1, 2), 0.2, "float32")])
    bn.set_weights(
        [np.array([1.0, 0.01], "float32"), np.zeros(2, "float32")]
        + [
            np.zeros(2, "float32"),
            np.ones(2, "float32"),
        ]
    )
    dense.set_weights([np.array([[1.0], [100.0]], "float32"), np.zeros(1, "float32")])
    return model


def test_int8_rounds_a_narrow_channel_far_less_once_equalized(tmp_path):
    from pneumocnn.edge.convert import convert, fixed_batch_saved_model, pin_input_range
    from pneumocnn.runtime.lite import dequantize, open_interpreter, quantize

    model = _two_channel_model()
    calibration = pin_input_range(_images(64, 8, seed=0))
    films = _images(64, 8, seed=100)
    reference = model.predict(films, verbose=0).ravel()

    def int8_error(candidate, folder):
        saved = fixed_batch_saved_model(candidate, tmp_path / folder / "sm")
        path = tmp_path / folder / "model.tflite"
        path.write_bytes(convert(saved, calibration))
        interpreter = open_interpreter(path)
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        outputs = []
        for film in films:
            interpreter.set_tensor(source["index"], quantize(film[np.newaxis], source))
            interpreter.invoke()
            outputs.append(dequantize(interpreter.get_tensor(target["index"]), target).item())
        return np.mean(np.abs(np.array(outputs) - reference))

    plain = int8_error(model, "plain")
    equalized = int8_error(equalize_activations(model, calibration).model, "equalized")
    # The narrow channel gets MAX_FACTOR (16) times more levels; the output's own rounding
    # remains. Measured: about fifteen times less error.
    assert equalized < plain / 3, (plain, equalized)


def test_a_model_that_is_not_a_chain_is_left_as_it_is():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    b = keras.layers.ReLU()(keras.layers.BatchNormalization()(a))
    model = keras.Model(inputs, keras.layers.Add()([a, b]))
    equalized = equalize_activations(model, _images(4, 8, seed=0))
    assert equalized.relu_layers == () and equalized.depthwise_layers == ()
    for before, after in zip(model.get_weights(), equalized.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
