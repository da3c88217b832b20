"""Reports: figures and text summaries drawn from a metrics report (see
`pneumocnn.evaluation.metrics`).

Where the ROC plot is drawn, the confusion matrix, the reliability diagram, the training curves,
and the printed summary. Takes labels, per-class probabilities and a `compute_metrics` report;
computes nothing of its own beyond what a plot needs, and writes only the PNG files it is asked
for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import CalibrationDisplay

from pneumocnn.core.task import (
    Task,
    class_probabilities,
    pneumonia_labels,
    pneumonia_probability,
)
from pneumocnn.evaluation.metrics import expected_calibration_error


def _square_plot():
    """A square figure with one axes, for the curve plots."""
    figure = Figure(figsize=(4.5, 4.5))
    return figure, figure.subplots()


def _titled(figure: Figure, ax, title: str) -> Figure:
    ax.set_title(title)
    figure.tight_layout()
    return figure


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str) -> Figure:
    """Heatmap of counts, annotated with the row percentage (recall of each true class)."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0) * 100
    annotations = np.array(
        [
            [f"{count}\n{share:.1f}%" for count, share in zip(r, p, strict=True)]
            for r, p in zip(matrix, percent, strict=True)
        ]
    )
    figure = Figure(figsize=(4.8, 4))
    ax = figure.subplots()
    sns.heatmap(
        percent,
        annot=annotations,
        fmt="",
        cmap="Blues",
        vmin=0,
        vmax=100,
        cbar=True,
        xticklabels=class_names,
        yticklabels=class_names,
        ax=ax,
        cbar_kws={"label": "% of true class"},
    )
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    figure.tight_layout()
    return figure


def plot_roc(labels, probabilities, threshold: float, title: str) -> Figure:
    """ROC curve with its AUC and the operating point at the threshold."""
    figure, ax = _square_plot()
    skm.RocCurveDisplay.from_predictions(
        labels, probabilities, ax=ax, name="model", plot_chance_level=True
    )
    predicted = probabilities >= threshold
    sensitivity = predicted[labels == 1].mean()
    false_positive_rate = predicted[labels == 0].mean()
    ax.plot(
        false_positive_rate, sensitivity, "o", color="crimson", label=f"threshold {threshold:.3f}"
    )
    ax.legend(loc="lower right")
    return _titled(figure, ax, title)


def plot_roc_one_vs_rest(labels, probabilities, class_names: list[str], title: str) -> Figure:
    """One-vs-rest ROC curve of each class of a multi-class model, with its AUC."""
    figure, ax = _square_plot()
    for index, name in enumerate(class_names):
        if len(np.unique(labels == index)) == 2:
            skm.RocCurveDisplay.from_predictions(
                labels == index, probabilities[:, index], ax=ax, name=f"{name} vs rest"
            )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.legend(loc="lower right")
    return _titled(figure, ax, title)


def plot_precision_recall(labels, probabilities, title: str) -> Figure:
    """Precision-recall curve with its average precision."""
    figure, ax = _square_plot()
    skm.PrecisionRecallDisplay.from_predictions(
        labels, probabilities, ax=ax, name="model", plot_chance_level=True
    )
    return _titled(figure, ax, title)


def plot_reliability(labels, probabilities, title: str) -> Figure:
    """Reliability diagram (is a 0.9 really 90%?) with the expected calibration error."""
    figure, ax = _square_plot()
    CalibrationDisplay.from_predictions(labels, probabilities, n_bins=10, ax=ax, name="model")
    ece = expected_calibration_error(labels, probabilities)
    return _titled(figure, ax, f"{title}\nexpected calibration error {ece:.3f}")


def plot_history(history: pd.DataFrame) -> Figure:
    """Training curves from `history.csv`: loss, AUC, sensitivity/specificity, learning rate."""
    figure = Figure(figsize=(11, 3.2))
    axes = figure.subplots(1, 4)
    epochs = history["epoch"] + 1
    panels = [("loss", "Loss"), ("auc", "ROC AUC")]
    for ax, (key, title) in zip(axes[:2], panels, strict=True):
        ax.plot(epochs, history[key], label="train")
        ax.plot(epochs, history[f"val_{key}"], label="validation")
        ax.set(title=title, xlabel="epoch")
        ax.legend()
    for key in ("sensitivity", "specificity"):
        axes[2].plot(epochs, history[f"val_{key}"], label=f"val {key}")
    axes[2].set(title="Validation at 0.5", xlabel="epoch")
    axes[2].legend()
    axes[3].plot(epochs, history["learning_rate"])
    axes[3].set(title="Learning rate", xlabel="epoch", yscale="log")
    figure.tight_layout()
    return figure


