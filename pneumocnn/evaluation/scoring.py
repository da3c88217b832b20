"""Scoring a model on a split (`evaluate`), and the validation threshold of a run folder.

The steps of `evaluate`: find the model (`pneumocnn.core.run_folder.resolve_source`), load the
split, run the model (`pneumocnn.runtime.runners`), choose or read the threshold
(`ensure_threshold`), compute the metrics (`pneumocnn.evaluation.metrics`), and write
`metrics.json` and the plots (`pneumocnn.evaluation.reports`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pneumocnn.core.errors import DataError
from pneumocnn.core.metadata import write_json_atomically
from pneumocnn.core.run_folder import (
    EVAL_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    SPLITS,
    THRESHOLD_FILE,
    resolve_source,
    threshold_record,
)
from pneumocnn.data.split import load_evaluation_images
from pneumocnn.evaluation import reports
from pneumocnn.evaluation.metrics import compute_metrics
from pneumocnn.evaluation.thresholds import choose_pneumonia_threshold
from pneumocnn.evaluation.uncertainty import uncertainty_of
from pneumocnn.runtime.runners import predict_probabilities

if TYPE_CHECKING:
    from pneumocnn.core.run_folder import Source

logger = logging.getLogger(__name__)


def ensure_threshold(
    source: Source,
    target_sensitivity: float | None,
    val_predictions: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Returns the stored threshold, choosing (and storing) it on validation when needed (see
    `choose_threshold`; a new one is written to the run's `threshold.json` at once).

    Raises:
        ValueError: if a new threshold is asked of an exported model.
    """
    threshold, record = choose_threshold(source, target_sensitivity, val_predictions)
    if record is not None:
        write_json_atomically(source.run_dir / THRESHOLD_FILE, record)
        source.threshold = threshold
    return threshold


def choose_threshold(
    source: Source,
    target_sensitivity: float | None,
    val_predictions: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, dict[str, Any] | None]:
    """The stored threshold, or one chosen on validation when needed, without writing anything.

    A run folder without `threshold.json`, or any `target_sensitivity`, triggers a choice on
    the run's own validation split (see
    `pneumocnn.evaluation.thresholds.choose_pneumonia_threshold`). An exported model keeps the
    threshold in its metadata. The caller stores a new choice when its own work succeeds (the
    export, only once its family is in place; `ensure_threshold`, at once).

    Args:
        source: the model.
        target_sensitivity: see `pneumocnn.evaluation.thresholds.choose_threshold`.
        val_predictions: `(labels, per-class probabilities)` on the validation split, if
            already computed. Defaults to `None`: computed here when a choice is needed.

    Returns:
        `(threshold, record)`: the record for `threshold.json` when the threshold was chosen
        now (see `pneumocnn.core.run_folder.threshold_record`), else `None`.

    Raises:
        ValueError: if a new threshold is asked of an exported model.
    """

    if source.threshold is not None and target_sensitivity is None:
        return source.threshold, None
    if source.run_dir is None:
        raise ValueError(
            "An exported model's threshold is fixed in its metadata; choose a new one on a run "
            f"folder and re-export. Received: model='{source.model_path}', "
            f"target_sensitivity={target_sensitivity}."
        )
    if val_predictions is None:
        images, labels, *_ = load_evaluation_images(source, "val", None)
        val_predictions = labels, predict_probabilities(source.model_path, images)
    labels, probabilities = val_predictions
    # For a subtype model, the threshold is on P(pneumonia) = 1 - P(NORMAL).
    threshold = choose_pneumonia_threshold(labels, probabilities, target_sensitivity)
    rule = "youden" if target_sensitivity is None else f"target_sensitivity={target_sensitivity}"
    record = threshold_record(threshold, rule, "val", len(labels), model=source.model_path.name)
    logger.info("Threshold %.4f chosen on validation (%s)", threshold, rule)
    return threshold, record


def evaluate(
    model: str | Path,
    split: str = "val",
    data_dir: str | None = None,
    target_sensitivity: float | None = None,
    output_dir: str | Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Scores a model on a split and writes `metrics.json` and plots.

    The steps: find the model (`pneumocnn.core.run_folder.resolve_source`), load the split, run the
    model (`pneumocnn.runtime.runners`), choose or read the threshold, compute the metrics
    (`pneumocnn.evaluation.metrics`), write the report and its plots
    (`pneumocnn.evaluation.reports`).

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

    Raises:
        ValueError: if `split` is unknown, or a new threshold is asked of an exported model.
        DataError: if the split has no readable image, or the data folder does not fit.
    """

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    source = resolve_source(model)
    images, labels, skipped, root, paths = load_evaluation_images(source, split, data_dir)
    if len(labels) == 0:
        raise DataError(
            f"No readable images in the {split} split of '{root}'. Received: split='{split}', "
            f"data_dir='{data_dir}'. Point --data-dir at a folder with readable images."
        )
    probabilities = predict_probabilities(source.model_path, images)
    # Validation predictions double as the threshold's input; any other split never does.
    threshold, record = choose_threshold(
        source, target_sensitivity, (labels, probabilities) if split == "val" else None
    )
    report = compute_metrics(labels, probabilities, threshold, source.class_names)
    report["uncertainty"] = uncertainty_of(labels, probabilities, threshold, paths)
    report.update(
        model=str(source.model_path),
        split=split,
        data_dir=str(root),
        unreadable_files=len(skipped),
        unreadable=[p for p, _ in skipped],
    )
    if output_dir is None:
        base = source.run_dir / EVAL_DIR if source.run_dir else Path("runs") / EVAL_DIR
        output_dir = base / f"{source.model_path.stem}-{split}"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output_dir / METRICS_FILE, report)
    history_csv = source.run_dir / HISTORY_FILE if source.run_dir else None
    history = pd.read_csv(history_csv) if history_csv and history_csv.is_file() else None
    title = f"{source.model_path.name} on {split} ({len(labels)} images)"
    reports.write_plots(
        output_dir, labels, probabilities, report, source.class_names, history, title
    )
    if record is not None:  # stored once the report it belongs to is written
        write_json_atomically(source.run_dir / THRESHOLD_FILE, record)
        source.threshold = threshold
    return report, output_dir
