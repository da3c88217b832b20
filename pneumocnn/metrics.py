"""Metrics and thresholds: pure numpy and scikit-learn, no I/O, no plotting.

Where specificity is computed, how the threshold is chosen, the calibration error, and the
headline figures an app shows. Every function takes true labels and per-class probabilities
(see `pneumocnn.task`); the pneumonia-vs-NORMAL view is the same for both tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from pneumocnn.task import (
    binary_class_names,
    class_probabilities,
    decide,
    pneumonia_labels,
    pneumonia_probability,
)


def choose_threshold(
    labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float | None = None
) -> float:
    """Chooses the decision threshold from validation predictions.

    A prediction is positive when `probability >= threshold`.

    Args:
        labels: 0/1 true labels.
        probabilities: P(positive).
        target_sensitivity: if given, the threshold of the first ROC operating point (lowest
            false-positive rate, i.e. best specificity) whose sensitivity reaches it. Defaults
            to `None`: maximise Youden's J = sensitivity + specificity - 1.

    Returns:
        The threshold, a probability in (0, 1].

    Raises:
        ValueError: if `labels` hold one class only, or the target is not in (0, 1].
    """
    if len(np.unique(labels)) < 2:
        raise ValueError(
            "Choosing a threshold needs both classes in the validation labels. "
            f"Received: labels with classes {np.unique(labels).tolist()}."
        )
    fpr, tpr, thresholds = skm.roc_curve(labels, probabilities)
    # roc_curve's first point (threshold +inf) calls nothing positive: never an operating point.
    # Without it, even a model whose outputs are all equal gets a threshold inside (0, 1].
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if target_sensitivity is None:
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if not 0 < target_sensitivity <= 1:
        raise ValueError(
            "target_sensitivity must be in (0, 1]. "
            f"Received: target_sensitivity={target_sensitivity}"
        )
    return float(thresholds[int(np.argmax(tpr >= target_sensitivity))])


def choose_pneumonia_threshold(
    labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float | None = None
) -> float:
    """`choose_threshold` on the pneumonia-vs-NORMAL view of either task's labels and
    per-class probabilities (for a subtype model, on P(pneumonia) = 1 - P(NORMAL))."""
    return choose_threshold(
        pneumonia_labels(labels), pneumonia_probability(probabilities), target_sensitivity
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
        `pneumocnn.task.decide`) and `argmax` (see `subtype_metrics_at`), and `binary`: the
        pneumonia-vs-NORMAL metrics of the same model, directly comparable with a binary
        model's.
    """
    labels = np.asarray(labels)
    probabilities = class_probabilities(probabilities)
    binary = binary_metrics(
        pneumonia_labels(labels),
        pneumonia_probability(probabilities),
        threshold,
        binary_class_names(class_names),
    )
    if len(class_names) == 2:
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

    Decisions follow `pneumocnn.task.decide` (for a subtype model, the three-class labels); the
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


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict[str, float]],
    groups: Sequence[str],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals, resampling whole groups (patients), not images.

    One patient's films are alike, so resampling films would understate the spread; each
    resample draws as many patients as there are, with replacement, and takes all their
    films. (scipy's `bootstrap` resamples observations, not clusters.)

    Args:
        statistic: maps an index array (the films of one resample) to a dict of figures.
        groups: the group (patient) of each film.
        resamples: number of resamples. Defaults to 1000.
        confidence: the interval's coverage. Defaults to 0.95.
        seed: seeds the resampling. Defaults to 0.

    Returns:
        `{figure: [low, high]}` for every figure `statistic` returns (NaNs ignored).

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> intervals = bootstrap_intervals(
    ...     lambda i: {"mean": float(labels[i].mean())}, ["a", "b", "c", "d"], resamples=200
    ... )
    >>> 0.0 <= intervals["mean"][0] <= 0.5 <= intervals["mean"][1] <= 1.0
    True
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(resamples):
        picked = rng.integers(0, len(members), len(members))
        index = np.concatenate([members[g] for g in picked])
        for name, value in statistic(index).items():
            samples.setdefault(name, []).append(value)
    tail = (1.0 - confidence) / 2
    return {
        name: [float(np.nanquantile(values, tail)), float(np.nanquantile(values, 1 - tail))]
        for name, values in samples.items()
    }


def group_recalls(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, groups: Sequence[str]
) -> dict[str, dict[str, float]]:
    """How many films of each group the decision gets right (pneumonia vs NORMAL).

    Args:
        labels: true labels (NORMAL = 0).
        probabilities: per-class probabilities (or P(positive)).
        threshold: the decision threshold on P(pneumonia).
        groups: a group name per film (see `pneumocnn.data.film_group`).

    Returns:
        `{group: {"films": n, "recall": share called right}}`, in sorted group order.
    """
    positive = pneumonia_labels(np.asarray(labels)).astype(bool)
    called = pneumonia_probability(class_probabilities(probabilities)) >= threshold
    right = called == positive
    groups = np.asarray(groups)
    return {
        name: {"films": int(np.sum(groups == name)), "recall": float(right[groups == name].mean())}
        for name in sorted(set(groups.tolist()))
    }


def uncertainty(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    patients: Sequence[str],
    groups: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap intervals of the headline figures and the per-group breakdown.

    Args:
        labels: true labels (NORMAL = 0).
        probabilities: per-class probabilities (or P(positive)).
        threshold: the decision threshold on P(pneumonia).
        patients: the patient of each film (resampled as a whole).
        groups: a group name per film (see `pneumocnn.data.film_group`).
        resamples: bootstrap resamples. Defaults to 1000.
        seed: seeds the resampling. Defaults to 0.

    Returns:
        `{"intervals": {figure: [low, high]}, "confidence": 0.95, "resamples": n,
        "patients": number of patients, "groups": group_recalls(...)}`; the figures are
        those of `pneumonia_figures`.
    """
    labels = np.asarray(labels)
    probabilities = class_probabilities(probabilities)
    intervals = bootstrap_intervals(
        lambda index: pneumonia_figures(labels[index], probabilities[index], threshold),
        patients,
        resamples=resamples,
        seed=seed,
    )
    return {
        "intervals": intervals,
        "confidence": 0.95,
        "resamples": resamples,
        "patients": int(len(set(patients))),
        "groups": group_recalls(labels, probabilities, threshold, groups),
    }


def grey_level_noise(images: np.ndarray, draws: int, seed: int):
    """Yields `draws` seeded copies of raw 0-255 `images` with -1, 0 or +1 grey level added to
    every pixel independently, clipped to 0-255, in the images' dtype."""
    images = np.asarray(images)
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        noisy = np.clip(images.astype(np.int16) + rng.integers(-1, 2, images.shape), 0, 255)
        yield noisy.astype(images.dtype)


def pixel_noise_sensitivity(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    draws: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """How far P(pneumonia) moves when every pixel moves by at most one grey level.

    Another JPEG decoder or resizer (a browser canvas, MediaPipe, Android's bitmap scaling)
    hands the model pixels a grey level or so away from pneumocnn's loader. This runs the model
    on `draws` seeded copies of `images` with independent -1, 0 or +1 grey levels per pixel
    (clipped to 0-255) and reports the change of P(pneumonia) against the images as given.
    A call whose P(pneumonia) lies closer to the threshold than `p99_change` may change with
    such a client.

    Args:
        predict_proba: the model, raw 0-255 images `(n, H, W, 1)` -> probabilities.
        images: raw 0-255 images.
        draws: noisy copies per image. Defaults to 5.
        seed: seeds the noise. Defaults to 0.

    Returns:
        `films`, `draws`, and the `mean_change`, `p99_change` (99th percentile over films and
        draws) and `max_change` of P(pneumonia).

    Example:

    >>> steady = lambda x: np.full(len(x), 0.3)
    >>> pixel_noise_sensitivity(steady, np.zeros((2, 4, 4, 1)))["max_change"]
    0.0
    """
    images = np.asarray(images)
    base = pneumonia_probability(class_probabilities(predict_proba(images)))
    changes = []
    for noisy in grey_level_noise(images, draws, seed):
        moved = pneumonia_probability(class_probabilities(predict_proba(noisy)))
        changes.append(np.abs(moved - base))
    changes = np.concatenate(changes)
    return {
        "films": int(len(images)),
        "draws": int(draws),
        "mean_change": round(float(changes.mean()), 4),
        "p99_change": round(float(np.percentile(changes, 99)), 4),
        "max_change": round(float(changes.max()), 4),
    }
