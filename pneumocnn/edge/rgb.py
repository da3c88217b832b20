"""The RGB variant: the files stock image classifiers (MediaPipe Tasks, Android) can run.

A stock image classifier feeds three channels and names the class with the highest score.
`rgb_classifier` wraps the grayscale model: Pillow's luma (`LUMA_WEIGHTS`, rounded as Pillow
rounds) as the first layers, then the trained network, then a head whose per-class scores put
the decision threshold where argmax puts it (`operating_scores` is the same rule in numpy). The
luma and the head run in float32 and the network in int8, quantized as the grayscale model is: on
the same pixels, the variant makes the grayscale int8 model's call exactly. With the model's
input-guard calibration, the variant gets a second output, the guard head
(`pneumocnn.edge.guard_head`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import ops
from tensorflow.lite.tools import flatbuffer_utils

from pneumocnn.core.task import class_probabilities, pneumonia_probability
from pneumocnn.edge.convert import BATCH_SIZE, convert, fixed_batch_saved_model
from pneumocnn.edge.embedded import without_packed_files
from pneumocnn.edge.guard_head import add_guard_head, convert_guard_head, has_guard_head

if TYPE_CHECKING:
    from pneumocnn.runtime.guard import GuardCalibration

# Pillow's "L" conversion of RGB, exactly: `L = (19595 R + 38470 G + 7471 B + 32768) >> 16`.
# These weights are that fixed-point rule's own (sixteenths of a 65536th are exact in float32, and
# so is their sum with pixels 0-255), and the RGB variant computes `floor(luma + 0.5)` in float32:
# the same gray film as Pillow, for colour images too, and a gray film (R = G = B) unchanged.
LUMA_WEIGHTS = (19595 / 65536, 38470 / 65536, 7471 / 65536)
# The RGB variant's layers that stay float32 (see `rgb_variant`): the luma, its rounding, and the
# head that turns the grayscale model's output into per-class scores.
LUMA_LAYER, GRAY_LAYER, HEAD_LAYER = "luma", "gray", "scores"


def operating_scores(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Per-class scores whose argmax is the decision at `threshold` (`pneumocnn.core.task.decide`).

    The odds of pneumonia are divided by the threshold's odds, so the shifted
    P'(pneumonia) = q (1 - t) / (q (1 - t) + (1 - q) t) is 0.5 exactly where q = t. NORMAL scores
    `1 - P'`; the likeliest other class `P'`; any further class `P'` times the ratio of its
    probability to the likeliest one's (binary: `[1 - P', P']`). The RGB variant's head computes
    the same inside the model.

    Args:
        probabilities: a model's per-class probabilities `(n, classes)`, NORMAL first, or a
            binary model's P(positive) `(n,)` (see `pneumocnn.core.task.class_probabilities`).
        threshold: the operating threshold on P(pneumonia), in (0, 1).

    Returns:
        float array `(n, classes)`.
    """
    rows = class_probabilities(np.asarray(probabilities, np.float64))
    pneumonia = pneumonia_probability(rows)
    odds = threshold / (1.0 - threshold)
    shifted = pneumonia / (pneumonia + odds * (1.0 - pneumonia) + 1e-12)
    others = rows[:, 1:]
    relative = others / (others.max(axis=1, keepdims=True) + 1e-12)
    relative[others.max(axis=1) == 0] = 1.0
    return np.concatenate([(1.0 - shifted)[:, None], shifted[:, None] * relative], axis=1)


def rgb_classifier(keras_model, threshold: float):
    """Wraps the grayscale model for stock image classifiers: RGB in, one score per class out.

    The first layers are Pillow's luma (a 1x1 linear map with `LUMA_WEIGHTS`, no bias, then
    `floor(x + 0.5)`) on raw 0-255 RGB, which gives Pillow's gray film exactly; then the whole
    trained grayscale model; then a head (`HEAD_LAYER`) whose scores follow `operating_scores`,
    so the class with the highest score is the decision at `threshold`. `rgb_variant` keeps the
    luma and the head in float32 and quantizes the network as the grayscale model's.

    Args:
        keras_model: a pneumocnn model (grayscale input).
        threshold: the operating threshold on P(pneumonia), in (0, 1).

    Returns:
        A Keras model with input `(1, H, W, 3)` and output `(1, classes)` (2 for binary).
    """

    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"The operating threshold must lie in (0, 1). Received: threshold={threshold!r}."
        )
    size = keras_model.input_shape[1:3]
    classes = max(2, keras_model.output_shape[-1])
    image = keras.Input((*size, 3), batch_size=BATCH_SIZE, name="image")
    luma = keras.layers.Dense(1, use_bias=False, trainable=False, name=LUMA_LAYER)
    gray = keras.layers.Lambda(lambda x: ops.floor(x + 0.5), name=GRAY_LAYER)(luma(image))
    probabilities = keras_model(gray)
    outputs = keras.layers.Lambda(
        lambda p: _operating_scores_op(p, threshold), name=HEAD_LAYER, output_shape=(classes,)
    )(probabilities)
    luma.set_weights([np.asarray(LUMA_WEIGHTS, np.float32).reshape(3, 1)])
    return keras.Model(image, outputs, name="pneumocnn_rgb")


