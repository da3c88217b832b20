"""The metadata file (`<name>.json`, e.g. `pneumocnn.json`) that travels beside every exported
model.

It is the contract between the exporter and every consumer (predict, LiteRT on a device, the
app): task, image size, channels, class names, threshold, tensor types, preprocessing, and the
SHA-256 of each model file. Needs only the standard library and numpy, so the edge install can
read it. `decide` (from `pneumocnn.task`) is the decision rule they share.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pneumocnn.task import TASKS, decide

__all__ = ["decide"]  # re-exported: the decision rule every consumer of the metadata shares

FORMAT_VERSION = 1
# Every exported model is a family of files named after it: <name>_int8.tflite,
# <name>_fp16.tflite, <name>.keras, <name>_labels.txt and its metadata <name>.json.
DEFAULT_NAMES = {"binary": "pneumocnn", "subtype": "pneumocnn_subtype"}


def model_files(name: str) -> dict[str, str]:
    """The file names of the exported model `name`, by role.

    Example:

    >>> model_files("pneumocnn_subtype")["int8"]
    'pneumocnn_subtype_int8.tflite'
    """
    return {
        "int8": f"{name}_int8.tflite",
        "fp16": f"{name}_fp16.tflite",
        # For stock image classifiers: RGB in, one score per class (see pneumocnn.edge).
        "rgb_int8": f"{name}_rgb_int8.tflite",
        "keras": f"{name}.keras",
        "labels": f"{name}_labels.txt",
        "metadata": f"{name}.json",
    }


_BINARY = model_files(DEFAULT_NAMES["binary"])
METADATA_FILE = _BINARY["metadata"]
LABELS_FILE = _BINARY["labels"]
KERAS_FILE = _BINARY["keras"]
INT8_FILE = _BINARY["int8"]
FP16_FILE = _BINARY["fp16"]
SUBTYPE_FILES = model_files(DEFAULT_NAMES["subtype"])
PREPROCESSING = (
    "Decode the JPEG or PNG, convert to one grayscale channel (ITU-R 601-2 luma for colour "
    "images; 16-bit images stretched from their minimum to maximum), resize to image_size x "
    "image_size with bilinear filtering (no crop, no padding), and feed raw 0-255 pixel values. "
    "No normalisation outside the model: it rescales inside itself. pneumocnn.images.load_image "
    "does exactly this."
)
_REQUIRED = {
    "format_version": int,
    "image_size": int,
    "channels": int,
    "class_names": list,
    "threshold": float,
    "sha256": dict,
}


class MetadataError(ValueError):
    """Raised when a metadata file is missing, malformed, or does not match its model."""


def sha256_of(path: str | Path) -> str:
    """Returns the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_name(model_path: str | Path) -> str:
    """The exported model's name from one of its files: `pneumocnn_subtype_int8.tflite` ->
    `pneumocnn_subtype`; `pneumocnn_rgb_int8.tflite` and `pneumocnn.keras` -> `pneumocnn`."""
    stem = Path(model_path).stem
    for suffix in ("_rgb_int8", "_int8", "_fp16"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def find_metadata(model_path: str | Path) -> Path:
    """Returns the metadata file beside `model_path`: `<name>.json` (see `model_name`).

    Raises:
        MetadataError: if there is none.
    """
    model_path = Path(model_path)
    path = model_path.parent / f"{model_name(model_path)}.json"
    if not path.is_file():
        raise MetadataError(
            f"No metadata file '{path.name}' beside the model '{model_path}'. Received: "
            f"model='{model_path}'. Export the model with `python -m pneumocnn.export`, which "
            "writes <name>.json next to <name>_int8.tflite, <name>_fp16.tflite and "
            "<name>.keras; keep the files together and keep their names."
        )
    return path


def load_metadata(path: str | Path, model_path: str | Path | None = None) -> dict[str, Any]:
    """Reads and validates a metadata file; optionally checks a model file's SHA-256 against it.

    Args:
        path: the `pneumocnn.json` file.
        model_path: a model file listed in it, whose checksum must match. Defaults to `None`.

    Returns:
        The metadata dict.

    Raises:
        MetadataError: if the file is unreadable, misses a field, has a newer format, a
            threshold outside (0, 1), or the model's SHA-256 differs from the recorded one.
    """
    path = Path(path)
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MetadataError(f"Cannot read metadata file '{path}': {error}") from error
    for key, kind in _REQUIRED.items():
        value = metadata.get(key) if isinstance(metadata, dict) else None
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise MetadataError(
                f"Metadata file '{path}' lacks a valid `{key}` ({kind.__name__}). "
                f"Received: {key}={value!r}. Re-export the model with `python -m pneumocnn.export`."
            )
    if metadata["format_version"] > FORMAT_VERSION:
        raise MetadataError(
            f"Metadata file '{path}' has format_version {metadata['format_version']}, newer than "
            f"this pneumocnn understands ({FORMAT_VERSION}). Upgrade pneumocnn."
        )
    names = metadata["class_names"]
    if len(names) < 2 or not all(isinstance(name, str) and name for name in names):
        raise MetadataError(
            f"Metadata file '{path}' needs at least two class names. "
            f"Received: class_names={names!r}."
        )
    task = metadata.get("task", "binary")
    if task not in TASKS or (task == "subtype" and len(names) != 3):
        raise MetadataError(
            f"Metadata file '{path}' has a task pneumocnn does not know. Received: "
            f"task={task!r}, class_names={names!r}; expected 'binary', or 'subtype' with three "
            "classes (NORMAL first)."
        )
    if metadata["image_size"] < 8 or metadata["channels"] != 1:
        raise MetadataError(
            f"Metadata file '{path}' describes an input pneumocnn cannot feed. Received: "
            f"image_size={metadata['image_size']!r}, channels={metadata['channels']!r}; "
            "expected image_size >= 8 and channels = 1."
        )
    if not 0.0 < metadata["threshold"] < 1.0:
        raise MetadataError(
            f"Metadata file '{path}' has a threshold outside (0, 1). "
            f"Received: threshold={metadata['threshold']!r}."
        )
    if model_path is not None:
        name = Path(model_path).name
        expected = metadata["sha256"].get(name)
        if expected is None or sha256_of(model_path) != expected:
            raise MetadataError(
                f"Model file '{model_path}' does not match the SHA-256 recorded for '{name}' in "
                f"'{path}'. The model was changed or replaced after export; re-export it so model "
                "and metadata agree."
            )
    return metadata


def write_json_atomically(path: str | Path, payload: Any) -> None:
    """Writes JSON to a temporary name, then renames it into place (see `pneumocnn.files`)."""
    from pneumocnn.files import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
