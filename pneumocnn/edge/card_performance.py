"""The model card's Performance section: every set of figures the metadata holds, each saying
which films and what was chosen on them, then predictive values (see `pneumocnn.edge.card`).

Figures are read from the metadata only: what it lacks is said to be `NOT_MEASURED`, never
filled in from another model.
"""

from __future__ import annotations

from typing import Any

from pneumocnn.core.task import Task
from pneumocnn.edge.card_format import (
    NOT_MEASURED,
    by_model,
    figures_table,
    groups_table,
    number,
    predictive_values,
    record_table,
    with_interval,
)

XIN_2021 = (
    "Performance on films from other hospitals is unknown: this model has never been "
    "scored on them. Expect it to be much worse. A ResNet-50 trained on this same data set fell "
    "from ROC AUC 0.95 on its test split to 0.54, close to chance, on 383 films of children "
    'aged one to five from the NIH ChestX-ray14 data set (Xin, Li and Yi, "Limited '
    "generalizability of deep learning algorithm for pediatric pneumonia classification on "
    'external data", Emergency Radiology, 2021; doi:10.1007/s10140-021-01954-x). Adapt it to '
    "your films first (`python -m pneumocnn.adapt`, below)."
)


def performance(metadata: dict[str, Any], task: Task) -> list[str]:
    """Every set of figures the metadata holds, each saying which films and what chose on
    them; predictive values and calibration error."""
    subtype = task.subtype
    validation = by_model(metadata.get("validation_metrics") or {})
    lines = [
        "## Performance",
        "",
        "Pneumonia vs NORMAL"
        + (" (the subtype model's pneumonia call)" if subtype else "")
        + ". Each table says its threshold.",
        "",
        "### Validation (the training batch, other patients)",
        "",
        *figures_table(metadata.get("validation_metrics"), "Validation"),
        "Validation comes from the same batch of films as training, so it flatters the model."
        + _calibration_error(validation)
        + _moved_threshold(metadata, validation),
        "",
        "### Development half of the test split (another batch of the same centre)",
        "",
        *_development_half(metadata),
        "### Withheld half of the test split (new patients; nothing chosen on it)",
        "",
        *_withheld(metadata),
        *_adaptation_estimate(metadata),
        "### Films from other hospitals",
        "",
        XIN_2021,
        "",
    ]
    return lines + _predictive(metadata)


def _moved_threshold(metadata: dict[str, Any], validation: dict[str, dict[str, Any]]) -> str:
    figures = validation.get("int8") or next(iter(validation.values()), {})
    at, stored = figures.get("threshold"), metadata.get("threshold")
    if at is None or stored is None or abs(at - stored) < 1e-9:
        return ""
    return (
        f" These figures are at {number(at, 4)}, the threshold chosen on validation at export; "
        f"the model now calls at {number(stored, 4)} (see Operating point)."
    )


def _calibration_error(validation: dict[str, dict[str, Any]]) -> str:
    figures = validation.get("int8") or next(iter(validation.values()), {})
    if figures.get("ece") is None:
        return f" Calibration error: {NOT_MEASURED}."
    return (
        f" Expected calibration error of P(pneumonia) there: {number(figures['ece'])} (10 bins; "
        "read the probability as a ranking score, not a frequency)."
    )


def _development_half(metadata: dict[str, Any]) -> list[str]:
    """The development half's figures, or where they are: a threshold calibrated on a folder
    reports that folder's figures, intervals and groups under the operating point."""
    calibration = metadata.get("calibration")
    if metadata.get("development_half") or not calibration:
        return figures_table(metadata.get("development_half"), "Development half")
    return [
        f"No separate report: the threshold was calibrated on `{calibration['folder']}` "
        f"({calibration['films']} films), and the figures there, with their intervals and the "
        "per-group breakdown, are under Operating point below (optimistic for that folder).",
        "",
    ]


def _withheld(metadata: dict[str, Any]) -> list[str]:
    record = metadata.get("withheld_half")
    if not record:
        return [f"Withheld half: {NOT_MEASURED} for this model.", ""]
    return [
        f"{record.get('source', '')} ({number(record.get('films'))} films, threshold "
        f"{number(record.get('threshold'), 4)}):",
        "",
        *record_table(record),
        *([record["note"], ""] if record.get("note") else []),
        *(groups_table(record["groups"]) if record.get("groups") else []),
    ]


def _adaptation_estimate(metadata: dict[str, Any]) -> list[str]:
    """What adapting this model to a batch of films gave, cross-validated (the generic model's
    `adaptation_estimate`, from the adaptation study); nothing for a model without one."""
    record = metadata.get("adaptation_estimate")
    if not record:
        return []
    return [
        "### Adapted to the development half (cross-validated: what `pneumocnn.adapt` gives)",
        "",
        f"{record.get('source', '')} ({number(record.get('films'))} films; "
        f"{record.get('selection', '')}):",
        "",
        *record_table(record),
        *([record["note"], ""] if record.get("note") else []),
    ]


def _predictive(metadata: dict[str, Any]) -> list[str]:
    """PPV and NPV from the least flattering figures the metadata holds, with ranges from their
    intervals' ends where it holds them."""
    candidates = (
        ("withheld half", metadata.get("withheld_half") or {}),
        ("site films, out of fold", metadata.get("calibration") or {}),
    )
    where, record = next(
        (
            (w, r)
            for w, r in candidates
            if {"sensitivity", "specificity"} <= set(r.get("achieved") or {})
        ),
        (None, None),
    )
    if not record:
        return ["### Predictive values", "", f"Predictive values: {NOT_MEASURED}.", ""]
    if where.startswith("site") and metadata["calibration"].get("model") != "out-of-fold":
        where = f"`{metadata['calibration'].get('folder')}`, where the threshold was chosen"
    figures = {**record["achieved"], "intervals": record.get("intervals")}
    intervals = record.get("intervals") or {}
    ranged = intervals.get("sensitivity") and intervals.get("specificity")
    return [
        "### Predictive values",
        "",
        f"From sensitivity {with_interval(figures, 'sensitivity')} and specificity "
        f"{with_interval(figures, 'specificity')} ({where}), by Bayes' rule, at three shares of "
        "pneumonia among the films read: PPV is the chance a pneumonia call is right, NPV that "
        "a NORMAL call is"
        + (
            "; in parentheses, Bayes' rule at the ends of the two intervals (the worst and best "
            "case of both together)."
            if ranged
            else "."
        ),
        "",
        *predictive_values(
            record["achieved"]["sensitivity"], record["achieved"]["specificity"], intervals
        ),
    ]
