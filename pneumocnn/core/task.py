"""What a pneumocnn model answers: the two tasks, their classes, P(pneumonia) and the decision.

Every classifier (`.keras`, int8 or float16 `.tflite`, see `pneumocnn.runtime.runners`) returns one
probability per class, NORMAL first: a binary model as `[1 - p, p]`, a subtype model as its
softmax over NORMAL / BACTERIAL / VIRAL. Decisions, metrics, plots and the int8 parity check all
go through `pneumonia_probability` and `decide` below, so both tasks share one path. Needs only
numpy, so the edge install can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TASKS = ("binary", "subtype")
BINARY_CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SUBTYPE_CLASS_NAMES = ("NORMAL", "BACTERIAL", "VIRAL")
# The class of a subtype model's pneumonia-vs-NORMAL view, and of a binary model's positive class.
PNEUMONIA = "PNEUMONIA"


def class_probabilities(outputs) -> np.ndarray:
    """A model's raw outputs as one probability per class, `(n, classes)`.

    A sigmoid head's `(n,)` or `(n, 1)` P(positive) becomes `(n, 2)` float64 `[1 - p, p]`: `p`
    is kept exactly in column 1, and `1 - p` of a float32 `p` is exact in float64. A softmax
    head's `(n, k)` is returned as it is.

    Example:

    >>> class_probabilities(np.array([[0.25]], np.float32)).tolist()
    [[0.75, 0.25]]
    """
    outputs = np.asarray(outputs)
    if outputs.ndim == 1:
        outputs = outputs[:, np.newaxis]
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        outputs = outputs.astype(np.float64)
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs


def pneumonia_probability(probabilities) -> np.ndarray:
    """P(pneumonia) of each row of per-class probabilities `(n, classes)`, NORMAL first.

    A binary model's P(positive) (column 1, exactly as the model gave it); a subtype model's
    1 - P(NORMAL). The dtype is kept.

    Example:

    >>> pneumonia_probability(np.array([[0.2, 0.5, 0.3]])).tolist()
    [0.8]
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(
            "Expected one probability per class, shape (images, classes) with at least two "
            f"classes. Received: shape={probabilities.shape}. Pass the output of a classifier's "
            "predict_proba, or wrap a sigmoid output with class_probabilities."
        )
    if probabilities.shape[1] == 2:
        return probabilities[:, 1]
    return 1.0 - probabilities[:, 0]


def pneumonia_labels(labels) -> np.ndarray:
    """Pneumonia-vs-NORMAL labels (1 for any class but NORMAL) from either task's labels."""
    return (np.asarray(labels) > 0).astype(int)


def binary_class_names(class_names: Sequence[str]) -> list[str]:
    """The class names of the pneumonia-vs-NORMAL view: a binary model's own, else
    `[NORMAL, PNEUMONIA]`."""
    return list(class_names) if len(class_names) == 2 else [class_names[0], PNEUMONIA]


def decide(probabilities, threshold: float, class_names: Sequence[str]) -> list[str]:
    """The label of each prediction, by the rule every consumer shares.

    Pneumonia when P(pneumonia) (see `pneumonia_probability`) is at least `threshold`, then the
    likeliest class other than NORMAL (for a binary model, the positive class); else NORMAL.
    So both tasks make the pneumonia call the same way, at a threshold chosen on validation.
    Compared in float64.

    Args:
        probabilities: per-class rows `(n, classes)` (see `class_probabilities`). A sequence of
            single floats (P(positive) of a binary model) is accepted too.
        threshold: the decision threshold on P(pneumonia).
        class_names: index = label, NORMAL first.

    Returns:
        One class name per prediction.

    Example:

    >>> decide([[0.3, 0.7], [0.9, 0.1]], 0.5, ["NORMAL", "PNEUMONIA"])
    ['PNEUMONIA', 'NORMAL']
    """
    rows = np.asarray(probabilities, np.float64)
    if rows.size == 0:
        return []
    if rows.ndim < 2:
        rows = class_probabilities(rows.reshape(-1))
    pneumonia = pneumonia_probability(rows) >= threshold
    indices = np.where(pneumonia, 1 + np.argmax(rows[:, 1:], axis=1), 0)
    return [class_names[index] for index in indices]
