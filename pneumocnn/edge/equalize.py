"""Activation equalization: the same float function, with int8's range shared evenly by channels.

Full-integer int8 TFLite gives every tensor between two ops one scale for all its channels (the
range calibration saw). A channel whose activations stay small then uses a few of the 256 levels,
and int8 rounds it coarsely. A ReLU commutes with a positive per-channel factor (ReLU(s x) =
s ReLU(x)), and so do max pooling, average pooling and dropout; so scaling the output channels of
a BatchNormalization by `s` and the matching input channels of the next layer with weights by
`1 / s` leaves the model's function unchanged, while every channel of the ReLU's output can be
stretched to the tensor's full range. Inside a `SeparableConv2D`, TFLite keeps the depthwise
result as a tensor of its own; its channels are stretched likewise, by scaling each depthwise
filter by `t` and the pointwise weights it feeds by `1 / t`. Weights are quantized per output
channel, so the first factor of each pair costs nothing, and the second is capped
(`MAX_FACTOR`) so that no input channel's weights shrink to a few int8 levels.

This is data-aware cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.1, applied to activations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

# The largest factor a channel is stretched by (and so the most its consumer's weights shrink):
# 16 leaves a weight at least 1/16 of int8's range where it held all of it.
MAX_FACTOR = 16.0
# Outputs of the equalized model may differ from the original's by float32 rounding only.
TOLERANCE = 1e-4


class EqualizationError(RuntimeError):
    """Raised when the equalized model does not compute what the original computes."""


@dataclass(frozen=True)
class Equalized:
    """The result of `equalize_activations`.

    Attributes:
        model: the equalized copy (the original is not changed).
        relu_layers: the ReLU layers whose output channels were stretched.
        depthwise_layers: the `SeparableConv2D` layers whose depthwise channels were stretched.
        max_output_change: the largest absolute difference between the two models' outputs on
            the images (float32 rounding).
    """

    model: keras.Model
    relu_layers: tuple[str, ...]
    depthwise_layers: tuple[str, ...]
    max_output_change: float

    def record(self) -> dict:
        """The metadata entry an export stores."""
        return {
            "method": "activation equalization (per-channel ranges on the calibration films)",
            "relu_layers": len(self.relu_layers),
            "depthwise_layers": len(self.depthwise_layers),
            "max_factor": MAX_FACTOR,
        }


def _factors(peaks: np.ndarray) -> np.ndarray:
    """Per-channel factors that bring every channel's peak to the largest, capped."""
    peaks = np.asarray(peaks, np.float64)
    top = float(peaks.max())
    if top <= 0:
        return np.ones_like(peaks, dtype=np.float32)
    return np.minimum(top / np.maximum(peaks, top / MAX_FACTOR), MAX_FACTOR).astype(np.float32)


def _passes_scaling(layer) -> bool:
    """Layers through which a positive per-channel factor passes unchanged."""

    return isinstance(
        layer,
        keras.layers.MaxPooling2D
        | keras.layers.GlobalAveragePooling2D
        | keras.layers.AveragePooling2D
        | keras.layers.Dropout,
    )


