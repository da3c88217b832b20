"""The figures every report gives: sensitivity, specificity, accuracy, AUC, calibration error,
the subtype task's three-class figures, and the int8-against-float parity.

Both tasks are scored on P(pneumonia) through `pneumocnn.core.task`, so a subtype model's
pneumonia-vs-NORMAL figures compare with a binary model's. Uses scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from pneumocnn.core.task import (
    Task,
    class_probabilities,
    decide,
    pneumonia_labels,
    pneumonia_probability,
)


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """Expected calibration error: the bin-weighted mean |observed rate - mean predicted|.

    Args:
        labels: 0/1 true labels.
        probabilities: P(positive).
        bins: equal-width probability bins. Defaults to 10.
    """
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(labels[members].mean() - probabilities[members].mean())
    return float(error)


def metrics_at(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, class_names: list[str]
) -> dict[str, Any]:
    """Threshold-dependent metrics of 0/1 labels and P(positive): accuracy, sensitivity,
    specificity, per-class report, confusion matrix."""
    predicted = (probabilities >= threshold).astype(int)
    report = skm.classification_report(
        labels,
        predicted,
        labels=[0, 1],
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    return {
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "sensitivity": float(skm.recall_score(labels, predicted, pos_label=1, zero_division=0)),
        "specificity": float(skm.recall_score(labels, predicted, pos_label=0, zero_division=0)),
        "per_class": {name: report[name] for name in class_names},
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
    }


def binary_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, class_names: list[str]
) -> dict[str, Any]:
    """Metrics of 0/1 labels and P(positive), at the stored threshold and at 0.5.

    Returns:
        A dict with `images`, `images_per_class`, `roc_auc`, `average_precision`, `ece`, and
        `at_threshold` and `at_0.5` (see `metrics_at`).
    """
    both = len(np.unique(labels)) == 2
    return {
        "images": int(len(labels)),
        "images_per_class": np.bincount(labels, minlength=2).tolist(),
        "roc_auc": float(skm.roc_auc_score(labels, probabilities)) if both else None,
        "average_precision": (
            float(skm.average_precision_score(labels, probabilities)) if both else None
        ),
        "ece": expected_calibration_error(labels, probabilities),
        "at_threshold": metrics_at(labels, probabilities, threshold, class_names),
        "at_0.5": metrics_at(labels, probabilities, 0.5, class_names),
    }


def subtype_metrics_at(
    labels: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Multi-class metrics of given predictions: accuracy, balanced accuracy, per-class and
    macro precision / recall / F1, and the confusion matrix (rows true, columns predicted)."""
    indices = list(range(len(class_names)))
    report = skm.classification_report(
        labels,
        predicted,
        labels=indices,
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predicted)),
        "per_class": {name: report[name] for name in class_names},
        "macro": report["macro avg"],
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=indices).tolist(),
    }


