"""Evaluation: `python -m pneumocnn.evaluate [RUN_DIR | MODEL] --split val|test|all`.

Scores a run's `best.keras`, a `.keras` file, or an exported `.tflite` on the run's own
patient-grouped validation split, on a Kaggle `test/` folder, or on every image of a folder.
Writes `metrics.json` and PNG plots, and prints a summary. A subtype model (NORMAL / BACTERIAL /
VIRAL) gets its 3x3 confusion matrix, per-class and macro metrics, one-vs-rest AUCs, and the
pneumonia-vs-NORMAL metrics of the same model, comparable with a binary model's.

The decision threshold is chosen on the validation split only (Youden's J by default, or the
best specificity that reaches `--target-sensitivity`) and stored in the run folder as
`threshold.json`; the export copies it into the model's metadata. Reports give results at the
stored threshold and at 0.5.

Example:

    python -m pneumocnn.evaluate runs/20261122-003321 --split val
    python -m pneumocnn.evaluate saved_models/pneumocnn_int8.tflite --data-dir chest_xray \\
        --split test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import CalibrationDisplay

from pneumocnn import data
from pneumocnn.config import Config
from pneumocnn.images import load_images
from pneumocnn.lite import LiteModel, pneumonia_probability
from pneumocnn.metadata import decide, find_metadata, load_metadata, write_json_atomically

logger = logging.getLogger(__name__)

THRESHOLD_FILE = "threshold.json"
METRICS_FILE = "metrics.json"
SPLITS = ("val", "test", "all")


# --------------------------------------------------------------------------------------------
# Thresholds and metrics.


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
    """Threshold-dependent metrics: accuracy, sensitivity, specificity, per-class report, matrix."""
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


def pneumonia_view(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pneumonia-vs-NORMAL labels and P(pneumonia) from either task's labels and outputs.

    Binary: unchanged. Subtype (outputs `(n, 3)`): label 1 for BACTERIAL or VIRAL, and
    P(pneumonia) = 1 - P(NORMAL).
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 1:
        return np.asarray(labels), probabilities
    return (np.asarray(labels) > 0).astype(int), pneumonia_probability(probabilities)


def subtype_metrics_at(
    labels: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Three-class metrics of given predictions: accuracy, balanced accuracy, per-class and
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


def compute_subtype_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, class_names: list[str]
) -> dict[str, Any]:
    """Metrics of a three-class (NORMAL / BACTERIAL / VIRAL) model.

    Returns:
        A dict with `task` "subtype", `images`, `images_per_class`, `ovr_auc` (one-vs-rest ROC
        AUC per class), `macro_ovr_auc`, `at_threshold` (the shipped decision rule, see
        `pneumocnn.metadata.decide`) and `argmax` (see `subtype_metrics_at`), and `binary`:
        the pneumonia-vs-NORMAL metrics of the same model (see `compute_metrics`), directly
        comparable with a binary model's.
    """
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
    binary_labels, pneumonia = pneumonia_view(labels, probabilities)
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
        "binary": compute_metrics(
            binary_labels, pneumonia, threshold, [class_names[0], "PNEUMONIA"]
        ),
    }


def compute_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, class_names: list[str]
) -> dict[str, Any]:
    """All reported metrics, at the stored threshold and at 0.5.

    Outputs of shape `(n, 3)` (a subtype model) go to `compute_subtype_metrics`.

    Returns:
        A dict with `roc_auc`, `average_precision`, `ece`, `images`, and `at_threshold` and
        `at_0.5` (see `metrics_at`).
    """
    if np.asarray(probabilities).ndim == 2:
        return compute_subtype_metrics(labels, probabilities, threshold, class_names)
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


# --------------------------------------------------------------------------------------------
# Plots.


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
    figure = Figure(figsize=(4.5, 4.5))
    ax = figure.subplots()
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
    ax.set_title(title)
    figure.tight_layout()
    return figure


def plot_roc_one_vs_rest(labels, probabilities, class_names: list[str], title: str) -> Figure:
    """One-vs-rest ROC curve of each class of a multi-class model, with its AUC."""
    figure = Figure(figsize=(4.5, 4.5))
    ax = figure.subplots()
    for index, name in enumerate(class_names):
        if len(np.unique(labels == index)) == 2:
            skm.RocCurveDisplay.from_predictions(
                labels == index, probabilities[:, index], ax=ax, name=f"{name} vs rest"
            )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.legend(loc="lower right")
    ax.set_title(title)
    figure.tight_layout()
    return figure


def plot_precision_recall(labels, probabilities, title: str) -> Figure:
    """Precision-recall curve with its average precision."""
    figure = Figure(figsize=(4.5, 4.5))
    ax = figure.subplots()
    skm.PrecisionRecallDisplay.from_predictions(
        labels, probabilities, ax=ax, name="model", plot_chance_level=True
    )
    ax.set_title(title)
    figure.tight_layout()
    return figure


def plot_reliability(labels, probabilities, title: str) -> Figure:
    """Reliability diagram (is a 0.9 really 90%?) with the expected calibration error."""
    figure = Figure(figsize=(4.5, 4.5))
    ax = figure.subplots()
    CalibrationDisplay.from_predictions(labels, probabilities, n_bins=10, ax=ax, name="model")
    ece = expected_calibration_error(labels, probabilities)
    ax.set_title(f"{title}\nexpected calibration error {ece:.3f}")
    figure.tight_layout()
    return figure


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

    A subtype model gets its 3x3 confusion matrices (decision rule and argmax) and one-vs-rest
    ROC curves, plus a binary model's plots of its pneumonia-vs-NORMAL view, prefixed
    `pneumonia_`.
    """
    threshold = report["at_threshold"]["threshold"]
    if report.get("task") == "subtype":
        binary_labels, pneumonia = pneumonia_view(labels, probabilities)
        binary = _binary_figures(
            binary_labels, pneumonia, report["binary"], [class_names[0], "PNEUMONIA"], title
        )
        figures = {
            "confusion_matrix.png": plot_confusion_matrix(
                report["at_threshold"]["confusion_matrix"],
                class_names,
                f"{title}\nP(pneumonia) threshold {threshold:.3f}, then likelier subtype",
            ),
            "confusion_matrix_argmax.png": plot_confusion_matrix(
                report["argmax"]["confusion_matrix"], class_names, f"{title}\nargmax"
            ),
            "roc_one_vs_rest.png": plot_roc_one_vs_rest(labels, probabilities, class_names, title),
            **{f"pneumonia_{name}": figure for name, figure in binary.items()},
        }
    else:
        figures = _binary_figures(labels, probabilities, report, class_names, title)
    if history is not None:
        figures["training_curves.png"] = plot_history(history)
    paths = []
    for name, figure in figures.items():
        figure.savefig(output_dir / name, dpi=120)
        paths.append(output_dir / name)
    return paths


