"""The RGB variant: the files stock image classifiers (MediaPipe Tasks, Android) can run.

A stock image classifier feeds three channels and names the class with the highest score.
`rgb_classifier` wraps the grayscale model: Pillow's luma (`LUMA_WEIGHTS`, rounded as Pillow
rounds) as the first layers, then the trained network, then a head whose per-class scores put
the decision threshold where argmax puts it (`operating_scores` is the same rule in numpy). The
luma and the head run in float32 and the network in int8, quantized as the grayscale model is: on
the same pixels, the variant makes the grayscale int8 model's call exactly.

With the model's input-guard calibration (`pneumocnn.runtime.guard.GuardCalibration`), the
variant has a second output, the guard head (`GUARD_LAYER`, float32 too): two scores,
`GUARD_LABELS`, whose argmax says whether the input is like the training films. It computes the
guard's out-of-distribution score on the model's input (the 16x16 thumbnail of the gray film,
standardised, Mahalanobis distance under the stored PCA) and the refusal checks that the model's
input still allows (near-constant; strongly coloured); the size and aspect-ratio checks need the
image before a client resized it, so only the clients that have it (Python, the web page) apply
them. A stock classifier (MediaPipe's ImageClassifier reads one classification per output
tensor) names both from the embedded metadata.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import ops
from tensorflow.lite.tools import flatbuffer_utils

from pneumocnn.core.task import class_probabilities, pneumonia_probability
from pneumocnn.edge.convert import BATCH_SIZE, convert, fixed_batch_saved_model
from pneumocnn.edge.embedded import GUARD_LABELS, without_packed_files
from pneumocnn.runtime.guard import DEFAULT_LIMITS, GuardCalibration

# Pillow's "L" conversion of RGB, exactly: `L = (19595 R + 38470 G + 7471 B + 32768) >> 16`.
# These weights are that fixed-point rule's own (sixteenths of a 65536th are exact in float32, and
# so is their sum with pixels 0-255), and the RGB variant computes `floor(luma + 0.5)` in float32:
# the same gray film as Pillow, for colour images too, and a gray film (R = G = B) unchanged.
LUMA_WEIGHTS = (19595 / 65536, 38470 / 65536, 7471 / 65536)
# The RGB variant's layers that stay float32 (see `rgb_variant`): the luma, its rounding, and the
# head that turns the grayscale model's output into per-class scores.
LUMA_LAYER, GRAY_LAYER, HEAD_LAYER = "luma", "gray", "scores"
# The guard head's layer (its classes: `pneumocnn.edge.embedded.GUARD_LABELS`).
GUARD_LAYER = "guard"
# The OOD score the guard head gives an input that fails a refusal check: far past 1.
REFUSED_SCORE = 1000.0


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


def guard_head_op(image, gray, calibration: GuardCalibration):
    """The guard head in Keras ops: `[1 / (1 + s), s / (1 + s)]` per input, with `s` the
    out-of-distribution score (`REFUSED_SCORE` where a refusal check on the model's input fails).

    Args:
        image: the RGB input `(n, H, W, 3)`, raw 0-255 (for the colourfulness).
        gray: its gray film `(n, H, W, 1)` (the variant's `GRAY_LAYER`).
        calibration: the model's guard calibration; `H` must be a multiple of its thumbnail
            side (the thumbnail is a box average, as Pillow's BOX resize takes it).
    """
    size = calibration.thumbnail_size
    pool = int(gray.shape[1]) // size
    thumbnail = ops.reshape(ops.average_pool(gray, pool, strides=pool), (-1, size * size))
    mean = ops.mean(thumbnail, axis=1, keepdims=True)
    spread = ops.sqrt(ops.mean(ops.square(thumbnail - mean), axis=1, keepdims=True))
    centred = (thumbnail - mean) / ops.maximum(spread, 1.0) - calibration.mean.astype("float32")
    projected = ops.matmul(centred, calibration.components.T.astype("float32"))
    residual = ops.sum(ops.square(centred), axis=1) - ops.sum(ops.square(projected), axis=1)
    distance = ops.sqrt(
        ops.sum(ops.square(projected) / calibration.variances.astype("float32"), axis=1)
        + ops.maximum(residual, 0.0) / calibration.residual_variance
    )
    score = distance / calibration.distance_threshold
    limits = {**DEFAULT_LIMITS, **(calibration.limits or {})}
    pixels = ops.reshape(gray, (-1, int(np.prod(gray.shape[1:]))))
    near_constant = ops.std(pixels, axis=1) < limits["min_std"]
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    rg = ops.reshape(red - green, (-1, pixels.shape[1]))
    yb = ops.reshape(0.5 * (red + green) - blue, (-1, pixels.shape[1]))
    colourfulness = ops.sqrt(ops.var(rg, axis=1) + ops.var(yb, axis=1)) + 0.3 * ops.sqrt(
        ops.square(ops.mean(rg, axis=1)) + ops.square(ops.mean(yb, axis=1))
    )
    refused = ops.logical_or(near_constant, colourfulness > limits["max_colourfulness"])
    score = ops.where(refused, ops.maximum(score, REFUSED_SCORE), score)[:, None]
    return ops.concatenate([1.0 / (1.0 + score), score / (1.0 + score)], axis=1)


def has_guard_head(keras_model, calibration: GuardCalibration | None) -> bool:
    """Whether the RGB variant of `keras_model` gets the guard head: it needs a calibration,
    and an input side that is a multiple of the thumbnail's."""
    side = keras_model.input_shape[1]
    return calibration is not None and side % calibration.thumbnail_size == 0


def rgb_classifier(keras_model, threshold: float, calibration: GuardCalibration | None = None):
    """Wraps the grayscale model for stock image classifiers: RGB in, one score per class out.

    The first layers are Pillow's luma (a 1x1 linear map with `LUMA_WEIGHTS`, no bias, then
    `floor(x + 0.5)`) on raw 0-255 RGB, which gives Pillow's gray film exactly; then the whole
    trained grayscale model; then a head (`HEAD_LAYER`) whose scores follow `operating_scores`,
    so the class with the highest score is the decision at `threshold`. `rgb_variant` keeps the
    luma and the head in float32 and quantizes the network as the grayscale model's.

    Args:
        keras_model: a pneumocnn model (grayscale input).
        threshold: the operating threshold on P(pneumonia), in (0, 1).
        calibration: the model's input-guard calibration, for a second output, the guard head
            (see `guard_head_op`). Defaults to `None`: no guard head.

    Returns:
        A Keras model with input `(1, H, W, 3)` and output `(1, classes)` (2 for binary), then
        `(1, 2)` from the guard head when it has one.
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
    if not has_guard_head(keras_model, calibration):
        return keras.Model(image, outputs, name="pneumocnn_rgb")
    guard_scores = keras.layers.Lambda(
        lambda pair: guard_head_op(pair[0], pair[1], calibration),
        name=GUARD_LAYER,
        output_shape=(len(GUARD_LABELS),),
    )([image, gray])
    return keras.Model(image, [outputs, guard_scores], name="pneumocnn_rgb")


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
        guard: the model's input-guard calibration, for the guard head (float32, see
            `guard_head_op`). Defaults to `None`: no guard head.

    Returns:
        The `.tflite` flatbuffer (without TFLite metadata).
    """
    model = rgb_classifier(keras_model, threshold, guard)
    saved_model = fixed_batch_saved_model(model, Path(folder) / "rgb_saved_model")
    float_layers = (LUMA_LAYER, GRAY_LAYER, HEAD_LAYER)
    if len(model.outputs) > 1:
        float_layers += (GUARD_LAYER,)
    converted = convert(saved_model, np.repeat(calibration, 3, axis=-1), float_layers=float_layers)
    return outputs_in_signature_order(converted)


def outputs_in_signature_order(model: bytes) -> bytes:
    """The `.tflite` with its outputs listed in the order of its signature's (`output_0`, then
    `output_1`, ...), as the Keras model returns them.

    The converter can list a two-output model's tensors the other way round; stock clients
    (MediaPipe's ImageClassifier, `LiteModel`) take the outputs by position, so the operating
    scores must come first and the guard head second. A one-output model comes back unchanged.
    """
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    subgraph = tree.subgraphs[0]
    if len(subgraph.outputs) < 2 or not tree.signatureDefs:
        return model
    names = {
        item.name.decode() if isinstance(item.name, bytes) else item.name: item.tensorIndex
        for item in tree.signatureDefs[0].outputs
    }
    order = [names[name] for name in sorted(names, key=lambda name: int(name.rsplit("_", 1)[1]))]
    if list(subgraph.outputs) == order:
        return model
    subgraph.outputs = np.asarray(order, dtype=np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))
