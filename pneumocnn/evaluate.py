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
import sys
from pathlib import Path
from typing import Any

from pneumocnn import cli
from pneumocnn.runners import default_model
from pneumocnn.runs import EVAL_DIR, HISTORY_FILE, METRICS_FILE, SPLITS


def evaluate(
    model: str | Path,
    split: str = "val",
    data_dir: str | None = None,
    target_sensitivity: float | None = None,
    output_dir: str | Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Scores a model on a split and writes `metrics.json` and plots.

    The steps: find the model (`pneumocnn.runs.resolve_source`), load the split, run the model
    (`pneumocnn.runners`), choose or read the threshold, compute the metrics
    (`pneumocnn.metrics`), write the report and its plots (`pneumocnn.reports`).

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
    import pandas as pd

    from pneumocnn import data, reports, runs
    from pneumocnn.metadata import write_json_atomically
    from pneumocnn.metrics import compute_metrics
    from pneumocnn.runners import predict_probabilities

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    source = runs.resolve_source(model)
    images, labels, skipped, root = runs.load_evaluation_images(source, split, data_dir)
    if len(labels) == 0:
        raise data.DataError(
            f"No readable images in the {split} split of '{root}'. Received: split='{split}', "
            f"data_dir='{data_dir}'. Point --data-dir at a folder with readable images."
        )
    probabilities = predict_probabilities(source.model_path, images)
    # Validation predictions double as the threshold's input; any other split never does.
    threshold = runs.ensure_threshold(
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
    return report, output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.evaluate",
        description="Score a run folder, .keras or .tflite model; write metrics.json and plots.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=str(default_model()),
        help="Run folder, .keras or .tflite (default: the shipped int8 model, "
        "saved_models/pneumocnn_int8.tflite, or the one in $PNEUMOCNN_MODEL_DIR).",
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


def _command(args: argparse.Namespace) -> int:
    from pneumocnn.reports import format_summary

    report, output_dir = evaluate(
        args.model, args.split, args.data_dir, args.target_sensitivity, args.output_dir
    )
    print(format_summary(report))
    print(f"Wrote {output_dir / METRICS_FILE} and plots to {output_dir}")
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