def _binary_figures(
    labels, probabilities, report: dict[str, Any], class_names: list[str], title: str
) -> dict[str, Figure]:
    """The plots of a two-class report (see `compute_metrics`), by file name."""
    threshold = report["at_threshold"]["threshold"]
    figures = {
        "confusion_matrix.png": plot_confusion_matrix(
            report["at_threshold"]["confusion_matrix"],
            class_names,
            f"{title}\nthreshold {threshold:.3f}",
        ),
        "confusion_matrix_0.5.png": plot_confusion_matrix(
            report["at_0.5"]["confusion_matrix"], class_names, f"{title}\nthreshold 0.5"
        ),
    }
    if report["roc_auc"] is not None:
        figures["roc.png"] = plot_roc(labels, probabilities, threshold, title)
        figures["precision_recall.png"] = plot_precision_recall(labels, probabilities, title)
    figures["reliability.png"] = plot_reliability(labels, probabilities, title)
    return figures


# --------------------------------------------------------------------------------------------
# Models and data.


@dataclasses.dataclass
class Source:
    """A model to evaluate, with what it needs to be run and reported.

    Args:
        model_path: `.keras` or `.tflite` file.
        config: the run's config (image size, data folder, split settings).
        class_names: class names, index = label.
        threshold: the stored threshold, or `None` if none was chosen yet.
        run_dir: the run folder, when the model comes from one (holds split.csv, history.csv
            and threshold.json); else `None`.
    """

    model_path: Path
    config: Config
    class_names: list[str]
    threshold: float | None
    run_dir: Path | None


