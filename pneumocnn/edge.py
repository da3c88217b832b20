"""Edge variants: the files that stock LiteRT clients (LiteRT.js in a browser, MediaPipe Tasks,
Android) can run with no pneumocnn code.

Three things stand between the exported model and those clients, and each has a step here:

- **A fixed batch of 1.** LiteRT.js refuses a model whose batch dimension is dynamic, and
  MediaPipe expects `1 x height x width x depth`. `fixed_batch_saved_model` writes the SavedModel
  that the converter reads with a `(1, H, W, C)` signature, so every `.tflite` has a static shape.
- **An RGB variant with its operating point inside.** A stock image classifier feeds three
  channels and names the class with the highest score. `rgb_classifier` wraps the grayscale
  model: Pillow's luma (`LUMA_WEIGHTS`, rounded as Pillow rounds) as the first layers, then the
  trained network, then a head whose per-class scores put the decision threshold where argmax
  puts it (`operating_scores` is the same rule in numpy). The luma and the head run in float32
  and the network in int8, quantized as the grayscale model is: on the same pixels, the variant
  makes the grayscale int8 model's call exactly.
- **Embedded TFLite metadata** (name, description, version, author, licence, input description,
  labels as an associated file), written with MediaPipe's maintained metadata writer
  (`embed_metadata`; embedding again replaces it, which a site recalibration does when the
  threshold in the description changes) and read back with `read_embedded_metadata`.

Needs TensorFlow (the `train` extra) for the conversions, and `mediapipe` for the metadata.
"""

from __future__ import annotations

import io
import json
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pneumocnn import __version__
from pneumocnn.task import class_probabilities, decide, pneumonia_probability

BATCH_SIZE = 1
# Pillow's "L" conversion of RGB, exactly: `L = (19595 R + 38470 G + 7471 B + 32768) >> 16`.
# These weights are that fixed-point rule's own (sixteenths of a 65536th are exact in float32, and
# so is their sum with pixels 0-255), and the RGB variant computes `floor(luma + 0.5)` in float32:
# the same gray film as Pillow, for colour images too, and a gray film (R = G = B) unchanged.
LUMA_WEIGHTS = (19595 / 65536, 38470 / 65536, 7471 / 65536)
# The RGB variant's layers that stay float32 (see `rgb_variant`): the luma, its rounding, and the
# head that turns the grayscale model's output into per-class scores.
LUMA_LAYER, GRAY_LAYER, HEAD_LAYER = "luma", "gray", "scores"
AUTHOR = "The pneumocnn authors"
LICENSE = (
    "Apache-2.0 (model and code). Trained on the Kaggle 'Chest X-Ray Images (Pneumonia)' data "
    "(Kermany et al., 2018), CC BY 4.0."
)
WARNING = (
    "Research tool for paediatric chest X-rays (children aged one to five, frontal films). "
    "It is not a medical device and does not give a diagnosis: a clinician must read every film."
)


def fixed_batch_saved_model(keras_model, path: str | Path) -> Path:
    """Exports a Keras model as a SavedModel whose input has a batch of exactly 1.

    The TFLite converter keeps the signature's shape, so the `.tflite` it makes reads
    `[1, H, W, C]` rather than `[-1, H, W, C]`: LiteRT.js and MediaPipe refuse a dynamic batch,
    and LiteRT (Python) runs one film at a time either way.

    Args:
        keras_model: a model with one image input.
        path: the SavedModel folder to write.

    Returns:
        `path`.
    """
    import tensorflow as tf

    shape = (BATCH_SIZE, *keras_model.input_shape[1:])
    signature = [tf.TensorSpec(shape, tf.float32, name="image")]
    keras_model.export(str(path), format="tf_saved_model", input_signature=signature, verbose=False)
    return Path(path)