def _threshold_odds(threshold: float) -> float:
    """The odds the RGB variant's head divides by: the threshold's, taken a hair (a millionth)
    below it, so a film whose output equals the threshold, which `pneumocnn.core.task.decide` calls
    positive, scores just above 0.5."""
    nudged = threshold * (1.0 - 1e-6)
    return nudged / (1.0 - nudged)


def _operating_scores_op(probabilities, threshold: float):
    """`operating_scores` in Keras ops, on a binary model's `(n, 1)` P(pneumonia) or a subtype
    model's softmax `(n, classes)`, NORMAL first, with the odds of `_threshold_odds` (the one
    constant that depends on the threshold; `retarget_rgb_variant` rewrites it)."""

    odds = _threshold_odds(threshold)
    if probabilities.shape[-1] == 1:
        pneumonia = probabilities
        shifted = pneumonia / (pneumonia + odds * (1.0 - pneumonia))
        return ops.concatenate([1.0 - shifted, shifted], axis=1)
    normal = probabilities[:, :1]
    subtypes = probabilities[:, 1:]
    pneumonia = 1.0 - normal
    shifted = pneumonia / (pneumonia + odds * normal + 1e-12)
    relative = subtypes / (ops.max(subtypes, axis=1, keepdims=True) + 1e-12)
    return ops.concatenate([1.0 - shifted, shifted * relative], axis=1)


def retarget_rgb_variant(model: bytes, threshold: float, new_threshold: float) -> bytes:
    """The RGB variant (see `rgb_variant`) with its operating threshold moved, nothing else.

    The threshold lives in one float32 constant of the float head, its odds (see
    `_threshold_odds`); that constant is rewritten in the flatbuffer with TensorFlow's
    `flatbuffer_utils`, so the int8 network and its quantization stay the grayscale model's
    (a new conversion would calibrate them anew). The embedded TFLite metadata is kept as it
    was: embed it again, since its description names the threshold.

    Args:
        model: the RGB variant's `.tflite` flatbuffer.
        threshold: the threshold it was made with.
        new_threshold: the threshold to move it to, in (0, 1).

    Returns:
        The `.tflite` flatbuffer, without the packed associated files (see
        `without_packed_files`).

    Raises:
        ValueError: if `new_threshold` is outside (0, 1), or the model's head does not hold
            exactly one constant with `threshold`'s odds (not an RGB variant made with
            `threshold` by this version of `rgb_variant`).
    """

    if not 0.0 < new_threshold < 1.0:
        raise ValueError(
            f"The operating threshold must lie in (0, 1). Received: new_threshold="
            f"{new_threshold!r}."
        )
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(without_packed_files(model)))
    old = np.float32(_threshold_odds(threshold)).tobytes()
    found = {
        tensor.buffer
        for subgraph in tree.subgraphs
        for tensor in subgraph.tensors
        if f"/{HEAD_LAYER}_".encode() in tensor.name
        and tree.buffers[tensor.buffer].data is not None
        and tree.buffers[tensor.buffer].data.tobytes() == old
    }
    if len(found) != 1:
        raise ValueError(
            f"The RGB variant's head holds {len(found)} constants with the odds of the threshold "
            f"{threshold} (need exactly one): not an RGB variant made at that threshold by this "
            "version of pneumocnn. Re-export the model (python -m pneumocnn.export RUN_DIR)."
        )
    new = np.frombuffer(np.float32(_threshold_odds(new_threshold)).tobytes(), np.uint8)
    tree.buffers[found.pop()].data = new.copy()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def rgb_variant(
    keras_model,
    threshold: float,
    calibration: np.ndarray,
    folder: Path,
    guard: GuardCalibration | None = None,
) -> bytes:
    """Converts `rgb_classifier` to int8 with its head in float32 (float32 RGB in, raw 0-255
    pixels; float32 scores out).

    The luma (`LUMA_LAYER`, `GRAY_LAYER`) and the head (`HEAD_LAYER`) stay float32; between
    them, the grayscale int8 network, calibrated on the same gray films (the float luma gives
    them exactly), so it is quantized as the grayscale model is and computes the same output.
    So the operating decision is the grayscale model's exactly, and no two scores tie after
    rounding. The input is float32 (raw 0-255 pixels) because the converter's selective
    quantization (`pneumocnn.edge.convert.convert(..., float_layers=...)`, the converter the
    grayscale models go through) keeps float32 at both ends.

    Args:
        keras_model: the trained grayscale model.
        threshold: the operating threshold.
        calibration: the grayscale calibration images `(n, H, W, 1)`, raw 0-255; repeated to
            three channels.
        folder: a scratch folder for the SavedModel.
        guard: the model's input-guard calibration: the variant then gets the guard head as its
            second output (`pneumocnn.edge.guard_head.add_guard_head`; the first output is the
            same either way). Defaults to `None`: no guard head.

    Returns:
        The `.tflite` flatbuffer (without TFLite metadata).
    """
    saved_model = fixed_batch_saved_model(
        rgb_classifier(keras_model, threshold), Path(folder) / "rgb_saved_model"
    )
    variant = convert(
        saved_model,
        np.repeat(calibration, 3, axis=-1),
        float_layers=(LUMA_LAYER, GRAY_LAYER, HEAD_LAYER),
    )
    side = int(keras_model.input_shape[1])
    if not has_guard_head(side, guard):
        return variant
    return add_guard_head(variant, convert_guard_head(side, guard, LUMA_WEIGHTS, folder))
