"""Choosing the operating threshold on P(pneumonia): Youden's J, or the best specificity
that reaches a target sensitivity."""

from __future__ import annotations

import numpy as np
from scipy.stats import binom
from sklearn import metrics as skm

from pneumocnn.core.task import class_probabilities, pneumonia_labels, pneumonia_probability


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


def fewest_positives(target_sensitivity: float, confidence: float) -> int:
    """The fewest pneumonia films for which `sensitivity_bound_threshold` has an answer.

    With `n` films, the most cautious threshold (the lowest pneumonia score) misses a new film
    with probability above `1 - target` only if all `n` scored above that quantile, which has
    probability `target ** n`; it must be at most `1 - confidence`.

    Example:

    >>> fewest_positives(0.96, 0.95)
    74
    """
    return int(np.ceil(np.log(1.0 - confidence) / np.log(target_sensitivity) - 1e-12))


def _check_fractions(**values: float) -> None:
    for name, value in values.items():
        if not 0 < value < 1:
            raise ValueError(
                f"{name} must lie in (0, 1). Received: {name}={value!r}. Pass e.g. 0.96 and 0.95."
            )


def sensitivity_bound_threshold(
    labels: np.ndarray,
    probabilities: np.ndarray,
    target_sensitivity: float = 0.96,
    confidence: float = 0.95,
) -> dict[str, float | int | str]:
    """The threshold whose sensitivity on new films of the same site reaches the target, with
    the given confidence: the Neyman-Pearson umbrella order statistic.

    The pneumonia films' scores, sorted, are `s_1 <= ... <= s_n`. Calling pneumonia at
    `score >= s_k` misses a new pneumonia film with probability `F(s_k)`, where `F` is the
    distribution of pneumonia scores; `F(s_k)` exceeds `alpha = 1 - target` exactly when fewer
    than `k` of the `n` scores fall below `F`'s `alpha`-quantile, which has probability
    `P(Binomial(n, alpha) <= k - 1)`. The largest `k` that keeps it at most `1 - confidence`
    gives the best specificity with the guarantee (Tong, Feng and Li, "Neyman-Pearson
    classification algorithms and NP receiver operating characteristics", Science Advances
    4(2), 2018; their umbrella algorithm for the type I error, applied to missed pneumonia).
    It holds for films drawn independently from the site of the scored ones, scored by a model
    that did not learn from them (held out or out of fold); ties only make it more cautious.
    (Written here: scikit-learn and scipy have no Neyman-Pearson threshold.)

    Args:
        labels: true labels of either task (NORMAL = 0).
        probabilities: per-class probabilities, or a binary model's P(pneumonia).
        target_sensitivity: the sensitivity to guarantee, in (0, 1). Defaults to 0.96.
        confidence: the probability that the guarantee holds, in (0, 1). Defaults to 0.95.

    Returns:
        `threshold`; `rank` (k) and `positives` (n); `films_below` (pneumonia films of these
        that it misses); `sensitivity` and `specificity` on these films; and `rule`.

    Raises:
        ValueError: if the target or confidence is outside (0, 1), the films lack a class, or
            there are fewer pneumonia films than `fewest_positives` asks for.

    Example:

    >>> scores = np.linspace(0.5, 1.0, 100)
    >>> labels = np.r_[np.ones(100, int), np.zeros(50, int)]
    >>> probabilities = np.r_[scores, np.linspace(0.0, 0.6, 50)]
    >>> result = sensitivity_bound_threshold(labels, probabilities, 0.9, 0.95)
    >>> result["rank"], round(result["threshold"], 3)
    (5, 0.52)
    """
    _check_fractions(target_sensitivity=target_sensitivity, confidence=confidence)
    positive = pneumonia_labels(labels).astype(bool)
    score = pneumonia_probability(class_probabilities(np.asarray(probabilities, np.float64)))
    if positive.all() or not positive.any():
        raise ValueError(
            "A sensitivity bound needs pneumonia and NORMAL films. Received: "
            f"{int(positive.sum())} pneumonia and {int((~positive).sum())} NORMAL films."
        )
    scores = np.sort(score[positive])
    n = len(scores)
    ranks = np.arange(1, n + 1)
    allowed = binom.cdf(ranks - 1, n, 1.0 - target_sensitivity) <= 1.0 - confidence
    if not allowed.any():
        raise ValueError(
            f"A sensitivity of {target_sensitivity} with confidence {confidence} needs at least "
            f"{fewest_positives(target_sensitivity, confidence)} pneumonia films; these have {n}. "
            "Add labelled pneumonia films, lower --confidence, or pass --confidence 0 for the "
            "plain point estimate."
        )
    rank = int(ranks[allowed].max())
    threshold = float(scores[rank - 1])
    called = score >= threshold
    return {
        "threshold": threshold,
        "rank": rank,
        "positives": n,
        "films_below": int(np.sum(scores < threshold)),
        "sensitivity": float(np.mean(called[positive])),
        "specificity": float(np.mean(~called[~positive])),
        "rule": f"sensitivity >= {target_sensitivity} on new films with confidence {confidence} "
        "(Neyman-Pearson umbrella order statistic)",
    }