def write_plots(
    output_dir: Path,
    labels,
    probabilities,
    report: dict[str, Any],
    class_names: list[str],
    history: pd.DataFrame | None,
    title: str,
) -> list[Path]:
    """Writes every plot as PNG into `output_dir` and returns their paths.

    Every model gets the plots of its pneumonia-vs-NORMAL view (confusion matrices at the
    threshold and at 0.5, ROC, precision-recall, reliability). A subtype model's are prefixed
    `pneumonia_`, and it adds its 3x3 confusion matrices (decision rule and argmax) and
    one-vs-rest ROC curves.

    Args:
        output_dir: an existing folder.
        labels: true labels, index into `class_names`.
        probabilities: one probability per class `(n, classes)`.
        report: from `pneumocnn.evaluation.metrics.compute_metrics`.
        class_names: index = label, NORMAL first.
        history: the run's `history.csv`, or `None` for no training curves.
        title: the first line of each plot's title.
    """
    probabilities = class_probabilities(probabilities)
    task = Task.of_classes(class_names)
    subtype = task.subtype
    binary = _binary_figures(
        pneumonia_labels(labels),
        pneumonia_probability(probabilities),
        report["binary"] if subtype else report,
        task.pneumonia_view,
        title,
    )
    if subtype:
        threshold = report["at_threshold"]["threshold"]
        figures = {
            **_confusion_figures(
                report,
                class_names,
                title,
                {
                    "confusion_matrix.png": (
                        "at_threshold",
                        f"P(pneumonia) threshold {threshold:.3f}, then likelier subtype",
                    ),
                    "confusion_matrix_argmax.png": ("argmax", "argmax"),
                },
            ),
            "roc_one_vs_rest.png": plot_roc_one_vs_rest(labels, probabilities, class_names, title),
            **{f"pneumonia_{name}": figure for name, figure in binary.items()},
        }
    else:
        figures = binary
    if history is not None:
        figures["training_curves.png"] = plot_history(history)
    paths = []
    for name, figure in figures.items():
        figure.savefig(output_dir / name, dpi=120)
        paths.append(output_dir / name)
    return paths


def _confusion_figures(
    report: dict[str, Any],
    class_names: list[str],
    title: str,
    matrices: dict[str, tuple[str, str]],
) -> dict[str, Figure]:
    """Confusion-matrix plots by file name, from `{file: (report key, subtitle)}`."""
    return {
        name: plot_confusion_matrix(
            report[key]["confusion_matrix"], class_names, f"{title}\n{subtitle}"
        )
        for name, (key, subtitle) in matrices.items()
    }