def operating_scores(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Per-class scores whose argmax is the decision at `threshold` (`pneumocnn.task.decide`).

    The odds of pneumonia are divided by the threshold's odds, so the shifted
    P'(pneumonia) = q (1 - t) / (q (1 - t) + (1 - q) t) is 0.5 exactly where q = t. NORMAL scores
    `1 - P'`; the likeliest other class `P'`; any further class `P'` times the ratio of its
    probability to the likeliest one's (binary: `[1 - P', P']`). The RGB variant's head computes
    the same inside the model.

    Args:
        probabilities: a model's per-class probabilities `(n, classes)`, NORMAL first, or a
            binary model's P(positive) `(n,)` (see `pneumocnn.task.class_probabilities`).
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
    import keras
    from keras import ops

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
    below it, so a film whose output equals the threshold, which `pneumocnn.task.decide` calls
    positive, scores just above 0.5."""
    nudged = threshold * (1.0 - 1e-6)
    return nudged / (1.0 - nudged)


def _operating_scores_op(probabilities, threshold: float):
    """`operating_scores` in Keras ops, on a binary model's `(n, 1)` P(pneumonia) or a subtype
    model's softmax `(n, classes)`, NORMAL first, with the odds of `_threshold_odds` (the one
    constant that depends on the threshold; `retarget_rgb_variant` rewrites it)."""
    from keras import ops

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
    from tensorflow.lite.tools import flatbuffer_utils

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


def check_rgb_parity(
    gray_probabilities: np.ndarray,
    rgb_scores: np.ndarray,
    threshold: float,
    class_names: list[str],
    step: float = 1 / 256,
) -> dict[str, float]:
    """How often the rgb variant's argmax names the class the grayscale model's decision names.

    A film whose grayscale output lies within one output step of a decision boundary (P(pneumonia)
    within `step` of the threshold, or, for a subtype call, the two subtypes within `step` of
    each other) is a near-tie, where any other rounding of the output would matter; the agreement
    on the other films is reported apart. (`rgb_variant` computes the grayscale model's output
    exactly, so it agrees on near-ties too.)

    Args:
        gray_probabilities: the grayscale int8 model's outputs on some films.
        rgb_scores: the rgb variant's scores on the same films (as RGB).
        threshold: the operating threshold.
        class_names: index = label.
        step: the int8 output's quantization step. Defaults to 1/256.

    Returns:
        `images`, `agreement` (share of identical labels), `near_ties` (films within a step of a
        boundary), `agreement_beyond_ties` (on the others), and `max_abs_difference` between the
        rgb scores and `operating_scores` of the grayscale outputs.
    """
    rows = class_probabilities(np.asarray(gray_probabilities, np.float64))
    gray_labels = np.array(decide(rows, threshold, class_names))
    rgb_labels = np.array([class_names[int(index)] for index in np.argmax(rgb_scores, axis=1)])
    near = np.abs(pneumonia_probability(rows) - threshold) <= step
    if rows.shape[1] > 2:  # a subtype call: the two likeliest subtypes within a step
        subtypes = np.sort(rows[:, 1:], axis=1)
        near |= subtypes[:, -1] - subtypes[:, -2] <= step
    same = gray_labels == rgb_labels
    expected = operating_scores(rows, threshold)
    return {
        "images": int(len(same)),
        "agreement": float(np.mean(same)),
        "near_ties": int(np.sum(near)),
        "agreement_beyond_ties": float(np.mean(same[~near])) if np.any(~near) else 1.0,
        "max_abs_difference": float(np.max(np.abs(expected - rgb_scores))),
    }


def _mediapipe_metadata_writer():
    """Imports MediaPipe's metadata writer.

    mediapipe 1.2's wheel leaves out the compiled helper `_pywrap_metadata_version` that its
    `metadata` module imports (to stamp the minimum metadata parser version), so the writer cannot
    be imported as shipped. When that module is missing, a stand-in with the same function is
    installed first: `minimum_parser_version`, the rule of MediaPipe's `metadata_version.cc`.
    """
    try:
        import mediapipe.tasks.cc.metadata.python._pywrap_metadata_version  # noqa: F401
    except ImportError:
        # A module and the packages above it that the wheel lacks: `from a.b import c` needs both.
        parent = "mediapipe.tasks"
        for part in ("cc", "metadata", "python", "_pywrap_metadata_version"):
            name = f"{parent}.{part}"
            module = sys.modules.get(name) or types.ModuleType(name)
            module.__path__ = getattr(module, "__path__", [])
            sys.modules[name] = module
            setattr(sys.modules[parent], part, module)
            parent = name
        sys.modules[parent].GetMinimumMetadataParserVersion = minimum_parser_version
    try:
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer
    except ImportError as error:
        raise ImportError(
            "Embedding TFLite metadata needs MediaPipe's metadata writer. Install it with: "
            f'pip install "pneumocnn[train]" (or pip install mediapipe). ({error})'
        ) from error
    return metadata_writer, metadata_info


def minimum_parser_version(metadata_buffer: bytes) -> str:
    """The lowest metadata parser version that reads every field of a metadata flatbuffer.

    The rule of MediaPipe's `metadata_version.cc`: 1.0.0, raised by each member added later
    (vocabulary files 1.0.1, process units 1.1.0, tensor groups 1.2.0, audio 1.3.0, ScaNN index
    files 1.4.0, versioned associated files 1.4.1, custom metadata 1.5.0, tokenizers).
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    model = schema.ModelMetadataT.InitFromObj(
        schema.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buffer), 0)
    )
    versions = [(1, 0, 0)]
    tokenizers = {
        schema.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
        schema.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
        schema.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1),
    }

    def files(items):
        for item in items or []:
            if item.type == schema.AssociatedFileType.VOCABULARY:
                versions.append((1, 0, 1))
            if item.type == schema.AssociatedFileType.SCANN_INDEX_FILE:
                versions.append((1, 4, 0))
            if item.version is not None:
                versions.append((1, 4, 1))

    def units(items):
        for item in items or []:
            versions.append(tokenizers.get(item.optionsType, (1, 0, 0)))

    for subgraph in model.subgraphMetadata or []:
        for tensor in [
            *(subgraph.inputTensorMetadata or []),
            *(subgraph.outputTensorMetadata or []),
        ]:
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            content = tensor.content
            if content is not None and (
                content.contentPropertiesType == schema.ContentProperties.AudioProperties
            ):
                versions.append((1, 3, 0))
        files(subgraph.associatedFiles)
        for group in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if group is not None:
                versions.append((1, 1, 0))
                units(group)
        for group in (subgraph.inputTensorGroups, subgraph.outputTensorGroups):
            if group is not None:
                versions.append((1, 2, 0))
        if subgraph.customMetadata is not None:
            versions.append((1, 5, 0))
    files(model.associatedFiles)
    return ".".join(str(part) for part in max(versions))


