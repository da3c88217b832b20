"""Run an exported `.tflite` model with LiteRT: what an edge device installs.

Needs only `ai-edge-litert` (a requirement of every install), numpy and Pillow; it never
imports TensorFlow.

Example:


>>> model = LiteModel("saved_models/pneumocnn_int8.tflite")  # doctest: +SKIP
>>> model.predict_file("chest.jpeg")  # doctest: +SKIP
Prediction(path='chest.jpeg', label='PNEUMONIA', probability=0.97, threshold=0.61, ...)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from pneumocnn.core.errors import UsageError
from pneumocnn.core.metadata import (
    MetadataError,
    check_model_io,
    find_metadata,
    load_metadata,
    model_files,
    model_name,
    settle_family,
)
from pneumocnn.core.task import Task, class_probabilities
from pneumocnn.data.images import read_grayscale
from pneumocnn.runtime import guard
from pneumocnn.runtime.prediction import classify

if TYPE_CHECKING:
    from pneumocnn.runtime.prediction import Prediction


def open_interpreter(model_path: str | Path, num_threads: int | None = None):
    """A LiteRT interpreter for a `.tflite` file, tensors allocated: what `LiteModel` runs, and
    what the bench times for every model (with or without pneumocnn metadata).

    Args:
        model_path: the `.tflite` file.
        num_threads: interpreter threads. Defaults to `None` (LiteRT's choice).
    """
    interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def quantize(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Maps float values to a tensor's integer type with its scale and zero point."""
    dtype = details["dtype"]
    scale, zero_point = details["quantization"]
    if not np.issubdtype(dtype, np.integer) or scale == 0:
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Maps a tensor's integer values back to float with its scale and zero point."""
    scale, zero_point = details["quantization"]
    if not np.issubdtype(details["dtype"], np.integer) or scale == 0:
        return values.astype(np.float32)
    return (values.astype(np.float32) - zero_point) * scale


class LiteModel:
    """A `.tflite` classifier (int8 or float16) with its metadata: quantize, run, dequantize.

    One of the runners of `pneumocnn.runtime.runners` (same interface as `KerasModel`), and the only
    one an edge device needs.

    Args:
        model_path: the `.tflite` file.
        metadata_path: its `pneumocnn.json`. Defaults to `None`, the one beside the model.
        num_threads: interpreter threads. Defaults to `None` (LiteRT's choice).

    Raises:
        FileNotFoundError: if the model file does not exist.
        MetadataError: if the metadata is missing, malformed, or does not match the model.
        ValueError: if the metadata's input-guard calibration is malformed.
    """

    def __init__(
        self,
        model_path: str | Path,
        metadata_path: str | Path | None = None,
        num_threads: int | None = None,
    ):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"Model file not found. Received: model='{model_path}'. Pass the path of an "
                "exported .tflite (e.g. saved_models/pneumocnn_int8.tflite)."
            )
        if metadata_path is None:
            metadata_path = find_metadata(self.model_path)
            settle_family(metadata_path)  # completes a write of the family that was killed
        self.metadata = load_metadata(metadata_path, self.model_path)
        self.image_size = int(self.metadata["image_size"])
        self.task = Task.of_metadata(self.metadata)
        self.class_names = list(self.task.class_names)
        self.threshold = float(self.metadata["threshold"])
        try:
            self.guard = guard.calibration_of(self.metadata)
        except ValueError as error:
            raise MetadataError(f"Metadata file '{metadata_path}': {error}") from error
        self.interpreter = open_interpreter(self.model_path, num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        check_model_io(
            self.model_path,
            self.image_size,
            self.task,
            tuple(int(n) for n in self.input["shape"]),
            int(np.prod(self.output["shape"][1:])),
        )

    @property
    def channels(self) -> int:
        """The channels of the model's input: 1, or 3 for an export's RGB variant (see
        `pneumocnn.edge.rgb`)."""
        return int(self.input["shape"][-1])

    def require_grayscale(self) -> LiteModel:
        """Returns the model itself, or refuses an export's RGB variant, which is for stock
        image classifiers (RGB in, one score per class) and not for pneumocnn's own runners.

        Raises:
            UsageError: for the RGB variant, naming the grayscale file to use.
        """
        if self.channels == 1:
            return self
        int8 = self.model_path.parent / model_files(model_name(self.model_path))["int8"]
        raise UsageError(
            f"'{self.model_path}' is the RGB variant of an export, for stock image classifiers "
            f"(float RGB in, one score per class); pneumocnn runs the grayscale models. "
            f"Received: model='{self.model_path}' ({self.channels} input channels). Pass "
            f"'{int8}' from the same folder."
        )

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Returns the model's probabilities for raw-pixel images.

        Args:
            images: uint8 or float array `(n, image_size, image_size, 1)` of raw 0-255 pixels,
                as `pneumocnn.data.images.load_image` returns.

        Returns:
            `(n, classes)`, one probability per class (a binary model's as `[1 - p, p]`, see
            `pneumocnn.core.task.class_probabilities`; `pneumocnn.core.task.pneumonia_probability`
            gives P(pneumonia)).
        """
        outputs = []
        for image in images:
            batch = quantize(np.asarray(image, np.float32)[np.newaxis], self.input)
            self.interpreter.set_tensor(self.input["index"], batch)
            self.interpreter.invoke()
            output = self.interpreter.get_tensor(self.output["index"])
            outputs.append(dequantize(output, self.output).reshape(-1))
        width = int(self.output["shape"][-1])
        probabilities = np.clip(np.asarray(outputs, np.float32).reshape(-1, width), 0.0, 1.0)
        return class_probabilities(probabilities)

    def predict_file(self, path: str | Path, threshold: float | None = None) -> Prediction:
        """Loads an image file (JPEG, PNG, DICOM), checks it with the input guard, and
        classifies it (see `classify`).

        Args:
            path: the image file.
            threshold: the decision threshold for this call. Defaults to `None`: the
                metadata's.

        Raises:
            ImageLoadError: if the file is not a readable image.
            UsageError: if the model is an export's RGB variant (see `require_grayscale`).
        """
        return classify(self.require_grayscale(), read_grayscale(path), path, threshold)
