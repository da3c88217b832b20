"""How sure a figure is: 95% bootstrap intervals over patients (not films), and the
recall of each group of films (NORMAL `IM-` / `NORMAL2-`, bacterial, viral)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pneumocnn.core.task import (
    class_probabilities,
    pneumonia_labels,
    pneumonia_probability,
)
from pneumocnn.data.folders import film_group, patient_id
from pneumocnn.evaluation.metrics import pneumonia_figures


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
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    groups: Sequence[str],
    patients: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """How many films of each group the decision gets right (pneumonia vs NORMAL), with its
    patient-bootstrap interval when the patients are given.

    Args:
        labels: true labels (NORMAL = 0).
        probabilities: per-class probabilities (or P(positive)).
        threshold: the decision threshold on P(pneumonia).
        groups: a group name per film (see `pneumocnn.data.folders.film_group`).
        patients: the patient of each film, for the intervals (see `bootstrap_intervals`).
            Defaults to `None`: no intervals.
        resamples: bootstrap resamples. Defaults to 1000.
        seed: seeds the resampling. Defaults to 0.

    Returns:
        `{group: {"films": n, "recall": share called right, "interval": [low, high]}}` (no
        `"interval"` without `patients`), in sorted group order.
    """
    positive = pneumonia_labels(np.asarray(labels)).astype(bool)
    called = pneumonia_probability(class_probabilities(probabilities)) >= threshold
    right = called == positive
    groups = np.asarray(groups)
    names = sorted(set(groups.tolist()))

    def recalls(index: np.ndarray) -> dict[str, float]:
        # A resample may hold no film of a group: NaN, which the interval ignores.
        return {
            name: float(right[index][groups[index] == name].mean())
            if np.any(groups[index] == name)
            else float("nan")
            for name in names
        }

    intervals = (
        bootstrap_intervals(recalls, patients, resamples=resamples, seed=seed)
        if patients is not None
        else {}
    )
    return {
        name: {
            "films": int(np.sum(groups == name)),
            "recall": float(right[groups == name].mean()),
            **({"interval": intervals[name]} if name in intervals else {}),
        }
        for name in names
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
        groups: a group name per film (see `pneumocnn.data.folders.film_group`).
        resamples: bootstrap resamples. Defaults to 1000.
        seed: seeds the resampling. Defaults to 0.

    Returns:
        `{"intervals": {figure: [low, high]}, "confidence": 0.95, "resamples": n,
        "patients": number of patients, "groups": group_recalls(...)}` (each group's recall
        with its interval); the figures are those of `pneumonia_figures`.
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
        "groups": group_recalls(
            labels, probabilities, threshold, groups, patients, resamples=resamples, seed=seed
        ),
    }


def point_estimate(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, patients: Sequence[str]
) -> dict[str, Any]:
    """The record of a threshold shown beside the one chosen (the plain point estimate beside
    the sensitivity bound): the threshold, its `pneumonia_figures` on these films and their 95%
    patient-bootstrap `intervals` (see `bootstrap_intervals`)."""
    labels = np.asarray(labels)
    probabilities = class_probabilities(probabilities)
    return {
        "threshold": float(threshold),
        **pneumonia_figures(labels, probabilities, threshold),
        "intervals": bootstrap_intervals(
            lambda index: pneumonia_figures(labels[index], probabilities[index], threshold),
            patients,
        ),
    }


def uncertainty_of(labels, probabilities, threshold: float, paths: list[str]) -> dict[str, Any]:
    """Patient-bootstrap intervals and the per-group breakdown (see
    `pneumocnn.evaluation.uncertainty.uncertainty`), patients and groups read from the file
    names."""

    positive = pneumonia_labels(labels)
    return uncertainty(
        labels,
        probabilities,
        threshold,
        patients=[patient_id(path) for path in paths],
        groups=[
            film_group(path, bool(is_pneumonia))
            for path, is_pneumonia in zip(paths, positive, strict=True)
        ],
    )