def embed_metadata(
    model: bytes,
    class_names: list[str],
    name: str,
    description: str,
    input_description: str,
    channels: int,
    version: str = __version__,
) -> bytes:
    """Embeds TFLite metadata in a classifier `.tflite`, so stock clients can name its classes.

    Written with MediaPipe's metadata writer: general information (name, description, version,
    author, licence), the image input (colour space, no normalisation: the model takes raw
    0-255 pixels), and the classification output with the labels as an associated file
    (`labels.txt`, one class a line, in output order). A model that already carries metadata
    gets the new metadata instead (the same bytes as embedding into the bare model).

    Args:
        model: the `.tflite` flatbuffer, with or without metadata.
        class_names: one label per output score, in order.
        name: the model's name.
        description: what the model does (and must not be used for).
        input_description: what to feed it.
        channels: 1 (grayscale) or 3 (RGB).
        version: the model's version. Defaults to the package version.

    Returns:
        The `.tflite` flatbuffer with the metadata and the labels file packed in.
    """
    metadata_writer, metadata_info = _mediapipe_metadata_writer()
    color_space = metadata_writer.MetadataWriter.color_space_types
    writer = metadata_writer.MetadataWriter.create(bytearray(without_packed_files(model)))
    writer.add_general_info(name, description)
    # The writer's add_general_info takes a name and a description only; the schema's GeneralMd
    # carries version, author and licence too.
    writer._general_md = metadata_info.GeneralMd(  # noqa: SLF001
        name=name, version=version, description=description, author=AUTHOR, licenses=LICENSE
    )
    writer.add_image_input(
        norm_mean=[0.0],
        norm_std=[1.0],
        color_space_type=color_space.RGB if channels == 3 else color_space.GRAYSCALE,
        name="image",
        description=input_description,
    )
    writer.add_classification_output(
        metadata_writer.Labels().add(list(class_names)),
        name="scores",
        description="One score per class, in the order of the labels file.",
    )
    content, _ = writer.populate()
    del writer  # its __del__ removes a temporary folder; at interpreter exit it would fail
    return bytes(content)


def without_packed_files(model: bytes) -> bytes:
    """The `.tflite` flatbuffer without the zip archive of associated files that MediaPipe's
    writer appends to it (the writer refuses to pack a file twice); the model unchanged when it
    has none. The metadata buffer inside the flatbuffer stays: the writer replaces it."""
    if not zipfile.is_zipfile(io.BytesIO(model)):
        return model
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        # Offsets count from the start of the file, so the first member's marks the archive's.
        return model[: min(info.header_offset for info in archive.infolist())]


