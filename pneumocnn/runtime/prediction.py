"""One film's result (`Prediction`), and `classify`: guard, then model, then the decision.

The one path of `predict_file`, `python -m pneumocnn.predict` and the app. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocnn.core.task import class_probabilities, decide, pneumonia_probability
from pneumocnn.data.images import to_model_input
from pneumocnn.runtime import guard

if TYPE_CHECKING:
    from PIL import Image


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
        verdict: the input guard's verdict (see `pneumocnn.runtime.guard`): "ok", "flagged" (unlike
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
        `P(<class>)` for each class (empty when refused).

        Probabilities and the threshold are rounded to six decimals, or to as many more as it
        takes for the rounded values to keep their order (`decimals_to_show`): a row never
        reads "NORMAL, 0.042969 >= 0.042969"."""
        digits = decimals_to_show([self.probability, self.threshold], ROW_DECIMALS)
        return {
            "path": self.path,
            "label": self.label or "",
            "probability": None if self.probability is None else round(self.probability, digits),
            "threshold": round(self.threshold, digits),
            "verdict": self.verdict.status,
            "ood_score": None if self.verdict.score is None else round(self.verdict.score, 4),
            "reason": self.verdict.reason,
            **{f"P({name})": round(value, digits) for name, value in self.probabilities.items()},
        }


# Decimals of a probability or threshold in a row (JSON, CSV), unless more are needed.
ROW_DECIMALS = 6


def decimals_to_show(values: list[float | None], minimum: int) -> int:
    """The fewest decimals, at least `minimum`, at which the rounded `values` compare as the
    values do: distinct values stay distinct (so a probability just under the threshold never
    shows equal to it), and none becomes 0 or 1 unless it is.

    Args:
        values: the numbers shown side by side (`None` entries are ignored).
        minimum: the decimals to show at least.

    Returns:
        The number of decimals (at most 17, where every float64 is exact).

    Example:

    >>> decimals_to_show([0.04296875, 0.042969], 6)
    7
    """
    numbers = [float(value) for value in values if value is not None]
    for digits in range(minimum, 17):
        rounded = [round(number, digits) for number in numbers]
        pairs_kept = all(
            (rounded[i] == rounded[j]) == (numbers[i] == numbers[j])
            for i in range(len(numbers))
            for j in range(i + 1, len(numbers))
        )
        ends_kept = all(
            (shown in (0.0, 1.0)) == (number in (0.0, 1.0))
            for shown, number in zip(rounded, numbers, strict=True)
        )
        if pairs_kept and ends_kept:
            return digits
    return 17


def make_prediction(
    path: str | Path,
    probabilities: np.ndarray,
    threshold: float,
    class_names: list[str],
    verdict: guard.Verdict | None = None,
) -> Prediction:
    """A `Prediction` from one image's per-class probabilities (see `pneumocnn.core.task`), with
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

    The input guard (see `pneumocnn.runtime.guard.judge`) runs first, with the model's calibration
    (`model.guard`, from its metadata; refusal checks only without one): a refused image is
    not classified; a flagged one is, with the verdict attached.

    Args:
        model: a runner (`LiteModel`, `pneumocnn.runtime.runners.KerasModel`).
        gray: the decoded grayscale image at its own size (see
            `pneumocnn.data.images.read_grayscale`, which records its colourfulness).
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
