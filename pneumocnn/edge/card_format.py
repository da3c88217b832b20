"""How the model card writes figures: numbers, percentages, intervals, tables, predictive values.

Standard library only (the edge install renders cards too). Every figure comes from the
metadata handed in; a missing one is written "-", a missing set of figures `NOT_MEASURED`.
"""

from __future__ import annotations

import math
from typing import Any

NOT_MEASURED = "not measured"
# The pneumonia-vs-NORMAL figures every table gives, in order.
FIGURES = (
    ("roc_auc", "ROC AUC"),
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
)
# Figures of a subtype model that a record may hold besides the pneumonia-vs-NORMAL ones.
SUBTYPE_FIGURES = (
    ("three_class_accuracy", "three-class accuracy"),
    ("normal_recall", "NORMAL recall"),
)
# Shares of pneumonia among the films a site reads, for the predictive values: a screening-like
# mix, a clinic's, and the official test split's (62.5%).
PREVALENCES = (0.1, 0.3, 0.625)


def number(value: Any, digits: int = 3) -> str:
    """A figure as text: integers with thousands separators, floats to `digits` places.

    >>> number(1044), number(0.96271), number(None)
    ('1,044', '0.963', '-')
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def percent(fraction: Any) -> str:
    """A fraction as a percentage with one decimal ("-" when missing).

    >>> percent(0.0105), percent(None)
    ('1.1%', '-')
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or math.isnan(fraction):
        return number(fraction)
    return f"{100 * fraction:.1f}%"


def with_interval(figures: dict[str, Any], key: str) -> str:
    """`figures[key]` with its 95% interval from `figures["intervals"]`, when there is one."""
    value = number(figures.get(key))
    interval = (figures.get("intervals") or {}).get(key)
    if interval and len(interval) == 2 and None not in interval:
        return f"{value} ({number(interval[0])}-{number(interval[1])})"
    return value


def by_model(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"int8": figures, "float": figures}` from an entry shaped either way (one set of
    figures, or one per model file)."""
    if "roc_auc" in entry:
        return {"int8": entry}
    return {key: value for key, value in entry.items() if isinstance(value, dict)}


def figures_table(entry: dict[str, Any] | None, what: str) -> list[str]:
    """One row per model file: films, the four figures (with intervals) and the threshold."""
    if not entry:
        return [f"{what}: {NOT_MEASURED}.", ""]
    models = by_model(entry)
    lines = [
        "| model | films | " + " | ".join(title for _, title in FIGURES) + " | threshold |",
        "|---|---|" + "---|" * len(FIGURES) + "---|",
    ]
    for model, figures in models.items():
        cells = [with_interval(figures, key) for key, _ in FIGURES]
        lines.append(
            f"| {model} | {number(figures.get('images', figures.get('films')))} | "
            + " | ".join(cells)
            + f" | {number(figures.get('threshold'), 4)} |"
        )
    if any(figures.get("intervals") for figures in models.values()):
        lines += ["", "In brackets: 95% bootstrap intervals, resampling patients."]
    groups = next((figures["groups"] for figures in models.values() if figures.get("groups")), None)
    return lines + [""] + groups_table(groups)


def groups_table(groups: dict[str, Any] | None) -> list[str]:
    """The share of each group's films called right (NORMAL `IM-` / `NORMAL2-`, bacterial,
    viral)."""
    if not groups:
        return [f"Per-group breakdown: {NOT_MEASURED}.", ""]
    ranged = any(row.get("interval") for row in groups.values())
    lines = [
        "By group (share of the group's films called right, pneumonia vs NORMAL):",
        "",
        f"| group | films | called right{' (95% interval)' if ranged else ''} |",
        "|---|---|---|",
    ]
    for name, row in groups.items():
        count = row.get("films", row.get("count"))
        interval = {"recall": row.get("interval")}
        called_right = with_interval({**row, "intervals": interval}, "recall")
        lines.append(f"| {name} | {number(count)} | {called_right} |")
    return lines + [""]


def record_table(record: dict[str, Any]) -> list[str]:
    """A record's achieved figures, one a row, with their intervals."""
    achieved = {**(record.get("achieved") or {}), "intervals": record.get("intervals")}
    return [
        "| figure | value (95% interval) |",
        "|---|---|",
        *(
            f"| {title} | {with_interval(achieved, key)} |"
            for key, title in (*FIGURES, *SUBTYPE_FIGURES)
            if key in achieved
        ),
        "",
    ]


def predictive_values(
    sensitivity: float,
    specificity: float,
    intervals: dict[str, list[float]] | None = None,
) -> list[str]:
    """PPV and NPV at `PREVALENCES` (Bayes' rule on the stated sensitivity and specificity).

    With `intervals` of both, each value gets a range: Bayes' rule at the intervals' ends (PPV
    and NPV rise with each of the two, so the range holds both intervals' worst and best
    cases; it is wider than an interval of its own would be).

    >>> predictive_values(0.9, 0.8)[2]
    '| 10.0% | 0.333 | 0.986 |'
    >>> predictive_values(0.9, 0.8, {"sensitivity": [0.8, 0.95], "specificity": [0.7, 0.9]})[2]
    '| 10.0% | 0.333 (0.229-0.514) | 0.986 (0.969-0.994) |'
    """

    def bayes(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
        true_positive = sensitivity * prevalence
        false_positive = (1 - specificity) * (1 - prevalence)
        true_negative = specificity * (1 - prevalence)
        false_negative = (1 - sensitivity) * prevalence
        return (
            true_positive / (true_positive + false_positive),
            true_negative / (true_negative + false_negative),
        )

    intervals = intervals or {}
    ends = (intervals.get("sensitivity"), intervals.get("specificity"))
    ranged = all(end and len(end) == 2 and None not in end for end in ends)
    lines = ["| pneumonia prevalence | PPV | NPV |", "|---|---|---|"]
    for prevalence in PREVALENCES:
        ppv, npv = bayes(sensitivity, specificity, prevalence)
        cells = [number(ppv), number(npv)]
        if ranged:
            low = bayes(ends[0][0], ends[1][0], prevalence)
            high = bayes(ends[0][1], ends[1][1], prevalence)
            cells = [
                f"{cell} ({number(lo)}-{number(hi)})"
                for cell, lo, hi in zip(cells, low, high, strict=True)
            ]
        lines.append(f"| {percent(prevalence)} | {cells[0]} | {cells[1]} |")
    return lines + [""]
