"""The metadata file (`<name>.json`, e.g. `pneumocnn.json`) that travels beside every exported
model.

It is the contract between the exporter and every consumer (predict, LiteRT on a device, the
app): task, image size, channels, class names, threshold, tensor types, preprocessing, and the
SHA-256 of each model file. Needs only the standard library and numpy, so the edge install can
read it. `pneumocnn.core.task.Task.of_metadata` reads its task, the rule they all share.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from pathlib import Path
from typing import Any

from pneumocnn.core.commit import settle_stale
from pneumocnn.core.files import UnreadableJsonError, display_name, read_json, write_text_atomic
from pneumocnn.core.task import Task

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
# The data set's films are 224 px. The RGB variant of an export takes that size and resizes to the
# model's side inside (`pneumocnn.edge.resize`), so a stock client handed a 224 px film passes its
# pixels on unchanged and the file does pneumocnn's own resize.
FILM_SIZE = 224
PREPROCESSING = (
    "Decode the JPEG or PNG, convert to one grayscale channel (ITU-R 601-2 luma for colour "
    "images; 16-bit images stretched from their minimum to maximum), resize to 224 x 224 (the "
    "data set's films' size; skipped at that size or for a model of 224 px or more) and then to "
    "image_size x image_size, both with bilinear filtering as Pillow does it (no crop, no "
    "padding), and feed raw 0-255 pixel values. "
    "No normalisation outside the model: it rescales inside itself. "
    "pneumocnn.data.images.load_image does exactly this."
)
_REQUIRED = {
    "format_version": int,
    "image_size": int,
    "channels": int,
    "class_names": list,
    "threshold": float,
    "sha256": dict,
    "config": dict,
}
# A threshold this close to 0 or 1 turns every film into one class; no validation set chooses it.
THRESHOLD_MARGIN = 1e-6
# A labels file names a few classes, one a line.
MAX_LABELS_BYTES = 65_536
# Values quoted in an error message are cut to this (a hostile file can hold anything).
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 120
_SHOWN.maxlist = _SHOWN.maxdict = 8
_SHOWN.maxlevel = 3


def shown(value: Any) -> str:
    """`repr(value)`, cut short for an error message (see `_SHOWN`)."""
    return _SHOWN.repr(value)


def is_usable_threshold(value: object) -> bool:
    """True for a decision threshold pneumocnn accepts anywhere (metadata, `--threshold`): a
    number in [THRESHOLD_MARGIN, 1 - THRESHOLD_MARGIN] (NaN is not)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and THRESHOLD_MARGIN <= value <= 1.0 - THRESHOLD_MARGIN
    )


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


# An export or recalibration writes a family through the scratch folder `.export-<name>` beside
# it (see `pneumocnn.core.commit`, `pneumocnn.edge.family`).
SCRATCH_PREFIX = ".export-"


def family_scratch(folder: str | Path, name: str) -> Path:
    """The scratch folder through which the family `name` in `folder` is written."""
    return Path(folder) / f"{SCRATCH_PREFIX}{name}"


