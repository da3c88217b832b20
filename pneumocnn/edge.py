"""Edge variants: the files that stock LiteRT clients (LiteRT.js in a browser, MediaPipe Tasks,
Android) can run with no pneumocnn code.

Three things stand between the exported model and those clients, and each has a step here:

- **A fixed batch of 1.** LiteRT.js refuses a model whose batch dimension is dynamic, and
  MediaPipe expects `1 x height x width x depth`. `fixed_batch_saved_model` writes the SavedModel
  that the converter reads with a `(1, H, W, C)` signature, so every `.tflite` has a static shape.
- **An RGB variant with its operating point inside.** A stock image classifier feeds three
  channels and names the class with the highest score. `rgb_classifier` wraps the grayscale
  model: Pillow's integer luma (`L = R * 299/1000 + G * 587/1000 + B * 114/1000`) as the first
  layer, then the trained network, then a head whose per-class scores put the decision threshold
  where argmax puts it (`operating_scores` is the same rule in numpy).
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
# Pillow's "L" conversion of RGB (ITU-R 601-2 luma: 0.299, 0.587, 0.114), as weights that int8
# holds exactly (65, 127 and 25 steps of 1/217): they sum to 1, so a gray film (R = G = B)
# passes unchanged, and a colour pixel lands within half a gray level of Pillow's.
LUMA_WEIGHTS = (65 / 217, 127 / 217, 25 / 217)
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

    The first layer is Pillow's luma (a 1x1 linear map with `LUMA_WEIGHTS`, no bias) on raw
    0-255 RGB; then the trained network up to its `predictions` layer; then a head whose scores
    follow `operating_scores`, so the class with the highest score is the decision at
    `threshold`:

    - binary: the trained logit `z` (the `predictions` layer without its sigmoid), then a
      two-unit softmax over `[-(z - c) / 2, (z - c) / 2]` with `c = logit(threshold)`, which is
      `[1 - sigmoid(z - c), sigmoid(z - c)]`. The int8 network up to `z` is the grayscale
      model's, so both make the same call except on a film whose quantized logit falls within
      one step of `c`.
    - subtype: the trained softmax, then the odds shift and the subtype ratio of
      `operating_scores` (a few elementwise ops).

    Args:
        keras_model: a pneumocnn model (grayscale input, `predictions` head).
        threshold: the operating threshold on P(pneumonia), in (0, 1).

    Returns:
        A Keras model with input `(1, H, W, 3)` and output `(1, classes)` (2 for binary).
    """
    import keras

    from pneumocnn.model import OUTPUT_LAYER

    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"The operating threshold must lie in (0, 1). Received: threshold={threshold!r}."
        )
    size = keras_model.input_shape[1:3]
    head = keras_model.get_layer(OUTPUT_LAYER)
    features = keras.Model(keras_model.inputs, head.input, name="features")
    image = keras.Input((*size, 3), batch_size=BATCH_SIZE, name="image")
    luma = keras.layers.Dense(1, use_bias=False, trainable=False, name="luma")
    # The clip is an identity on 0-255 that stops the converter from folding the luma into the
    # first convolution: the gray tensor stays the grayscale model's input, quantized the same.
    gray = keras.layers.ReLU(max_value=255.0, name="gray")(luma(image))
    x = features(gray)
    luma.set_weights([np.asarray(LUMA_WEIGHTS, np.float32).reshape(3, 1)])
    kernel, bias = head.get_weights()
    if kernel.shape[1] == 1:
        shift = float(np.log(threshold / (1.0 - threshold)))
        logit = keras.layers.Dense(1, name="logit")
        scores = keras.layers.Dense(2, activation="softmax", name="scores")
        outputs = scores(logit(x))
        logit.set_weights([kernel, bias])
        scores.set_weights(
            [np.array([[-0.5, 0.5]], np.float32), np.array([shift / 2, -shift / 2], np.float32)]
        )
        return keras.Model(image, outputs, name="pneumocnn_rgb")
    probabilities = keras.layers.Dense(kernel.shape[1], activation="softmax", name="probabilities")
    outputs = keras.layers.Lambda(
        lambda p: _subtype_scores(p, threshold), name="scores", output_shape=(kernel.shape[1],)
    )(probabilities(x))
    probabilities.set_weights([kernel, bias])
    return keras.Model(image, outputs, name="pneumocnn_rgb")


def _subtype_scores(probabilities, threshold: float):
    """`operating_scores` for a softmax tensor `(n, classes)`, NORMAL first, in Keras ops."""
    from keras import ops

    odds = threshold / (1.0 - threshold)
    normal = probabilities[:, :1]
    subtypes = probabilities[:, 1:]
    pneumonia = 1.0 - normal
    shifted = pneumonia / (pneumonia + odds * normal + 1e-12)
    relative = subtypes / (ops.max(subtypes, axis=1, keepdims=True) + 1e-12)
    return ops.concatenate([1.0 - shifted, shifted * relative], axis=1)


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
    each other) is a near-tie that two int8 models may round either way; the agreement on the
    other films is reported apart.

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
        image = f"RGB, {size} x {size}, raw 0-255 pixels (uint8); grayscale inside the model."
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
    """Converts `rgb_classifier` to full-integer int8 (uint8 RGB in, uint8 scores out).

    Args:
        keras_model: the trained grayscale model.
        threshold: the operating threshold.
        calibration: the grayscale calibration images `(n, H, W, 1)`, raw 0-255; repeated to
            three channels.
        convert: the converter, `convert(saved_model_folder, calibration) -> bytes` (the one the
            grayscale models go through).
        folder: a scratch folder for the SavedModel.

    Returns:
        The `.tflite` flatbuffer (without TFLite metadata).
    """
    saved_model = fixed_batch_saved_model(
        rgb_classifier(keras_model, threshold), Path(folder) / "rgb_saved_model"
    )
    return convert(saved_model, np.repeat(calibration, 3, axis=-1))
