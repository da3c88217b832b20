"""What a pneumocnn model answers: the two tasks, their classes, P(pneumonia) and the decision.

Every classifier (`.keras`, int8 or float16 `.tflite`, see `pneumocnn.runtime.runners`) returns one
probability per class, NORMAL first: a binary model as `[1 - p, p]`, a subtype model as its
softmax over NORMAL / BACTERIAL / VIRAL. Decisions, metrics, plots and the int8 parity check all
go through `pneumonia_probability` and `decide` below, so both tasks share one path. Needs only
numpy, so the edge install can use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pneumocnn.core.errors import DataError

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


@dataclasses.dataclass(frozen=True)
class Task:
    """The task a model does, and every answer that depends on it.

    Built from what a model says of itself: its metadata (`of_metadata`), its run's config
    (`of`, with the data folder's class names for a binary model), or, for figures computed
    from class names alone, `of_classes`. No other module reads the task from the number of
    outputs or class names.

    Args:
        name: "binary" or "subtype".
        class_names: index = label, NORMAL first.

    Example:

    >>> task = Task.of("subtype")
    >>> task.class_names, task.positive_class, task.head_units
    (('NORMAL', 'BACTERIAL', 'VIRAL'), 'PNEUMONIA', 3)
    >>> Task.of("binary").decide([[0.3, 0.7]], 0.5)
    ['PNEUMONIA']
    """

    name: str
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        expected = 3 if self.name == "subtype" else 2
        if self.name not in TASKS or len(self.class_names) != expected:
            raise ValueError(
                f"A task is 'binary' with two classes or 'subtype' with three, NORMAL first. "
                f"Received: task={self.name!r}, class_names={list(self.class_names)!r}."
            )

    @classmethod
    def of(cls, name: str, class_names: Sequence[str] | None = None) -> Task:
        """The task `name`, with `class_names` (default: the task's own, NORMAL first)."""
        default = SUBTYPE_CLASS_NAMES if name == "subtype" else BINARY_CLASS_NAMES
        return cls(name, tuple(class_names or default))

    @classmethod
    def of_metadata(cls, metadata: dict) -> Task:
        """The task of an exported model, from its metadata (`task`, "binary" when a file from
        before the subtype task has none, and `class_names`)."""
        return cls.of(metadata.get("task", "binary"), metadata["class_names"])

    @classmethod
    def of_folders(cls, name: str, folder_names: Sequence[str]) -> Task:
        """The task trained from class folders: a binary model's classes are the folders'; a
        subtype model's are NORMAL / BACTERIAL / VIRAL, read from the names of the films in
        `NORMAL/` and `PNEUMONIA/`, or from folders of those names (see
        `pneumocnn.data.folders.label_for_task`)."""
        if name != "subtype" and len(folder_names) != 2:
            merge = (
                " For NORMAL/, BACTERIAL/ and VIRAL/, use --task subtype, or move BACTERIAL/ and "
                "VIRAL/ into one PNEUMONIA/ folder for a binary model."
                if sorted(folder_names) == sorted(SUBTYPE_CLASS_NAMES)
                else ""
            )
            raise DataError(
                f"A binary model learns from two class folders (e.g. NORMAL/ and PNEUMONIA/). "
                f"Received: {len(folder_names)} class folders {list(folder_names)}. Keep two."
                f"{merge}"
            )
        return cls.of(name, None if name == "subtype" else folder_names)

    @classmethod
    def of_head(cls, units: int) -> Task:
        """The task of a bare `.keras` file that comes with neither metadata nor a run folder:
        one sigmoid unit is the binary task, three softmax units the subtype task."""
        return cls.of("binary" if units == 1 else "subtype")

    @classmethod
    def of_classes(cls, class_names: Sequence[str]) -> Task:
        """The task whose classes these are: three (NORMAL first) is the subtype task."""
        return cls.of("subtype" if len(class_names) == 3 else "binary", class_names)

    @property
    def subtype(self) -> bool:
        """Whether the model tells the pneumonia subtypes apart."""
        return self.name == "subtype"

    @property
    def folder_names(self) -> tuple[str, ...]:
        """The class folders its labelled films sit in: its classes for a binary model;
        `NORMAL/` and `PNEUMONIA/` for a subtype model (which also takes folders named by its
        classes; see `of_folders`)."""
        return BINARY_CLASS_NAMES if self.subtype else self.class_names

    @property
    def head_units(self) -> int:
        """The network's output units: one sigmoid unit for binary, one softmax unit a class."""
        return len(self.class_names) if self.subtype else 1

    @property
    def output_units(self) -> frozenset[int]:
        """The output widths a model file of this task may have: a binary model's own one unit,
        or its RGB variant's score per class; a subtype model's one per class."""
        return frozenset({len(self.class_names)} if self.subtype else {1, 2})

    @property
    def positive_class(self) -> str:
        """The class a pneumonia call names in the pneumonia-vs-NORMAL view."""
        return PNEUMONIA if self.subtype else self.class_names[1]

    @property
    def pneumonia_view(self) -> list[str]:
        """The two class names of the pneumonia-vs-NORMAL view: a binary model's own, else
        `[NORMAL, PNEUMONIA]`."""
        return [self.class_names[0], self.positive_class]

    @property
    def output_contract(self) -> str:
        """What a model file's output means, in words (the metadata's `output`)."""
        if self.subtype:
            return (
                "Softmax over class_names (NORMAL first). P(pneumonia) = 1 - P(NORMAL); "
                "decision: pneumonia when P(pneumonia) >= threshold, then the likelier of the "
                "other classes; else NORMAL."
            )
        return "P(positive_class): a probability in [0, 1]; positive when >= threshold."

    def probabilities(self, outputs) -> np.ndarray:
        """A model's raw outputs as one probability per class (see `class_probabilities`)."""
        return class_probabilities(outputs)

    def pneumonia(self, probabilities) -> np.ndarray:
        """P(pneumonia) of per-class probabilities (see `pneumonia_probability`)."""
        return pneumonia_probability(self.probabilities(probabilities))

    def decide(self, probabilities, threshold: float) -> list[str]:
        """The label of each prediction (see `decide`)."""
        return decide(probabilities, threshold, self.class_names)

    def explained_index(self, probabilities: Sequence[float], label: str | None) -> int:
        """The class Grad-CAM explains for one film: a binary model's positive class, whatever
        the call; a subtype model's decided subtype or, for a NORMAL call (or none), the
        likelier subtype (its map then faint)."""
        if not self.subtype:
            return 1
        if label is not None and label != self.class_names[0]:
            return self.class_names.index(label)
        return 1 + int(np.argmax(list(probabilities)[1:]))