def settle_family(metadata_path: str | Path) -> bool:
    """Completes a write of the family of `metadata_path` (an export, a recalibration) that was
    killed after its commit point, or removes one killed before it (see
    `pneumocnn.core.commit.settle`); a write still running is left alone. Every reader of a
    family calls it first, so it never sees files of two writes side by side.

    Returns:
        True if an interrupted write was completed.

    Raises:
        MetadataError: if the folder cannot be written to complete it.
    """
    metadata_path = Path(metadata_path)
    scratch = family_scratch(metadata_path.parent, model_name(metadata_path))
    if not scratch.is_dir():
        return False
    try:
        settled = settle_stale(scratch.parent, scratch.name)
    except OSError as error:
        raise MetadataError(
            f"The model files in '{display_name(scratch.parent)}' are those of a write that was "
            f"interrupted, and completing it failed ({error.strerror or error}). Received: "
            f"model='{display_name(metadata_path)}'. Run the export or calibration again with "
            "write access to that folder: it completes the write first."
        ) from error
    return any(outcome == "rolled forward" for _, outcome in settled)


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
        metadata = read_json(path)
    except (OSError, UnreadableJsonError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise MetadataError(
            f"Cannot read metadata file '{display_name(path)}' ({reason}). Received: "
            f"path='{display_name(path)}'. It must be the JSON file the export wrote beside the "
            "model; re-export the model with `python -m pneumocnn.export RUN_DIR` to write it "
            "again."
        ) from error
    for key, kind in _REQUIRED.items():
        value = metadata.get(key) if isinstance(metadata, dict) else None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MetadataError(
                f"Metadata file '{path}' lacks a valid `{key}` ({kind.__name__}). "
                f"Received: {key}={shown(value)}. Re-export the model with `python -m "
                "pneumocnn.export`."
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
            f"Received: class_names={shown(names)}."
        )
    try:
        Task.of_metadata(metadata)
    except ValueError as error:
        raise MetadataError(
            f"Metadata file '{path}' has a task pneumocnn does not know. Received: "
            f"task={shown(metadata.get('task'))}, class_names={shown(names)}; expected 'binary' "
            "with two classes, or 'subtype' with three (NORMAL first)."
        ) from error
    if metadata["image_size"] < 8 or metadata["channels"] != 1:
        raise MetadataError(
            f"Metadata file '{path}' describes an input pneumocnn cannot feed. Received: "
            f"image_size={shown(metadata['image_size'])}, "
            f"channels={shown(metadata['channels'])}; expected image_size >= 8 and channels = 1."
        )
    if not is_usable_threshold(metadata["threshold"]):
        raise MetadataError(
            f"Metadata file '{path}' has a threshold outside [{THRESHOLD_MARGIN:g}, "
            f"1 - {THRESHOLD_MARGIN:g}]: it would give every film one label. Received: "
            f"threshold={shown(metadata['threshold'])}. Choose it again with `python -m "
            "pneumocnn.evaluate RUN_DIR --split val` and re-export."
        )
    _check_file_names(metadata, path)
    _check_agreement(metadata, path)
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


def _disagree(path: Path, what: str, first: str, second: str) -> MetadataError:
    return MetadataError(
        f"Metadata file '{path}' contradicts itself: {what}. Received: {first}, {second}. "
        "The class order decides which output is which class, so no label can be trusted; "
        "re-export the model with `python -m pneumocnn.export` instead of editing the files."
    )


def member_path(metadata_path: str | Path, name: str) -> Path:
    """The file `name` of a model's family: `name` must be a plain file name, and the file
    (through any link) must lie in the metadata's own folder.

    Args:
        metadata_path: the metadata file.
        name: a name the metadata lists (in `files` or `sha256`).

    Returns:
        The path, inside the folder.

    Raises:
        MetadataError: if `name` is not a plain file name, or leads outside the folder.
    """
    metadata_path = Path(metadata_path)
    folder = metadata_path.parent
    plain = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and Path(name).name == name
        and not any(char in name for char in "/\\\0")
    )
    inside = plain and (folder / name).resolve().is_relative_to(folder.resolve())
    if not inside:
        raise MetadataError(
            f"Metadata file '{display_name(metadata_path)}' names a file outside its folder. "
            f"Received: {shown(name)}. A model's files are plain names in the folder of its "
            "metadata (e.g. 'pneumocnn_labels.txt'); re-export the model with `python -m "
            "pneumocnn.export` instead of editing the metadata."
        )
    return folder / name


def _check_file_names(metadata: dict[str, Any], path: Path) -> None:
    """Every name in `files` and `sha256` must be a file of the metadata's own folder."""
    files = metadata.get("files", {})
    if not isinstance(files, dict):
        raise MetadataError(
            f"Metadata file '{path}' has a `files` that is not an object of names by role. "
            f"Received: files={shown(files)}. Re-export the model with `python -m "
            "pneumocnn.export`."
        )
    for name in [*files.values(), *metadata["sha256"]]:
        member_path(path, name)


