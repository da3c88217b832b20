"""Export: `python -m pneumocnn.export RUN_DIR` writes the model users embed.

The work is `pneumocnn.edge.export.export`; this module parses the flags and prints what was
written. Replacing the shipped models is a choice made by name: `--output-dir saved_models`.

Example:

    python -m pneumocnn.export runs/20261122-003321                  # runs/20261122-003321/export
    python -m pneumocnn.export runs/20261122-003321 --output-dir saved_models   # ship it
"""

from __future__ import annotations

import argparse
import sys

from pneumocnn import cli
from pneumocnn.core.errors import EXIT_OK, UsageError
from pneumocnn.core.run_folder import CALIBRATION_IMAGES, export_dir

# The edge stage needs TensorFlow: imported in `_command`, so `--help` comes at once.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.export",
        description="Export a run folder's best model to int8 and float16 TFLite with metadata.",
    )
    parser.add_argument("run_dir", help="A finished training run folder.")
    parser.add_argument(
        "--output-dir",
        help="Where to write the model files (default: RUN_DIR/export). Pass --output-dir "
        "saved_models to replace the shipped models.",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help=f"Training images used to calibrate int8 ranges (default: {CALIBRATION_IMAGES}).",
    )
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        help="Choose the threshold for this validation sensitivity "
        "(default: the run's stored threshold, else Youden's J).",
    )
    parser.add_argument(
        "--no-equalize",
        action="store_true",
        help="Convert the model as it is, without activation equalization (which stretches "
        "each channel to share int8's range evenly: the same float function, less int8 "
        "rounding; see pneumocnn/edge/equalize.py). For reproducing files exported before it.",
    )
    parser.add_argument(
        "--name",
        help="Stem of the written files (default: pneumocnn for a binary run, "
        "pneumocnn_subtype for a subtype run).",
    )
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.calibration_images < 1:
        raise UsageError(
            "--calibration-images must be at least 1. "
            f"Received: calibration_images={args.calibration_images}. Pass a positive count "
            f"(default {CALIBRATION_IMAGES})."
        )
    from pneumocnn.edge.export import export, recalibration_advice

    output_dir = export_dir(args.run_dir, args.output_dir)
    metadata = export(
        args.run_dir,
        output_dir,
        args.calibration_images,
        args.target_sensitivity,
        name=args.name,
        equalize=not args.no_equalize,
    )
    int8 = metadata["validation_metrics"]["int8"]
    files = metadata["files"]
    sizes = metadata["file_bytes"]
    subtype = (
        f"; three classes: accuracy {int8['subtype_accuracy']:.4f}, macro one-vs-rest AUC "
        f"{int8['macro_ovr_auc']:.4f}"
        if metadata["task"] == "subtype"
        else ""
    )
    print(
        f"Wrote {output_dir}: {files['int8']} ({sizes[files['int8']]:,} bytes), "
        f"{files['fp16']} ({sizes[files['fp16']]:,} bytes), {files['keras']}, "
        f"{files['metadata']}, {files['labels']}, {files['card']}\n"
        f"int8 on validation at threshold {metadata['threshold']:.4f}: pneumonia AUC "
        f"{int8['roc_auc']:.4f}, accuracy {int8['accuracy']:.4f}, sensitivity "
        f"{int8['sensitivity']:.4f}, specificity {int8['specificity']:.4f}{subtype}; agreement "
        f"with float {metadata['parity']['agreement']:.2%}"
    )
    advice = recalibration_advice(metadata, output_dir)
    if advice:
        print(advice)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