def read_embedded_labels(model: bytes) -> list[str]:
    """The labels packed in a `.tflite` by `embed_metadata` (for tests and checks)."""
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        return archive.read("labels.txt").decode().split()


def read_embedded_metadata(model: bytes) -> dict[str, Any] | None:
    """The TFLite metadata embedded in a `.tflite` (name, description, version, author, licence,
    tensors), as MediaPipe's metadata displayer reads it; `None` when the model has none."""
    _mediapipe_metadata_writer()  # the displayer's module imports what the writer's does
    from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer

    try:
        displayer = MetadataDisplayer.with_model_buffer(bytearray(model))
    except ValueError:  # "The model does not have metadata."
        return None
    return json.loads(displayer.get_metadata_json())


def embed_pneumocnn_metadata(model: bytes, metadata: dict[str, Any], channels: int) -> bytes:
    """`embed_metadata` with the texts and labels of an exported model's own metadata.

    A grayscale model's output is pneumocnn's own (binary: one unit, P(positive class), so its
    labels file names that class alone; subtype: the softmax over the classes). An rgb variant's
    output is one operating score per class (see `rgb_classifier`).

    Args:
        model: the `.tflite` flatbuffer.
        metadata: the model's `pneumocnn.json` contents (name, task, class names, threshold).
        channels: 1 for the grayscale models, 3 for the rgb variant.

    Returns:
        The `.tflite` flatbuffer with TFLite metadata.
    """
    names = list(metadata["class_names"])
    size = metadata["image_size"]
    threshold = metadata["threshold"]
    classes = " / ".join(names)
    if channels == 3:
        labels = names
        output = (
            f"Scores per class whose highest names the decision at the operating threshold "
            f"{threshold:.4f} on P(pneumonia)."
        )
        image = (
            f"RGB, {size} x {size}, raw 0-255 pixel values as float32 (no normalisation); "
            "grayscale inside the model."
        )
    else:
        labels = names if metadata["task"] == "subtype" else names[1:]
        output = (
            f"P({names[1]}) (one unit); {names[1]} when it reaches {threshold:.4f}."
            if metadata["task"] != "subtype"
            else f"Softmax over {classes}; pneumonia when 1 - P({names[0]}) reaches "
            f"{threshold:.4f}, then the likelier subtype."
        )
        image = (
            f"Grayscale, {size} x {size}, raw 0-255 pixels: decode, convert to grayscale, "
            "resize with bilinear filtering (as Pillow does), no normalisation."
        )
    description = (
        f"pneumocnn: a small CNN telling {classes} on paediatric chest X-rays. Output: {output} "
        f"{WARNING}"
    )
    return embed_metadata(model, labels, metadata["name"], description, image, channels)


def rgb_variant(keras_model, threshold: float, calibration: np.ndarray, convert, folder: Path):
    """Converts `rgb_classifier` to int8 with its head in float32 (float32 RGB in, raw 0-255
    pixels; float32 scores out).

    The luma (`LUMA_LAYER`, `GRAY_LAYER`) and the head (`HEAD_LAYER`) stay float32; between
    them, the grayscale int8 network, calibrated on the same gray films (the float luma gives
    them exactly), so it is quantized as the grayscale model is and computes the same output.
    So the operating decision is the grayscale model's exactly, and no two scores tie after
    rounding. The input is float32 (raw 0-255 pixels) because the converter's selective
    quantization (`convert(..., float_layers=...)`) keeps float32 at both ends.

    Args:
        keras_model: the trained grayscale model.
        threshold: the operating threshold.
        calibration: the grayscale calibration images `(n, H, W, 1)`, raw 0-255; repeated to
            three channels.
        convert: the converter, `convert(saved_model_folder, calibration, float_layers=())
            -> bytes` (the one the grayscale models go through).
        folder: a scratch folder for the SavedModel.

    Returns:
        The `.tflite` flatbuffer (without TFLite metadata).
    """
    saved_model = fixed_batch_saved_model(
        rgb_classifier(keras_model, threshold), Path(folder) / "rgb_saved_model"
    )
    return convert(
        saved_model,
        np.repeat(calibration, 3, axis=-1),
        float_layers=(LUMA_LAYER, GRAY_LAYER, HEAD_LAYER),
    )
