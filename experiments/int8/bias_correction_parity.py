"""Does correcting the bias that int8's weight rounding adds keep a model's decisions closer to
its float model's?

int8 rounds each weight to one of 255 levels of its output channel's scale. For a given channel,
the rounding errors do not cancel on average over films: with the layer's input `x`, the int8
layer outputs `(W + e) x` where the float one outputs `W x`, a shift of `E[e x]` per output
channel that every film carries. Bias correction (Nagel et al., 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.2; here with the empirical mean of
`x` over the calibration films) subtracts that shift in float before converting: from the
BatchNormalization that follows a convolution (its moving mean), or from a Dense layer's bias.
The shipped network's SeparableConv2D layers have 3x3 depthwise filters of nine weights each,
where rounding errors average out least.

For each run folder, this converts the model as the export does (activation equalization, 600
training films, uint8 in and out) with and without the correction, and reports how often the
int8 model's decisions agree with the float model's on the validation films (the export's
check; labels not used), with the mean and largest change of P(NORMAL) / P(pneumonia). Appends
one JSON line per run and variant to `--output` (default
`experiments/int8/results/bias_correction_parity.jsonl`). Writes no model.

    .venv/bin/python experiments/int8/bias_correction_parity.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from site_calibration_parity import agreement, append_row  # beside this script
from subtype_parity import int8_probabilities  # beside this script

from pneumocnn.edge.convert import convert, fixed_batch_saved_model
from pneumocnn.edge.equalize import equalize_activations
from pneumocnn.edge.prepare import prepare

HERE = Path(__file__).resolve().parent
# TFLite's int8 weights: symmetric, per output channel, levels -127..127.
WEIGHT_LEVELS = 127
# Calibration films measured at once (their activations are held in memory together).
BATCH = 50


@dataclass(frozen=True)
class Corrected:
    """The result of `correct_rounding_bias`.

    Attributes:
        model: the corrected copy (the original is not changed).
        shifts: per corrected layer's name, the expected output shift removed, per channel.
        largest: the largest shift removed, in units of its layer's output standard deviation.
    """

    model: keras.Model
    shifts: dict[str, np.ndarray]
    largest: float


def rounded(weights: np.ndarray) -> np.ndarray:
    """`weights` (output channels last) as TFLite's int8 stores them, back in float.

    Example:

    >>> rounded(np.array([[1.0, 0.5], [0.3, -0.25]])).round(4).tolist()
    [[1.0, 0.5], [0.2992, -0.252]]
    """
    weights = np.asarray(weights, np.float64)
    peak = np.abs(weights.reshape(-1, weights.shape[-1])).max(axis=0)
    scale = np.where(peak > 0, peak / WEIGHT_LEVELS, 1.0)
    return np.clip(np.round(weights / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS) * scale


def _layer_output(layer, inputs, kernels: list[np.ndarray]) -> tf.Tensor:
    """The layer's linear part (no bias, no activation) with `kernels`."""
    kernels = [tf.constant(kernel, tf.float32) for kernel in kernels]
    if isinstance(layer, keras.layers.SeparableConv2D):
        return tf.nn.separable_conv2d(
            inputs,
            kernels[0],
            kernels[1],
            strides=(1, *layer.strides, 1),
            padding=layer.padding.upper(),
            dilations=layer.dilation_rate,
        )
    if isinstance(layer, keras.layers.Conv2D):
        return tf.nn.conv2d(
            inputs,
            kernels[0],
            strides=(1, *layer.strides, 1),
            padding=layer.padding.upper(),
            dilations=layer.dilation_rate,
        )
    return tf.matmul(inputs, kernels[0])


