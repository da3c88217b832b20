"""Running any saved form of a model: `.keras`, int8 or float16 `.tflite`, or a run folder.

Every runner has one interface (`Classifier`): `image_size`, `task` (a
`pneumocnn.core.task.Task`), `class_names`, `threshold`, `guard` (the input guard's calibration,
see `pneumocnn.runtime.guard`), `predict_proba(images)` -> one probability per class `(n, classes)`
(see `pneumocnn.core.task`), and `predict_file(path, threshold=None)` -> a `Prediction` (guarded,
see `pneumocnn.runtime.prediction.classify`). `open_model` picks the runner from the path:
`LiteModel` (`pneumocnn.runtime.lite`, LiteRT, no TensorFlow) for a `.tflite`, `KerasModel` for
a `.keras` file or a run folder.

Importing this module imports Keras and TensorFlow (the `train` extra). What must run without
them takes `LiteModel` alone: `pneumocnn.predict` does for a `.tflite`, and imports this module
only for a `.keras` or a run folder (`pneumocnn.core.locations.check_model_path` tells them
apart first).

Example:

>>> from pneumocnn.core.locations import default_model
>>> model = open_model(default_model())  # doctest: +SKIP
>>> model.predict_file("chest.jpeg").label  # doctest: +SKIP
'PNEUMONIA'
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import keras
import numpy as np

from pneumocnn.core.locations import check_model_path
from pneumocnn.core.metadata import (
    MetadataError,
    check_model_io,
    find_metadata,
    load_metadata,
    model_files,
)
from pneumocnn.core.run_folder import MODEL_FILE, THRESHOLD_FILE, resolve_source
from pneumocnn.core.task import Task, class_probabilities
from pneumocnn.data.images import read_grayscale
from pneumocnn.network.model import load_model
from pneumocnn.runtime import guard
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.runtime.prediction import Prediction, classify


class Classifier(Protocol):
    """What every runner offers (`LiteModel`, `KerasModel`)."""

    image_size: int
    task: Task
    class_names: list[str]
    threshold: float
    guard: guard.GuardCalibration | None

    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...

    def predict_file(self, path: str | Path, threshold: float | None = None) -> Prediction: ...


def keras_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """A Keras model's per-class probabilities for raw-pixel images (see
    `pneumocnn.core.task.class_probabilities`)."""
    outputs = model.predict(np.asarray(images, np.float32), batch_size=64, verbose=0)
    return class_probabilities(outputs.reshape(len(images), -1))


class KerasModel:
    """A float Keras model behind the same interface as `LiteModel`.

    Args:
        model: the loaded Keras model.
        task: its task, with its class names (see `pneumocnn.core.task.Task`).
        threshold: the decision threshold on P(pneumonia).
        model_path: the file it came from, if any. Defaults to `None`.
        calibration: the input guard's (see `pneumocnn.runtime.guard`). Defaults to `None`: refusal
            checks only.
    """

    def __init__(
        self,
        model: keras.Model,
        task: Task,
        threshold: float,
        model_path: str | Path | None = None,
        calibration: guard.GuardCalibration | None = None,
    ):
        self.model = model
        self.image_size = int(model.input_shape[1])
        self.task = task
        self.class_names = list(task.class_names)
        check_model_io(
            model_path or model.name,
            self.image_size,
            task,
            tuple(model.input_shape),
            int(model.output_shape[-1]),
        )
        self.threshold = float(threshold)
        self.model_path = Path(model_path) if model_path is not None else None
        self.guard = calibration

    @classmethod
    def open(cls, path: str | Path) -> KerasModel:
        """Loads an exported `.keras` (with its metadata beside it), a run's `.keras`, or a run
        folder's `best.keras`; the threshold comes from the metadata or `threshold.json`.

        Raises:
            FileNotFoundError: if the model does not exist.
            MetadataError: if an exported model's metadata is missing or does not match.
            ValueError: if a run folder has no threshold yet (nothing is written to it).
        """
        source = resolve_source(path)
        if source.threshold is None:
            raise ValueError(
                f"Run folder '{source.run_dir}' has no {THRESHOLD_FILE}: no decision threshold "
                f"was chosen yet. Received: model='{path}'. Run `python -m pneumocnn.evaluate "
                f"{source.run_dir} --split val` first; it chooses the threshold on validation "
                "and stores it."
            )
        model = load_model(source.model_path)
        task = Task.of(source.config.task, source.class_names)
        # The run's or the metadata's image size, against the model's own input.
        check_model_io(
            source.model_path,
            source.config.image_size,
            task,
            tuple(model.input_shape),
            int(model.output_shape[-1]),
        )
        # An exported .keras carries the input guard's calibration in its metadata; a run
        # folder has none (the export fits it), so only the refusal checks run.
        try:
            calibration = (
                guard.calibration_of(load_metadata(find_metadata(source.model_path)))
                if source.run_dir is None
                else None
            )
        except ValueError as error:  # a malformed guard entry (MetadataError is one too)
            if isinstance(error, MetadataError):
                raise
            raise MetadataError(f"Metadata of '{source.model_path}': {error}") from error
        return cls(model, task, source.threshold, source.model_path, calibration)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Per-class probabilities for raw-pixel images `(n, image_size, image_size, 1)`, as
        `LiteModel.predict_proba`'s."""
        return keras_probabilities(self.model, images)

    def predict_file(self, path: str | Path, threshold: float | None = None) -> Prediction:
        """Loads an image file, checks it with the input guard, and classifies it (see
        `LiteModel.predict_file`)."""

        return classify(self, read_grayscale(path), path, threshold)


def open_model(path: str | Path) -> Classifier:
    """Opens a model for inference: a `.tflite` with LiteRT, a `.keras` or run folder with Keras.

    Raises:
        FileNotFoundError: if the model does not exist.
        ValueError: if the path is not a model, or a run folder has no threshold yet.
        MetadataError: if its metadata is missing or does not match it.
    """
    path = check_model_path(path)
    return (
        LiteModel(path).require_grayscale() if path.suffix == ".tflite" else KerasModel.open(path)
    )


def predict_probabilities(model_path: str | Path, images: np.ndarray) -> np.ndarray:
    """The per-class probabilities of a `.keras` or `.tflite` file for raw-pixel images,
    whether or not a threshold was chosen yet."""
    model_path = check_model_path(model_path)
    if model_path.suffix == ".tflite":
        return LiteModel(model_path).predict_proba(images)
    return keras_probabilities(load_model(model_path), images)


def keras_beside(path: str | Path) -> Path:
    """The float `.keras` of an exported model, from any of its files (found by the metadata's
    file names); a run folder's `best.keras`; or the path itself when it is a `.keras`.

    Grad-CAM needs gradients, which only the float model has.

    Raises:
        FileNotFoundError: if the `.keras` is not beside a `.tflite`.
        MetadataError: if the `.tflite`'s metadata is missing.
    """

    path = check_model_path(path)
    if path.is_dir():
        return path / MODEL_FILE
    if path.suffix != ".tflite":
        return path
    metadata_path = find_metadata(path)
    metadata = load_metadata(metadata_path)
    name = (metadata.get("files") or model_files(metadata_path.stem))["keras"]
    keras_path = path.parent / name
    if not keras_path.is_file():
        raise FileNotFoundError(
            f"Grad-CAM needs the float .keras model, and '{name}' is not beside '{path}'. "
            f"Received: model='{path}'. Pass --model with the .keras file of the same export."
        )
    return keras_path
