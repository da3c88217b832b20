"""The RGB variant: the files stock image classifiers (MediaPipe Tasks, Android) can run.

A stock image classifier feeds three channels and names the class with the highest score.
`rgb_classifier` wraps the grayscale model: Pillow's luma (`LUMA_WEIGHTS`, rounded as Pillow
rounds) as the first layers, then the trained network, then a head whose per-class scores put
the decision threshold where argmax puts it (`operating_scores` is the same rule in numpy). The
luma and the head run in float32; between them runs the grayscale int8 file's own graph, grafted
(`pneumocnn.edge.graft.sandwich`), not converted again: on the same pixels, the variant makes the
grayscale int8 model's call exactly. With the model's input-guard calibration, the variant gets
a second output, the guard head (`pneumocnn.edge.guard_head`). Last, Pillow's resize from the data
set's 224 px films goes in front (`with_film_input`, `pneumocnn.edge.resize`), so a stock client
handed a 224 px film does not resize it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import ops
from tensorflow.lite.tools import flatbuffer_utils

from pneumocnn.core.metadata import FILM_SIZE
from pneumocnn.core.task import class_probabilities, pneumonia_probability
from pneumocnn.edge.convert import BATCH_SIZE, convert_float32, fixed_batch_saved_model
from pneumocnn.edge.embedded import without_packed_files
from pneumocnn.edge.graft import prepend, sandwich
from pneumocnn.edge.guard_head import add_guard_head, convert_guard_head, has_guard_head
from pneumocnn.edge.resize import resize_model

if TYPE_CHECKING:
    from pneumocnn.runtime.guard import GuardCalibration

# Pillow's "L" conversion of RGB, exactly: `L = (19595 R + 38470 G + 7471 B + 32768) >> 16`.
# These weights are that fixed-point rule's own (sixteenths of a 65536th are exact in float32, and
# so is their sum with pixels 0-255), and the RGB variant computes `floor(luma + 0.5)` in float32:
# the same gray film as Pillow, for colour images too, and a gray film (R = G = B) unchanged.
LUMA_WEIGHTS = (19595 / 65536, 38470 / 65536, 7471 / 65536)
# The RGB variant's float32 layers (see `rgb_variant`): the luma, its rounding, and the head that
# turns the grayscale model's output into per-class scores.
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
    # As the variant's head computes it (`_operating_scores_op`): where every other class's
    # probability is 0 (a saturated int8 softmax), so are their scores.
    relative = others / (others.max(axis=1, keepdims=True) + 1e-12)
    return np.concatenate([(1.0 - shifted)[:, None], shifted[:, None] * relative], axis=1)


def pneumonia_from_scores(scores: np.ndarray, threshold: float) -> np.ndarray:
    """P(pneumonia) back from the RGB variant's scores: `operating_scores` undone.

    NORMAL's score is `1 - P'`, and P' = q (1 - t) / (q (1 - t) + (1 - q) t) has the inverse
    q = P' t / (P' t + (1 - P') (1 - t)). This is what a stock client computes to show the
    probability `pneumocnn.predict` shows (the embedding page's snippets do it by hand).

    Args:
        scores: the variant's scores `(n, classes)`, NORMAL first.
        threshold: the operating threshold the variant was made with (`threshold` in the
            family's metadata), in (0, 1).

    Returns:
        float array `(n,)`.
    """
    shifted = 1.0 - np.asarray(scores, np.float64)[:, 0]
    return shifted * threshold / (shifted * threshold + (1.0 - shifted) * (1.0 - threshold))


def luma_model(image_size: int) -> keras.Model:
    """The RGB variant's front: raw 0-255 RGB `(1, image_size, image_size, 3)` in, Pillow's gray
    film out (a 1x1 linear map with `LUMA_WEIGHTS`, no bias, then `floor(x + 0.5)`)."""
    image = keras.Input((image_size, image_size, 3), batch_size=BATCH_SIZE, name="image")
    luma = keras.layers.Dense(1, use_bias=False, trainable=False, name=LUMA_LAYER)
    gray = keras.layers.Lambda(lambda x: ops.floor(x + 0.5), name=GRAY_LAYER)(luma(image))
    luma.set_weights([np.asarray(LUMA_WEIGHTS, np.float32).reshape(3, 1)])
    return keras.Model(image, gray, name="pneumocnn_luma")


def head_model(outputs: int, threshold: float) -> keras.Model:
    """The RGB variant's back: the grayscale model's output `(1, outputs)` in (P(pneumonia), or
    the subtype softmax), one operating score per class out (see `operating_scores`)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"The operating threshold must lie in (0, 1). Received: threshold={threshold!r}."
        )
    probabilities = keras.Input((outputs,), batch_size=BATCH_SIZE, name="probabilities")
    classes = max(2, outputs)
    scores = keras.layers.Lambda(
        lambda p: _operating_scores_op(p, threshold), name=HEAD_LAYER, output_shape=(classes,)
    )(probabilities)
    return keras.Model(probabilities, scores, name="pneumocnn_scores")


def rgb_classifier(keras_model, threshold: float) -> keras.Model:
    """The RGB variant in float, at the model's side (the file adds the resize in front, see
    `with_film_input`): RGB in, one score per class out.

    `luma_model`, then the whole trained grayscale model, then `head_model`, whose scores follow
    `operating_scores`, so the class with the highest score is the decision at `threshold`.
    `rgb_variant` makes the file from the same front and back around the int8 model.

    Args:
        keras_model: a pneumocnn model (grayscale input).
        threshold: the operating threshold on P(pneumonia), in (0, 1).

    Returns:
        A Keras model with input `(1, H, W, 3)` and output `(1, classes)` (2 for binary).
    """
    head = head_model(int(keras_model.output_shape[-1]), threshold)
    front = luma_model(int(keras_model.input_shape[1]))
    return keras.Model(front.input, head(keras_model(front.output)), name="pneumocnn_rgb")


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
    int8: bytes,
    folder: Path,
    guard: GuardCalibration | None = None,
) -> bytes:
    """The RGB variant's `.tflite`: float32 RGB in (raw 0-255 pixels), float32 scores out.

    `luma_model` and `head_model`, each converted to float32, are grafted before and after the
    grayscale int8 model's own graph (`pneumocnn.edge.graft.sandwich`), which is not converted
    again: its quantization is the grayscale file's by construction, so the operating decision is
    the grayscale model's exactly, and no two scores tie after rounding. Last, the file is made
    to take the data set's 224 px films, resized inside (`with_film_input`).

    Args:
        keras_model: the trained grayscale model (for its input and output shapes).
        threshold: the operating threshold.
        int8: the grayscale int8 `.tflite` made from `keras_model` (`pneumocnn.edge.convert`),
            as converted (no embedded metadata).
        folder: a scratch folder for the SavedModels.
        guard: the model's input-guard calibration: the variant then gets the guard head as its
            second output (`pneumocnn.edge.guard_head.add_guard_head`; the first output is the
            same either way). Defaults to `None`: no guard head.

    Returns:
        The `.tflite` flatbuffer (without TFLite metadata).
    """
    side = int(keras_model.input_shape[1])
    front = convert_float32(fixed_batch_saved_model(luma_model(side), Path(folder) / "luma"))
    head = head_model(int(keras_model.output_shape[-1]), threshold)
    back = convert_float32(fixed_batch_saved_model(head, Path(folder) / "scores"))
    variant = sandwich(front, int8, back)
    if has_guard_head(side, guard):
        variant = add_guard_head(variant, convert_guard_head(side, guard, LUMA_WEIGHTS, folder))
    return with_film_input(variant, side, folder)


def with_film_input(variant: bytes, image_size: int, folder: Path) -> bytes:
    """The RGB variant taking the data set's film size (`FILM_SIZE`, 224 px): Pillow's bilinear
    resize of each channel to `image_size`, exactly (`pneumocnn.edge.resize`), grafted before it.

    A stock classifier resizes whatever it is given to the model's input without antialiasing;
    handed a film of the input's size it passes the pixels on unchanged. So a 224 px film gets
    `pneumocnn.predict`'s own resize inside the file, and both outputs (scores and guard head)
    read the resized film. On gray films (R = G = B) the variant computes the grayscale int8
    model's output on Pillow's gray film exactly; on colour images Pillow's luma comes after the
    resize instead of before (a rounding apart). Unchanged when `image_size` is `FILM_SIZE`.

    Args:
        variant: the RGB variant at `image_size` (`rgb_variant` before this step).
        image_size: the model's input side.
        folder: a scratch folder for the SavedModel.

    Returns:
        The `.tflite` flatbuffer (without TFLite metadata).
    """
    if image_size == FILM_SIZE:
        return variant
    model = resize_model(FILM_SIZE, image_size)
    return prepend(
        convert_float32(fixed_batch_saved_model(model, Path(folder) / "resize")), variant
    )