def _binary_figures(
    labels, probabilities, report: dict[str, Any], class_names: list[str], title: str
) -> dict[str, Figure]:
    """The plots of a two-class report (see `compute_metrics`), by file name."""
    threshold = report["at_threshold"]["threshold"]
    figures = _confusion_figures(
        report,
        class_names,
        title,
        {
            "confusion_matrix.png": ("at_threshold", f"threshold {threshold:.3f}"),
            "confusion_matrix_0.5.png": ("at_0.5", "threshold 0.5"),
        },
    )
    if report["roc_auc"] is not None:
        figures["roc.png"] = plot_roc(labels, probabilities, threshold, title)
        figures["precision_recall.png"] = plot_precision_recall(labels, probabilities, title)
    figures["reliability.png"] = plot_reliability(labels, probabilities, title)
    return figures


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_subtype_summary(report: dict[str, Any]) -> str:
    """A readable summary of a subtype model: 3x3 matrix, per-class metrics, binary view."""
    at = report["at_threshold"]
    names = list(at["per_class"])
    width = max(len(name) for name in names) + 2
    lines = [
        f"{report['model']} on {report['split']}: {report['images']} images "
        f"{report['images_per_class']}, {report['unreadable_files']} unreadable",
        "  one-vs-rest ROC AUC: "
        + ", ".join(f"{name} {_number(auc)}" for name, auc in report["ovr_auc"].items())
        + f"; macro {_number(report['macro_ovr_auc'])}",
        f"  decision rule (P(pneumonia) >= {at['threshold']:.4f}, then likelier subtype): "
        f"accuracy {at['accuracy']:.4f}, balanced accuracy {at['balanced_accuracy']:.4f}, "
        f"macro F1 {at['macro']['f1-score']:.4f}",
        "  "
        + "true / predicted".ljust(width + 4)
        + "".join(f"{name:>{width}}" for name in names)
        + f"{'recall':>9}{'precision':>11}",
    ]
    for name, row in zip(names, at["confusion_matrix"], strict=True):
        lines.append(
            f"  {name:<{width + 4}}"
            + "".join(f"{count:>{width}}" for count in row)
            + f"{at['per_class'][name]['recall']:>9.4f}"
            + f"{at['per_class'][name]['precision']:>11.4f}"
        )
    binary = report["binary"]
    lines += [
        "  pneumonia vs NORMAL from the same model: "
        f"ROC AUC {_number(binary['roc_auc'])}, accuracy {binary['at_threshold']['accuracy']:.4f}, "
        f"sensitivity {binary['at_threshold']['sensitivity']:.4f}, "
        f"specificity {binary['at_threshold']['specificity']:.4f}",
    ]
    if report.get("bacterial_vs_viral_accuracy") is not None:
        lines.append(
            "  bacterial vs viral among the pneumonia films (the likelier subtype): accuracy "
            f"{report['bacterial_vs_viral_accuracy']:.4f}"
        )
    return "\n".join(lines + format_uncertainty(report))


def format_summary(report: dict[str, Any]) -> str:
    """A readable table of the main metrics at the stored threshold and at 0.5."""
    if report.get("task") == "subtype":
        return format_subtype_summary(report)
    number = _number
    lines = [
        f"{report['model']} on {report['split']}: {report['images']} images "
        f"{report['images_per_class']}, {report['unreadable_files']} unreadable",
        f"  ROC AUC {number(report['roc_auc'])}   average precision "
        f"{number(report['average_precision'])}   ECE {report['ece']:.4f}",
        f"  {'threshold':>12} {'accuracy':>9} {'sensitivity':>12} {'specificity':>12}",
    ]
    for key in ("at_threshold", "at_0.5"):
        at = report[key]
        lines.append(
            f"  {at['threshold']:>12.4f} {at['accuracy']:>9.4f} {at['sensitivity']:>12.4f} "
            f"{at['specificity']:>12.4f}"
        )
    return "\n".join(lines + format_uncertainty(report))


def format_uncertainty(report: dict[str, Any]) -> list[str]:
    """Lines for a report's bootstrap intervals and per-group breakdown, if it has them."""
    spread = report.get("uncertainty")
    if not spread:
        return []
    intervals = spread["intervals"]
    lines = [
        f"  95% intervals ({spread['resamples']} resamples of {spread['patients']} patients), "
        "at the stored threshold:",
        "    "
        + "   ".join(
            f"{key} [{intervals[key][0]:.3f}-{intervals[key][1]:.3f}]"
            for key in ("roc_auc", "accuracy", "sensitivity", "specificity")
        ),
        "  right calls by group:",
    ]
    return lines + group_lines(spread["groups"])


def group_lines(groups: dict[str, dict[str, Any]]) -> list[str]:
    """One line per group: its share of right calls [95% interval] and its films (see
    `pneumocnn.evaluation.uncertainty.group_recalls`)."""
    lines = []
    for name, row in groups.items():
        low, high = row.get("interval") or (float("nan"), float("nan"))
        lines.append(f"    {name:<22} {row['recall']:.3f} [{low:.3f}-{high:.3f}] of {row['films']}")
    return lines


def interval_text(figures: dict[str, Any], key: str, digits: int = 3) -> str:
    """The 95% interval of `figures[key]` (from `figures["intervals"]`) as " [low-high]", or ""
    for a record written before it had one.

    >>> interval_text({"intervals": {"specificity": [0.8, 0.9]}}, "specificity")
    ' [0.800-0.900]'
    """
    interval = (figures.get("intervals") or {}).get(key)
    if not interval:
        return ""
    return f" [{interval[0]:.{digits}f}-{interval[1]:.{digits}f}]"