def _kernels(layer) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The layer's kernels as int8 stores them, and as they are."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = np.asarray(layer.depthwise_kernel)
        # TFLite's depthwise filter has its channels last: round per input channel.
        return [
            rounded(depthwise.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
            rounded(np.asarray(layer.pointwise_kernel)),
        ], [depthwise, np.asarray(layer.pointwise_kernel)]
    return [rounded(np.asarray(layer.kernel))], [np.asarray(layer.kernel)]


def _correctable(layers: list, index: int) -> bool:
    layer = layers[index]
    if not isinstance(
        layer, keras.layers.Conv2D | keras.layers.SeparableConv2D | keras.layers.Dense
    ):
        return False
    if isinstance(layer, keras.layers.Conv2D) and layer.groups != 1:
        return False
    following = layers[index + 1] if index + 1 < len(layers) else None
    return layer.use_bias or (
        isinstance(following, keras.layers.BatchNormalization) and following.center
    )


def correct_rounding_bias(model: keras.Model, images: np.ndarray) -> Corrected:
    """A copy of `model` whose int8 conversion carries no systematic weight-rounding shift.

    Handles Conv2D, SeparableConv2D and Dense layers that have a bias or feed a
    BatchNormalization (the shapes `pneumocnn.network.model.build_model` makes); other layers are
    left as they are. The copy computes slightly different float outputs (by the shifts removed);
    its int8 conversion computes, on average over `images`, what the original float model does.

    Args:
        model: a chain-shaped Keras model (each layer feeds the next only; see
            `pneumocnn.edge.equalize`), already equalized if the export equalizes.
        images: the calibration films, raw 0-255, shaped as the model's input.

    Returns:
        A `Corrected`.

    Example:

    >>> from pneumocnn.core.config import Config
    >>> from pneumocnn.network.model import build_model
    >>> model = build_model(Config(image_size=32))
    >>> images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    >>> sorted(correct_rounding_bias(model, images).shifts)[:2]
    ['block1_conv1', 'block1_conv2']
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    layers = clone.layers
    targets = [index for index in range(len(layers)) if _correctable(layers, index)]
    if not targets:
        return Corrected(clone, {}, 0.0)
    probe = keras.Model(clone.inputs, [layers[index].input for index in targets])
    sums = [0.0] * len(targets)
    squares = [0.0] * len(targets)
    count = [0] * len(targets)
    for start in range(0, len(images), BATCH):
        batch = np.asarray(images[start : start + BATCH], np.float32)
        inputs = probe.predict(batch, batch_size=BATCH, verbose=0)
        if len(targets) == 1:
            inputs = [inputs]
        for slot, (index, x) in enumerate(zip(targets, inputs, strict=True)):
            int8_kernels, float_kernels = _kernels(layers[index])
            exact = _layer_output(layers[index], x, float_kernels).numpy()
            shift = _layer_output(layers[index], x, int8_kernels).numpy() - exact
            channels = shift.shape[-1]
            sums[slot] = sums[slot] + shift.reshape(-1, channels).sum(axis=0)
            squares[slot] = squares[slot] + (exact.reshape(-1, channels) ** 2).sum(axis=0)
            count[slot] += shift.reshape(-1, channels).shape[0]
    shifts, largest = {}, 0.0
    for slot, index in enumerate(targets):
        layer = layers[index]
        shift = (sums[slot] / count[slot]).astype(np.float32)
        spread = np.sqrt(squares[slot] / count[slot])
        largest = max(largest, float(np.max(np.abs(shift) / np.maximum(spread, 1e-12))))
        shifts[layer.name] = shift
        if layer.use_bias:
            weights = layer.get_weights()
            weights[-1] = weights[-1] - shift
            layer.set_weights(weights)
        else:
            batchnorm = layers[index + 1]
            weights = batchnorm.get_weights()
            # gamma, beta, moving mean, moving variance (scale and center on): the mean absorbs it.
            mean_slot = len(weights) - 2
            weights[mean_slot] = weights[mean_slot] + shift
            batchnorm.set_weights(weights)
    return Corrected(clone, shifts, largest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="Run folders (a training run or OUT/run).")
    parser.add_argument("--calibration-images", type=int, default=600)
    parser.add_argument("--output", default=str(HERE / "results" / "bias_correction_parity.jsonl"))
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        prepared = prepare(run, calibration_images=args.calibration_images)
        names, threshold = list(prepared.source.class_names), prepared.threshold
        equalized = equalize_activations(prepared.keras_model, prepared.calibration).model
        corrected = correct_rounding_bias(equalized, prepared.calibration)
        for variant, model in (
            ("equalized", equalized),
            ("equalized + bias correction", corrected.model),
        ):
            with tempfile.TemporaryDirectory() as scratch:
                flatbuffer = convert(
                    fixed_batch_saved_model(model, Path(scratch) / "sm"), prepared.calibration
                )
                int8 = int8_probabilities(flatbuffer, prepared.val.images, Path(scratch))
            change = int8[:, 0] - prepared.float_probabilities[:, 0]
            row = {
                "run": str(run),
                "task": prepared.config.task,
                "calibration_images": args.calibration_images,
                "variant": variant,
                "threshold": threshold,
                "mean_change": float(change.mean()),
                "mean_abs_change": float(np.abs(change).mean()),
                "max_abs_change": float(np.abs(change).max()),
            }
            row["agreement"], row["pneumonia_agreement"] = agreement(
                prepared.float_probabilities, int8, threshold, names
            )
            if variant != "equalized":
                row["layers"] = len(corrected.shifts)
                row["largest_shift"] = corrected.largest
            append_row(output, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
