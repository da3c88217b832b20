"""The TFLite metadata embedded in every exported `.tflite` (name, description, version,
author, licence, input description, labels as an associated file), written with MediaPipe's
maintained metadata writer (`embed_metadata`; embedding again replaces it, which a site
recalibration does when the threshold in the description changes) and read back with
`read_embedded_metadata`. Needs `mediapipe` (the `train` extra).
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from pneumocnn import __version__
from pneumocnn.edge.graft import read
from pneumocnn.edge.mediapipe_metadata import (
    MetadataDisplayer,
    metadata_info,
    metadata_writer,
    writer_utils,
)

AUTHOR = "The pneumocnn authors"
LICENSE = (
    "Apache-2.0 (model and code). Trained on the Kaggle 'Chest X-Ray Images (Pneumonia)' data "
    "(Kermany et al., 2018), CC BY 4.0."
)
# The RGB variant's second output, the guard head (`pneumocnn.edge.guard_head.guard_head_op`): its
# two classes, the second scoring above 0.5 exactly where the input is unlike the training films
# (OOD score above 1) or fails a refusal check the head can see; and their labels file.
GUARD_LABELS = ("like a chest film", "unlike a chest film")
GUARD_LABELS_FILE = "guard_labels.txt"
WARNING = (
    "Research tool for paediatric chest X-rays (children aged one to five, frontal films). "
    "It is not a medical device and does not give a diagnosis: a clinician must read every film."
)


def embed_metadata(
    model: bytes,
    class_names: list[str],
    name: str,
    description: str,
    input_description: str,
    channels: int,
    version: str = __version__,
    guard_labels: list[str] | None = None,
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
        guard_labels: the labels of a second output, the RGB variant's guard head (see
            `pneumocnn.edge.guard_head.guard_head_op`), packed as `GUARD_LABELS_FILE`. Defaults to
            `None`: one output.

    Returns:
        The `.tflite` flatbuffer with the metadata and the labels file packed in.
    """
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
    if guard_labels:
        writer.add_classification_output(
            metadata_writer.Labels().add(list(guard_labels), exported_filename=GUARD_LABELS_FILE),
            name="guard",
            description=(
                "The input guard: whether the image is like the training films (its "
                "out-of-distribution score on the model's input, and the refusal checks the "
                "model's input allows). Read the label only when it says "
                f"'{guard_labels[0]}'."
            ),
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


def input_side(model: bytes) -> int:
    """The height of a `.tflite`'s (first subgraph's) input tensor."""
    graph = read(without_packed_files(model)).subgraphs[0]
    return int(graph.tensors[graph.inputs[0]].shape[1])


def output_count(model: bytes) -> int:
    """The number of output tensors of a `.tflite` (its first subgraph)."""
    return len(writer_utils.get_output_tensor_names(bytearray(without_packed_files(model))))


def read_embedded_metadata(model: bytes) -> dict[str, Any] | None:
    """The TFLite metadata embedded in a `.tflite` (name, description, version, author, licence,
    tensors), as MediaPipe's metadata displayer reads it; `None` when the model has none."""
    try:
        displayer = MetadataDisplayer.with_model_buffer(bytearray(model))
    except ValueError:  # "The model does not have metadata."
        return None
    return json.loads(displayer.get_metadata_json())


def embed_pneumocnn_metadata(model: bytes, metadata: dict[str, Any], channels: int) -> bytes:
    """`embed_metadata` with the texts and labels of an exported model's own metadata.

    A grayscale model's output is pneumocnn's own (binary: one unit, P(positive class), so its
    labels file names that class alone; subtype: the softmax over the classes). An rgb variant's
    output is one operating score per class (see `rgb_classifier`), and a second output, when it
    has one, is its guard head (`pneumocnn.edge.rgb.GUARD_LABELS`).

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
        side = input_side(model)
        inside = f"resized to {size} x {size} (bilinear, as Pillow) and " if side != size else ""
        image = (
            f"RGB, {side} x {side}, raw 0-255 pixel values as float32 (no normalisation); "
            f"{inside}grayscale inside the model."
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
    guard_labels = None
    if channels == 3 and output_count(model) > 1:
        guard_labels = list(GUARD_LABELS)
        description += (
            f" A second output, the input guard, says '{GUARD_LABELS[1]}' for an image unlike "
            "the training films (out-of-distribution, blank or coloured): do not trust the "
            "label then."
        )
    return embed_metadata(
        model, labels, metadata["name"], description, image, channels, guard_labels=guard_labels
    )
