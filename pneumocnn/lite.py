"""Run an exported `.tflite` model with LiteRT: what an edge device installs.

Needs only `ai-edge-litert`, numpy and Pillow (`pip install "pneumocnn[lite]"`); it never imports
TensorFlow, and falls back to `tf.lite.Interpreter` only when LiteRT is not installed.

Example:

>>> model = LiteModel("saved_models/pneumocnn_int8.tflite")  # doctest: +SKIP
>>> model.predict_file("chest.jpeg")  # doctest: +SKIP
Prediction(path='chest.jpeg', label='PNEUMONIA', probability=0.97, threshold=0.61, ...)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocnn import guard
from pneumocnn.images import read_grayscale, to_model_input
from pneumocnn.metadata import check_model_io, find_metadata, load_metadata
from pneumocnn.task import class_probabilities, decide, pneumonia_probability

if TYPE_CHECKING:
    from PIL import Image


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT missing: TensorFlow's bundled interpreter does the same job.
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


def open_interpreter(model_path: str | Path, num_threads: int | None = None):
    """A LiteRT interpreter for a `.tflite` file, tensors allocated: what `LiteModel` runs, and
    what the bench times for every model (with or without pneumocnn metadata).

    Args:
        model_path: the `.tflite` file.
        num_threads: interpreter threads. Defaults to `None` (LiteRT's choice).
    """
    interpreter = _interpreter_class()(model_path=str(model_path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's result.

    Args:
        path: the image file.
        label: the predicted class name; `None` when the input guard refused the image.
        probability: P(pneumonia): P(positive class) for a binary model, 1 - P(NORMAL) for a
            subtype model; `None` when refused.
        threshold: the decision threshold on `probability` (the metadata's, unless one was
            given for this run).
        probabilities: P(class) for each class name (for a binary model, the two classes);
            empty when refused.
        verdict: the input guard's verdict (see `pneumocnn.guard`): "ok", "flagged" (unlike
            the training films: read the label with care) or "refused" (not classified),
            with the reasons and the out-of-distribution score. Defaults to "ok".
    """

    path: str
    label: str | None
    probability: float | None
    threshold: float
    probabilities: dict[str, float] = dataclasses.field(default_factory=dict)
    verdict: guard.Verdict = dataclasses.field(default_factory=lambda: guard.Verdict(guard.OK))

    def as_row(self) -> dict[str, Any]:
        """The flat record that predict's JSON and CSV and the app's table show: `path`,
        `label`, `probability`, `threshold`, `verdict`, `ood_score`, `reason`, and
        `P(<class>)` for each class (empty when refused)."""
        return {
            "path": self.path,
            "label": self.label or "",
            "probability": None if self.probability is None else round(self.probability, 6),
            "threshold": round(self.threshold, 6),
            "verdict": self.verdict.status,
            "ood_score": None if self.verdict.score is None else round(self.verdict.score, 4),
            "reason": self.verdict.reason,
            **{f"P({name})": round(value, 6) for name, value in self.probabilities.items()},
        }


def make_prediction(
    path: str | Path,
    probabilities: np.ndarray,
    threshold: float,
    class_names: list[str],
    verdict: guard.Verdict | None = None,
) -> Prediction:
    """A `Prediction` from one image's per-class probabilities (see `pneumocnn.task`), with
    the input guard's verdict (defaults to `None`: "ok")."""
    row = class_probabilities(np.asarray(probabilities, np.float64).reshape(1, -1))
    per_class = [float(value) for value in row[0]]
    return Prediction(
        str(path),
        decide(row, threshold, class_names)[0],
        float(pneumonia_probability(row)[0]),
        threshold,
        dict(zip(class_names, per_class, strict=True)),
        verdict or guard.Verdict(guard.OK),
    )


def classify(
    model: Any, gray: Image.Image, path: str | Path, threshold: float | None = None
) -> Prediction:
    """Guards and classifies one decoded image: the one path of `predict_file`, `predict`
    and the app.

    The input guard (see `pneumocnn.guard.judge`) runs first, with the model's calibration
    (`model.guard`, from its metadata; refusal checks only without one): a refused image is
    not classified; a flagged one is, with the verdict attached.

    Args:
        model: a runner (`LiteModel`, `pneumocnn.runners.KerasModel`).
        gray: the decoded grayscale image at its own size (see
            `pneumocnn.images.read_grayscale`, which records its colourfulness).
        path: the file it came from, for the result.
        threshold: the decision threshold for this call. Defaults to `None`: the model's.

    Returns:
        A `Prediction` (label and probability `None` when refused).
    """
    threshold = model.threshold if threshold is None else float(threshold)
    image = to_model_input(gray, model.image_size)
    verdict = guard.judge(gray, image, getattr(model, "guard", None), model.image_size)
    if verdict.status == guard.REFUSED:
        return Prediction(str(path), None, None, threshold, {}, verdict)
    output = model.predict_proba(image[np.newaxis])[0]
    return make_prediction(path, output, threshold, model.class_names, verdict)


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

    One of the runners of `pneumocnn.runners` (same interface as `KerasModel`), and the only
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
        metadata_path = metadata_path or find_metadata(self.model_path)
        self.metadata = load_metadata(metadata_path, self.model_path)
        self.image_size = int(self.metadata["image_size"])
        self.class_names = list(self.metadata["class_names"])
        self.threshold = float(self.metadata["threshold"])
        self.guard = guard.calibration_of(self.metadata)
        self.interpreter = open_interpreter(self.model_path, num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        check_model_io(
            self.model_path,
            self.image_size,
            self.class_names,
            tuple(int(n) for n in self.input["shape"]),
            int(np.prod(self.output["shape"][1:])),
        )

    @property
    def task(self) -> str:
        """The task, "binary" or "subtype", from the metadata."""
        return self.metadata.get("task", "binary")

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Returns the model's probabilities for raw-pixel images.

        Args:
            images: uint8 or float array `(n, image_size, image_size, 1)` of raw 0-255 pixels,
                as `pneumocnn.images.load_image` returns.

        Returns:
            `(n, classes)`, one probability per class (a binary model's as `[1 - p, p]`, see
            `pneumocnn.task.class_probabilities`; `pneumocnn.task.pneumonia_probability` gives
            P(pneumonia)).
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
        """
        return classify(self, read_grayscale(path), path, threshold)
