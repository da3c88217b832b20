"""The RGB variant's guard head: the input guard inside the file a stock image classifier runs.

A second output of `pneumocnn_rgb_int8.tflite`, in float32: two scores, `GUARD_LABELS`, whose
argmax says whether the input is like the training films. It computes, on the model's input,
the guard's out-of-distribution score (`pneumocnn.runtime.guard`: the 16x16 thumbnail of the
gray film, standardised, Mahalanobis distance under the PCA stored in the metadata) and the
refusal checks the model's input still allows (near-constant; strongly coloured). The size and
aspect-ratio checks need the image before a client resized it, so only the clients that have it
(Python, the web page) apply them. MediaPipe's ImageClassifier reads one classification per
output tensor and names each from the embedded metadata (`pneumocnn.edge.embedded`).

The head is its own small float model (`guard_head_model`, converted by `convert_guard_head`),
grafted onto an RGB variant's flatbuffer by `add_guard_head`: it reads the variant's input
tensor, and nothing of the variant changes (its operating scores, their int8 network and its
quantization stay byte for byte what they were), so the head can be added to a shipped variant
too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from pneumocnn.edge.convert import BATCH_SIZE, convert_float32, fixed_batch_saved_model
from pneumocnn.edge.embedded import GUARD_LABELS, without_packed_files
from pneumocnn.edge.graft import append_graph, read, write
from pneumocnn.runtime.guard import DEFAULT_LIMITS, GuardCalibration

# The guard head's layer; the TFLite tensors it writes carry this name.
GUARD_LAYER = "guard"
# The OOD score the guard head gives an input that fails a refusal check: far past 1.
REFUSED_SCORE = 1000.0
# The name of the head's output in the variant's signature (the operating scores are output_0).
GUARD_OUTPUT = "output_1"


def guard_head_op(image, calibration: GuardCalibration, luma_weights: tuple[float, ...]):
    """The guard head in Keras ops: `[1 / (1 + s), s / (1 + s)]` per input, with `s` the
    out-of-distribution score (`REFUSED_SCORE` where a refusal check on the input fails).

    Args:
        image: the RGB input `(n, H, W, 3)`, raw 0-255; `H` a multiple of the thumbnail side
            (the thumbnail is a box average, as Pillow's BOX resize takes it).
        calibration: the model's guard calibration.
        luma_weights: the RGB variant's luma (`pneumocnn.edge.rgb.LUMA_WEIGHTS`): the head
            computes the same gray film, `floor(luma + 0.5)`.
    """
    weights = np.asarray(luma_weights, np.float32)
    gray = ops.floor(ops.sum(image * weights, axis=-1, keepdims=True) + 0.5)
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
    pixels = int(np.prod(gray.shape[1:]))
    near_constant = ops.std(ops.reshape(gray, (-1, pixels)), axis=1) < limits["min_std"]
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    rg = ops.reshape(red - green, (-1, pixels))
    yb = ops.reshape(0.5 * (red + green) - blue, (-1, pixels))
    colourfulness = ops.sqrt(ops.var(rg, axis=1) + ops.var(yb, axis=1)) + 0.3 * ops.sqrt(
        ops.square(ops.mean(rg, axis=1)) + ops.square(ops.mean(yb, axis=1))
    )
    refused = ops.logical_or(near_constant, colourfulness > limits["max_colourfulness"])
    score = ops.where(refused, ops.maximum(score, REFUSED_SCORE), score)[:, None]
    return ops.concatenate([1.0 / (1.0 + score), score / (1.0 + score)], axis=1)


def has_guard_head(image_size: int, calibration: GuardCalibration | None) -> bool:
    """Whether a variant of this input side gets the guard head: it needs a calibration, and a
    side that is a multiple of the thumbnail's."""
    return calibration is not None and image_size % calibration.thumbnail_size == 0


def guard_head_record(agreement: dict[str, Any]) -> dict[str, Any]:
    """The metadata's record of an RGB variant's guard head (`edge.rgb_variant.guard_head`),
    with its agreement with the Python guard (`pneumocnn.edge.parity.guard_head_agreement`)."""
    return {
        "labels": list(GUARD_LABELS),
        "what": f"Second output: '{GUARD_LABELS[1]}' where the input guard's OOD score on the "
        "model's input is above 1, or the input is near-constant or strongly coloured. The size "
        "and aspect-ratio checks need the image before a client resizes it: Python and the web "
        "page apply them, a stock classifier cannot.",
        "agreement_with_guard": agreement,
    }


def guard_head_model(
    image_size: int, calibration: GuardCalibration, luma_weights: tuple[float, ...]
) -> keras.Model:
    """The guard head alone: RGB `(1, image_size, image_size, 3)` in, its two scores out."""
    image = keras.Input((image_size, image_size, 3), batch_size=BATCH_SIZE, name="image")
    scores = keras.layers.Lambda(
        lambda x: guard_head_op(x, calibration, luma_weights), name=GUARD_LAYER, output_shape=(2,)
    )(image)
    return keras.Model(image, scores, name="pneumocnn_guard")


def convert_guard_head(
    image_size: int,
    calibration: GuardCalibration,
    luma_weights: tuple[float, ...],
    folder: Path,
) -> bytes:
    """The guard head as a float32 `.tflite` (see `guard_head_model`)."""
    model = guard_head_model(image_size, calibration, luma_weights)
    return convert_float32(fixed_batch_saved_model(model, Path(folder) / "guard_saved_model"))


def add_guard_head(model: bytes, head: bytes) -> bytes:
    """Grafts a converted guard head (`convert_guard_head`) onto an RGB variant's flatbuffer.

    The head's operators, tensors and constant buffers are appended to the variant's one
    subgraph, its input tensor replaced by the variant's, and its output added as the second
    output (`GUARD_OUTPUT` in the signature). The variant's own tensors, operators and buffers
    are left as they were, so its first output computes exactly what it did. Embedded TFLite
    metadata is dropped with the packed files: embed it again (it names both outputs).

    Args:
        model: the RGB variant's `.tflite` (one input, one output).
        head: the guard head's `.tflite`, taking the same input shape.

    Returns:
        The `.tflite` with two outputs: the operating scores, then the guard head's.

    Raises:
        ValueError: if `model` does not have exactly one output (a head is there already), or
            the head's input shape differs from the variant's.
    """
    tree, graft = read(without_packed_files(model)), read(head)
    target, source = tree.subgraphs[0], graft.subgraphs[0]
    if len(target.outputs) != 1 or len(tree.subgraphs) != 1:
        raise ValueError(
            f"The RGB variant has {len(target.outputs)} outputs (need 1: the operating scores). "
            "A guard head is there already; re-export the model to rebuild it."
        )
    variant_input, head_input = target.inputs[0], source.inputs[0]
    if list(target.tensors[variant_input].shape) != list(source.tensors[head_input].shape):
        raise ValueError(
            f"The guard head takes {list(source.tensors[head_input].shape)}, the RGB variant "
            f"{list(target.tensors[variant_input].shape)}: build the head for the variant's size."
        )
    operators, tensor_index = append_graph(tree, graft, {head_input: variant_input}, b"guard_head/")
    target.operators.extend(operators)
    output = tensor_index[source.outputs[0]]
    target.outputs = np.asarray([*target.outputs, output], np.int32)
    if tree.signatureDefs:
        mapping = copy.deepcopy(tree.signatureDefs[0].outputs[0])
        mapping.name, mapping.tensorIndex = GUARD_OUTPUT.encode(), output
        tree.signatureDefs[0].outputs.append(mapping)
    return write(tree)
