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
    python -m pneumocnn.evaluate saved_models/pneumocnn_int8.tflite \\
        --data-dir ../shared/chest_xray --split test
    python -m pneumocnn.evaluate runs/shipped --calibrate-on ../shared/chest_xray/test \\
        --target-sensitivity 0.96

Every report carries 95% bootstrap intervals (patients resampled, not films) of the
pneumonia-vs-NORMAL figures and a per-group breakdown (NORMAL `IM-` / `NORMAL2-`, bacterial,
viral). `--calibrate-on DIR` is the site calibration step (see
`pneumocnn.adaptation.calibration`).
"""

from __future__ import annotations

import argparse
import sys

from pneumocnn import cli
from pneumocnn.core.errors import EXIT_OK, UsageError
from pneumocnn.core.locations import default_model
from pneumocnn.core.run_folder import METRICS_FILE, SPLITS

# The evaluation stage (pandas, scikit-learn, and TensorFlow for .keras models) is imported in
# `_command`, so `--help` and flag errors come at once.


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
    parser.add_argument(
        "--confidence",
        type=float,
        help="With --calibrate-on: choose the threshold whose sensitivity on new films of the "
        "site reaches --target-sensitivity with this confidence, e.g. 0.95 (a Neyman-Pearson "
        "order statistic; needs at least 74 pneumonia films for 0.96 at 0.95). Default: the "
        "plain point estimate on the folder.",
    )
    parser.add_argument("--output-dir", help="Where to write metrics.json and the plots.")
    parser.add_argument(
        "--calibrate-on",
        metavar="DIR",
        help="Site calibration: choose the threshold reaching --target-sensitivity (default "
        "0.96) on this labelled folder of the site's films (NORMAL/, PNEUMONIA/) and record it, "
        "with the folder, its size and the achieved figures' intervals, in the run's "
        "threshold.json, or in an exported model's files (the RGB variant's threshold, "
        "embedded TFLite metadata and pneumocnn.json rewritten).",
    )
    return parser


def _command(args: argparse.Namespace) -> int:
    from pneumocnn.adaptation.calibration import calibrate, format_calibration
    from pneumocnn.evaluation.reports import format_summary
    from pneumocnn.evaluation.scoring import evaluate

    if args.confidence is not None and not args.calibrate_on:
        raise UsageError(
            "--confidence applies to a site calibration. Received: --confidence "
            f"{args.confidence} without --calibrate-on. Add --calibrate-on DIR, or drop it."
        )
    if args.calibrate_on:
        target = 0.96 if args.target_sensitivity is None else args.target_sensitivity
        record = calibrate(args.model, args.calibrate_on, target, args.confidence)
        print(format_calibration(record))
        return EXIT_OK
    report, output_dir = evaluate(
        args.model, args.split, args.data_dir, args.target_sensitivity, args.output_dir
    )
    print(format_summary(report))
    print(f"Wrote {output_dir / METRICS_FILE} and plots to {output_dir}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