def resolve_source(path: str | Path) -> Source:
    """Finds the model, config and threshold for a run folder, a `.keras` or a `.tflite`.

    Raises:
        FileNotFoundError: if the path does not exist, or a run folder has no `best.keras`.
        MetadataError: if an exported model's metadata is missing or does not match.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Model not found. Received: model='{path}'. Pass a run folder (runs/<timestamp>), "
            "a .keras file, or an exported .tflite with its pneumocnn.json beside it."
        )
    run_dir = path if path.is_dir() else path.parent
    if (run_dir / "config.json").is_file():
        model_path = run_dir / "best.keras" if path.is_dir() else path
        if not model_path.is_file():
            raise FileNotFoundError(
                f"Run folder '{run_dir}' has no best.keras: the run did not finish. "
                f"Received: model='{path}'. Train again or pick a finished run."
            )
        summary_path = run_dir / "summary.json"
        class_names = (
            json.loads(summary_path.read_text())["class_names"]
            if summary_path.is_file()
            else ["NORMAL", "PNEUMONIA"]
        )
        threshold_path = run_dir / THRESHOLD_FILE
        threshold = (
            json.loads(threshold_path.read_text())["threshold"]
            if threshold_path.is_file()
            else None
        )
        return Source(
            model_path, Config.load(run_dir / "config.json"), class_names, threshold, run_dir
        )
    metadata = load_metadata(find_metadata(path), path)
    return Source(
        path,
        Config.from_dict(metadata["config"]),
        metadata["class_names"],
        metadata["threshold"],
        None,
    )


def predict_probabilities(model_path: Path, images: np.ndarray) -> np.ndarray:
    """The model's probabilities for raw-pixel images with a `.keras` or `.tflite` model:
    `(n,)` P(positive) for a binary model, `(n, classes)` for a subtype model."""
    if model_path.suffix == ".tflite":
        return LiteModel(model_path).predict_proba(images)
    from pneumocnn.model import load_model

    return keras_probabilities(load_model(model_path), images)


def keras_probabilities(model, images: np.ndarray) -> np.ndarray:
    """A Keras model's outputs for raw-pixel images, shaped as `predict_probabilities`'s."""
    outputs = model.predict(np.asarray(images, np.float32), batch_size=64, verbose=0)
    outputs = outputs.reshape(len(images), -1)
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def load_evaluation_images(
    source: Source, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]], Path]:
    """Loads the images of `split` for `source`.

    Returns:
        `(images, labels, skipped, root)`.

    Raises:
        DataError: if the folder has no such split, or its classes differ from the model's.
    """
    dataset = data.find_dataset(data.resolve_data_dir(data_dir or source.config.data_dir))
    task = source.config.task
    if list(data.task_class_names(task, dataset.class_names)) != list(source.class_names):
        raise data.DataError(
            f"The data folder's classes {list(dataset.class_names)} (task {task}) differ from "
            f"the model's {source.class_names}. Received: data_dir='{dataset.root}'."
        )
    if split == "val":
        split_csv = source.run_dir / "split.csv" if source.run_dir else None
        table = (
            pd.read_csv(split_csv)
            if split_csv and split_csv.is_file()
            else data.prepare_split(source.config, dataset)
        )
        loaded = data.load_split(table, "val", source.config.image_size, dataset.root)
        return loaded.images, loaded.labels, loaded.skipped, dataset.root
    if split == "test":
        if dataset.test is None:
            raise data.DataError(
                f"Data folder '{dataset.root}' has no test/ folder. Received: split='test'. "
                "Point --data-dir at a Kaggle-style folder holding test/, or use --split all "
                "with --data-dir at a folder of class subfolders."
            )
        folders = (dataset.test,)
    else:
        folders = dataset.development
    table = data.label_for_task(
        data.list_images(folders, dataset.class_names), dataset.class_names, task
    )
    images, kept, skipped = load_images(table["path"].tolist(), source.config.image_size)
    labels = table["label"].to_numpy()[kept].astype(np.int32)
    return images, labels, skipped, dataset.root


def ensure_threshold(
    source: Source,
    target_sensitivity: float | None,
    val_predictions: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Returns the stored threshold, choosing (and storing) it on validation when needed.

    A run folder without `threshold.json`, or any `--target-sensitivity`, triggers a choice on
    the run's own validation split. An exported model keeps the threshold in its metadata.

    Args:
        source: the model.
        target_sensitivity: see `choose_threshold`.
        val_predictions: `(labels, probabilities)` on the validation split, if already
            computed. Defaults to `None`: computed here when a choice is needed.
    """
    if source.threshold is not None and target_sensitivity is None:
        return source.threshold
    if source.run_dir is None:
        raise ValueError(
            "An exported model's threshold is fixed in its metadata; choose a new one on a run "
            f"folder and re-export. Received: model='{source.model_path}', "
            f"target_sensitivity={target_sensitivity}."
        )
    if val_predictions is None:
        images, labels, _, _ = load_evaluation_images(source, "val", None)
        val_predictions = labels, predict_probabilities(source.model_path, images)
    # For a subtype model, the threshold is on P(pneumonia) = 1 - P(NORMAL).
    labels, probabilities = pneumonia_view(*val_predictions)
    threshold = choose_threshold(labels, probabilities, target_sensitivity)
    rule = "youden" if target_sensitivity is None else f"target_sensitivity={target_sensitivity}"
    write_json_atomically(
        source.run_dir / THRESHOLD_FILE,
        {
            "threshold": threshold,
            "rule": rule,
            "chosen_on": "val",
            "images": int(len(labels)),
            "model": source.model_path.name,
        },
    )
    logger.info("Threshold %.4f chosen on validation (%s)", threshold, rule)
    source.threshold = threshold
    return threshold