def _read_labels(labels_path: Path, path: Path) -> list[str]:
    try:
        with open(labels_path, "rb") as handle:
            content = handle.read(MAX_LABELS_BYTES + 1)
        if len(content) > MAX_LABELS_BYTES:
            raise ValueError(f"it is larger than {MAX_LABELS_BYTES:,} bytes")
        text = content.decode("utf-8")
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise MetadataError(
            f"Cannot read the labels file '{display_name(labels_path)}' that metadata file "
            f"'{display_name(path)}' names ({shown(str(error))}): it must list the class names, "
            "one a line, in UTF-8. Re-export the model with `python -m pneumocnn.export`."
        ) from error
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_agreement(metadata: dict[str, Any], path: Path) -> None:
    """The fields that say the same thing twice must agree: `config` against the top-level
    image size and task, `positive_class` and the labels file against `class_names`."""

    names, task, config = metadata["class_names"], Task.of_metadata(metadata), metadata["config"]
    for key, value in (("image_size", metadata["image_size"]), ("task", task.name)):
        if key in config and config[key] != value:
            raise _disagree(
                path,
                f"config.{key} is not {key}",
                f"config.{key}={shown(config[key])}",
                f"{key}={shown(value)}",
            )
    if "positive_class" in metadata:
        if metadata["positive_class"] != task.positive_class:
            raise _disagree(
                path,
                f"positive_class is not {'PNEUMONIA' if task.subtype else 'class_names[1]'}",
                f"positive_class={shown(metadata['positive_class'])}",
                f"class_names={shown(names)}",
            )
    labels_name = metadata.get("files", {}).get("labels")
    labels_path = member_path(path, labels_name) if labels_name is not None else None
    if labels_path is not None and labels_path.is_file():
        labels = _read_labels(labels_path, path)
        if labels != list(names):
            raise _disagree(
                path,
                f"the labels file '{display_name(labels_path.name)}' lists other classes",
                f"labels={shown(labels)}",
                f"class_names={shown(names)}",
            )


def check_model_io(
    model: str | Path,
    image_size: int,
    task: Task,
    input_shape: tuple,
    output_units: int,
) -> None:
    """Checks a model's input and output against what its metadata (or run folder) says.

    Args:
        model: the model file, named in the error.
        image_size: the side the images are resized to.
        task: the model's task (see `pneumocnn.core.task.Task`).
        input_shape: the model's input shape, `(batch, height, width, channels)`.
        output_units: the size of one output (1 for a binary model's sigmoid, else one per class).

    Raises:
        MetadataError: if the input is not `image_size` square, or the output is not one the
            task's files have (`Task.output_units`).
    """
    side = tuple(input_shape[1:3])
    # One channel; three for the RGB variant of an export (see `pneumocnn.edge.rgb`), which takes
    # the model's side or, since 2026-12-07, the films' (`FILM_SIZE`, resized inside).
    sides = {(image_size, image_size)} | (
        {(FILM_SIZE, FILM_SIZE)} if input_shape[-1] == 3 else set()
    )
    if side not in sides or input_shape[-1] not in (1, 3):
        raise MetadataError(
            f"Model '{model}' takes inputs of shape {tuple(input_shape)}, but its metadata says "
            f"image_size={image_size}. Received: input_shape={tuple(input_shape)}, "
            f"image_size={image_size}. Re-export the model so they agree."
        )
    allowed = task.output_units
    if output_units not in allowed:
        raise MetadataError(
            f"Model '{model}' has {output_units} output unit(s), but its metadata names "
            f"{len(task.class_names)} classes, which need "
            f"{' or '.join(map(str, sorted(allowed)))}. Received: output_units={output_units}, "
            f"class_names={list(task.class_names)!r}. Use the metadata exported with this model."
        )


def write_json_atomically(path: str | Path, payload: Any) -> None:
    """Writes JSON to a temporary name, then renames it into place (see `pneumocnn.core.files`)."""

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