def compute_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, class_names: list[str]
) -> dict[str, Any]:
    """All reported metrics of a model, for either task.

    Args:
        labels: true labels, index into `class_names`.
        probabilities: one probability per class `(n, classes)` (a binary model's `(n,)`
            P(positive) is accepted too).
        threshold: the decision threshold on P(pneumonia).
        class_names: index = label, NORMAL first.

    Returns:
        For a binary model, `binary_metrics` of it. For a subtype model, a dict with `task`
        "subtype", `images`, `images_per_class`, `ovr_auc` (one-vs-rest ROC AUC per class),
        `macro_ovr_auc`, `at_threshold` (the shipped decision rule, see
        `pneumocnn.core.task.decide`) and `argmax` (see `subtype_metrics_at`), and `binary`: the
        pneumonia-vs-NORMAL metrics of the same model, directly comparable with a binary
        model's.
    """
    labels = np.asarray(labels)
    probabilities = class_probabilities(probabilities)
    task = Task.of_classes(class_names)
    binary = binary_metrics(
        pneumonia_labels(labels), task.pneumonia(probabilities), threshold, task.pneumonia_view
    )
    if not task.subtype:
        return binary
    name_index = {name: index for index, name in enumerate(class_names)}
    decided = np.array([name_index[n] for n in decide(probabilities, threshold, class_names)])
    present = np.unique(labels)
    ovr_auc = {
        name: (
            float(skm.roc_auc_score(labels == index, probabilities[:, index]))
            if index in present and len(present) > 1
            else None
        )
        for index, name in enumerate(class_names)
    }
    known = [value for value in ovr_auc.values() if value is not None]
    # Among true pneumonia films, is the likelier subtype the right one? (The paper's
    # bacterial-vs-viral figure, independent of the pneumonia threshold.)
    pneumonia = labels > 0
    likelier_subtype = np.argmax(probabilities[:, 1:], axis=1) + 1
    return {
        "task": "subtype",
        "images": int(len(labels)),
        "images_per_class": np.bincount(labels, minlength=len(class_names)).tolist(),
        "ovr_auc": ovr_auc,
        "macro_ovr_auc": float(np.mean(known)) if len(known) == len(class_names) else None,
        "at_threshold": {
            "threshold": float(threshold),
            **subtype_metrics_at(labels, decided, class_names),
        },
        "argmax": subtype_metrics_at(labels, np.argmax(probabilities, axis=1), class_names),
        "bacterial_vs_viral_accuracy": (
            float(np.mean(likelier_subtype[pneumonia] == labels[pneumonia]))
            if pneumonia.any()
            else None
        ),
        "binary": binary,
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The metrics an app shows, from a `compute_metrics` report.

    For a subtype model, `roc_auc`, `accuracy`, `sensitivity` and `specificity` are its
    pneumonia-vs-NORMAL ones (comparable with a binary model's), and the three-class ones are
    added.
    """
    subtype = report if report.get("task") == "subtype" else None
    if subtype is not None:
        report = subtype["binary"]
    at = report["at_threshold"]
    figures = {
        "images": report["images"],
        "roc_auc": report["roc_auc"],
        "average_precision": report["average_precision"],
        "accuracy": at["accuracy"],
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "threshold": at["threshold"],
        "accuracy_at_0.5": report["at_0.5"]["accuracy"],
        "ece": report["ece"],
    }
    if subtype is not None:
        decided = subtype["at_threshold"]
        figures.update(
            subtype_accuracy=decided["accuracy"],
            subtype_balanced_accuracy=decided["balanced_accuracy"],
            subtype_macro_f1=decided["macro"]["f1-score"],
            subtype_recall={name: row["recall"] for name, row in decided["per_class"].items()},
            macro_ovr_auc=subtype["macro_ovr_auc"],
            bacterial_vs_viral_accuracy=subtype.get("bacterial_vs_viral_accuracy"),
            ovr_auc=subtype["ovr_auc"],
        )
    return figures


def parity(
    labels: np.ndarray,
    reference: np.ndarray,
    candidate: np.ndarray,
    threshold: float,
    class_names: list[str],
) -> dict[str, Any]:
    """How closely a candidate model (e.g. int8) follows a reference (the float model).

    Decisions follow `pneumocnn.core.task.decide` (for a subtype model, the three-class labels); the
    AUC is that of pneumonia vs NORMAL for both tasks.

    Args:
        labels: true labels.
        reference: the reference model's per-class probabilities.
        candidate: the candidate's, same shape.
        threshold: the decision threshold on P(pneumonia).
        class_names: index = label.

    Returns:
        `images`, `agreement` (share of identical decisions), `pneumonia_agreement` (share of
        identical pneumonia-vs-NORMAL calls: for a subtype model, the agreement without the
        BACTERIAL/VIRAL choice; for a binary model, the same as `agreement`), `auc_float`,
        `auc_int8`, `auc_drop` (reference minus candidate) and `max_abs_difference` of the
        probabilities.

    Example:

    >>> import numpy as np
    >>> reference = np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]])
    >>> candidate = np.array([[0.1, 0.4, 0.5], [0.8, 0.1, 0.1]])
    >>> figures = parity(np.array([1, 0]), reference, candidate, 0.5,
    ...                  ["NORMAL", "BACTERIAL", "VIRAL"])
    >>> figures["agreement"], figures["pneumonia_agreement"]
    (0.5, 1.0)
    """
    reference = class_probabilities(reference)
    candidate = class_probabilities(candidate)
    reference_calls = np.array(decide(reference, threshold, class_names))
    candidate_calls = np.array(decide(candidate, threshold, class_names))
    agreement = float(np.mean(reference_calls == candidate_calls))
    pneumonia_agreement = float(
        np.mean((reference_calls == class_names[0]) == (candidate_calls == class_names[0]))
    )
    binary_labels = pneumonia_labels(labels)
    auc_float = float(skm.roc_auc_score(binary_labels, pneumonia_probability(reference)))
    auc_int8 = float(skm.roc_auc_score(binary_labels, pneumonia_probability(candidate)))
    return {
        "images": int(len(labels)),
        "agreement": agreement,
        "pneumonia_agreement": pneumonia_agreement,
        "auc_float": auc_float,
        "auc_int8": auc_int8,
        "auc_drop": auc_float - auc_int8,
        "max_abs_difference": float(np.max(np.abs(reference - candidate))),
    }


def specificity_at_sensitivity(
    labels: np.ndarray, scores: np.ndarray, target_sensitivity: float
) -> float:
    """The best specificity of any threshold whose sensitivity reaches the target.

    Args:
        labels: 0/1 true labels.
        scores: P(positive).
        target_sensitivity: in (0, 1].

    Returns:
        The specificity at the ROC point of lowest false-positive rate with
        `sensitivity >= target_sensitivity`.
    """
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    return float(1.0 - fpr[tpr >= target_sensitivity].min())


def pneumonia_figures(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> dict[str, float]:
    """The pneumonia-vs-NORMAL headline figures of either task, cheaply (for resampling).

    Args:
        labels: true labels, index into the class names (NORMAL = 0).
        probabilities: per-class probabilities (or a binary model's P(positive)).
        threshold: the decision threshold on P(pneumonia).

    Returns:
        `roc_auc` (NaN when a resample holds one class only), `accuracy`, `sensitivity` and
        `specificity` at the threshold.
    """
    positive = pneumonia_labels(np.asarray(labels)).astype(bool)
    score = pneumonia_probability(class_probabilities(probabilities))
    called = score >= threshold
    both = positive.any() and (~positive).any()
    return {
        "roc_auc": float(skm.roc_auc_score(positive, score)) if both else float("nan"),
        "accuracy": float(np.mean(called == positive)),
        "sensitivity": float(np.mean(called[positive])) if positive.any() else float("nan"),
        "specificity": float(np.mean(~called[~positive])) if (~positive).any() else float("nan"),
    }


def three_class_figures(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, task: Task
) -> dict[str, float]:
    """A subtype model's three-class figures at the threshold, by the shared decision rule
    (`pneumocnn.core.task.decide`); nothing for a binary model.

    Returns:
        `three_class_accuracy` (the decided class is the true one) and `normal_recall` (NORMAL
        films called NORMAL), or `{}` for a binary task.
    """
    if not task.subtype:
        return {}
    labels = np.asarray(labels)
    decided = np.array(
        [task.class_names.index(name) for name in task.decide(probabilities, threshold)]
    )
    normal = labels == 0
    return {
        "three_class_accuracy": float(np.mean(decided == labels)),
        "normal_recall": float(np.mean(decided[normal] == 0)) if normal.any() else float("nan"),
    }