def evaluate(
    model: str | Path,
    split: str = "val",
    data_dir: str | None = None,
    target_sensitivity: float | None = None,
    output_dir: str | Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Scores a model on a split and writes `metrics.json` and plots.

    Args:
        model: a run folder, a `.keras` file, or an exported `.tflite`.
        split: "val" (the run's patient-grouped validation split), "test" (a Kaggle `test/`
            folder) or "all" (every development image of the folder). Defaults to "val".
        data_dir: the data folder. Defaults to `None`, the one the model was trained on.
        target_sensitivity: choose the threshold for this sensitivity on validation (run
            folders only). Defaults to `None`: Youden's J, or the stored threshold.
        output_dir: where to write. Defaults to `None`: `<run>/eval/<model>-<split>` or
            `runs/eval/<model>-<split>`.

    Returns:
        `(metrics, output_dir)`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    source = resolve_source(model)
    images, labels, skipped, root = load_evaluation_images(source, split, data_dir)
    if len(labels) == 0:
        raise data.DataError(f"No readable images in the {split} split of '{root}'.")
    probabilities = predict_probabilities(source.model_path, images)
    # Validation predictions double as the threshold's input; any other split never does.
    threshold = ensure_threshold(
        source, target_sensitivity, (labels, probabilities) if split == "val" else None
    )
    report = compute_metrics(labels, probabilities, threshold, source.class_names)
    report.update(
        model=str(source.model_path),
        split=split,
        data_dir=str(root),
        unreadable_files=len(skipped),
        unreadable=[p for p, _ in skipped],
    )
    if output_dir is None:
        base = source.run_dir / "eval" if source.run_dir else Path("runs") / "eval"
        output_dir = base / f"{source.model_path.stem}-{split}"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output_dir / METRICS_FILE, report)
    history_csv = source.run_dir / "history.csv" if source.run_dir else None
    history = pd.read_csv(history_csv) if history_csv and history_csv.is_file() else None
    title = f"{source.model_path.name} on {split} ({len(labels)} images)"
    write_plots(output_dir, labels, probabilities, report, source.class_names, history, title)
    return report, output_dir


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
    return "\n".join(lines)


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
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.evaluate",
        description="Score a run folder, .keras or .tflite model; write metrics.json and plots.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default="saved_models/pneumocnn_int8.tflite",
        help="Run folder, .keras or .tflite (default: saved_models/pneumocnn_int8.tflite).",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="val",
        help="val: the run's validation split; test: a Kaggle test/ folder; "
        "all: every development image of --data-dir (default: val).",
    )
    parser.add_argument("--data-dir", help="Data folder (default: the one the model trained on).")
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        help="Choose the threshold reaching this sensitivity on validation "
        "(default: maximise Youden's J).",
    )
    parser.add_argument("--output-dir", help="Where to write metrics.json and the plots.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report, output_dir = evaluate(
            args.model, args.split, args.data_dir, args.target_sensitivity, args.output_dir
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(report))
    print(f"Wrote {output_dir / METRICS_FILE} and plots to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