def _is_plain_relu(layer) -> bool:
    return (
        isinstance(layer, keras.layers.ReLU)
        and layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def _is_chain(model) -> bool:
    """Every layer feeds only the next one (the shape `pneumocnn.network.model.build_model`
    makes)."""
    layers = model.layers
    try:
        for index, layer in enumerate(layers[:-1]):
            if len(layer._outbound_nodes) != 1:
                return False
            if layers[index + 1]._inbound_nodes[0].input_tensors[0] is not layer.output:
                return False
    except (AttributeError, IndexError):
        # Keras's graph internals moved: treat the model as one we cannot read.
        return False
    return True


def equalize_activations(model: keras.Model, images: np.ndarray) -> Equalized:
    """An equivalent copy of `model` whose activations use int8's range evenly across channels.

    Patterns handled (others are left as they are): `BatchNormalization -> ReLU -> (pooling,
    dropout) -> SeparableConv2D | Dense`, and the depthwise half of every `SeparableConv2D` with
    a depth multiplier of 1. Each channel's peak is measured on `images` (the calibration films,
    so the ranges equalized are the ones TFLite's calibration sees).

    Args:
        model: a chain-shaped Keras model (each layer feeds the next only).
        images: calibration images, raw 0-255, shaped as the model's input.

    Returns:
        An `Equalized`, its `model` computing the same outputs as `model` (checked on `images`).

    Raises:
        EqualizationError: if the outputs differ by more than float32 rounding (`TOLERANCE`).

    Example:

    >>> import keras
    >>> from pneumocnn.core.config import Config
    >>> from pneumocnn.network.model import build_model
    >>> model = build_model(Config(image_size=32))
    >>> images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    >>> equalized = equalize_activations(model, images)
    >>> len(equalized.relu_layers), len(equalized.depthwise_layers)
    (11, 10)
    >>> equalized.max_output_change < 1e-4
    True
    """

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if not _is_chain(clone):
        logger.info("Activation equalization skipped: the model is not a chain of layers")
        return Equalized(clone, (), (), 0.0)
    pairs = _relu_pairs(clone.layers)
    separable = [
        layer
        for layer in clone.layers
        if isinstance(layer, keras.layers.SeparableConv2D) and layer.depth_multiplier == 1
    ]
    probe = keras.Model(
        clone.inputs, [relu.output for _, relu, _ in pairs] + [layer.input for layer in separable]
    )
    outputs = probe.predict(images, batch_size=32, verbose=0)
    if len(pairs) + len(separable) == 1:
        outputs = [outputs]
    reference = model.predict(images, batch_size=32, verbose=0)
    # Depthwise results, measured before any change (the first step leaves them as they are).
    depthwise_factors = [
        _depthwise_factors(layer, inputs)
        for layer, inputs in zip(separable, outputs[len(pairs) :], strict=True)
    ]
    for pair, activations in zip(pairs, outputs[: len(pairs)], strict=True):
        _stretch_relu(*pair, _factors(activations.reshape(-1, activations.shape[-1]).max(axis=0)))
    # Depthwise results: each filter times t, the pointwise weights it feeds / t.
    for layer, factors in zip(separable, depthwise_factors, strict=True):
        weights = layer.get_weights()
        weights[0] = weights[0] * factors[None, None, :, None]
        weights[1] = weights[1] / factors[None, None, :, None]
        layer.set_weights(weights)
    change = float(np.max(np.abs(clone.predict(images, batch_size=32, verbose=0) - reference)))
    if change > TOLERANCE:
        raise EqualizationError(
            f"The equalized model's outputs differ from the original's by up to {change:.2e} "
            f"(more than float32 rounding, {TOLERANCE}) on {len(images)} calibration images. "
            "Received a model with a layer pattern the equalization misreads. Export with "
            "--no-equalize and report the model's layers."
        )
    return Equalized(
        clone,
        tuple(relu.name for _, relu, _ in pairs),
        tuple(layer.name for layer in separable),
        change,
    )


def _relu_pairs(layers: list) -> list[tuple]:
    """`(BatchNormalization, ReLU, consumer)` triples whose ReLU output can be stretched: the
    consumer (past pooling and dropout) is a Dense or a SeparableConv2D of depth multiplier 1."""
    pairs = []
    for index, layer in enumerate(layers[1:-1], start=1):
        producer = layers[index - 1]
        if not (
            _is_plain_relu(layer)
            and isinstance(producer, keras.layers.BatchNormalization)
            and producer.scale
            and producer.center
        ):
            continue
        after = [later for later in layers[index + 1 :] if not _passes_scaling(later)]
        consumer = after[0] if after else None
        if isinstance(consumer, keras.layers.Dense) or (
            isinstance(consumer, keras.layers.SeparableConv2D) and consumer.depth_multiplier == 1
        ):
            pairs.append((producer, layer, consumer))
    return pairs


def _depthwise_factors(layer, inputs: np.ndarray) -> np.ndarray:
    """The factors that bring each channel of a SeparableConv2D's depthwise result, on its
    calibration `inputs`, to the same peak."""
    result = tf.nn.depthwise_conv2d(
        inputs,
        layer.depthwise_kernel,
        strides=(1, *layer.strides, 1),
        padding=layer.padding.upper(),
        dilations=layer.dilation_rate,
    ).numpy()
    return _factors(np.abs(result.reshape(-1, result.shape[-1])).max(axis=0))


def _stretch_relu(producer, relu, consumer, factors: np.ndarray) -> None:
    """Stretches a ReLU's output channels by `factors`: its BatchNormalization's scale and
    shift times them (ReLU commutes with a positive scale), its consumer's inputs divided."""
    gamma, beta, *statistics = producer.get_weights()
    producer.set_weights([gamma * factors, beta * factors, *statistics])
    weights = consumer.get_weights()
    if isinstance(consumer, keras.layers.SeparableConv2D):
        weights[0] = weights[0] / factors[None, None, :, None]
    else:
        weights[0] = weights[0] / factors[:, None]
    consumer.set_weights(weights)
