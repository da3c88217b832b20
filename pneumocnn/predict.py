"""Prediction: `python -m pneumocnn.predict FILE_OR_FOLDER... [--model M] [--format F]`.

Classifies chest X-rays (JPEG, PNG, DICOM) with the shipped int8 model (default), another
`.tflite` (e.g. the subtype model, NORMAL / BACTERIAL / VIRAL), a `.keras` file, or a run
folder; the task and classes come from the model's metadata. Every image first goes through the
input guard (`pneumocnn.runtime.guard`): a blank image, a colour photograph, an icon or a strip is
refused with the reason; an image unlike the training films is classified but flagged, with
its out-of-distribution score. `--format` prints a table (default), one JSON object per line
(`--json` is the same as `--format json`), or CSV with one row per file, refused and unreadable
files included. `--threshold` sets the decision threshold for this run; every row records the
threshold used and where it came from. A bad file, or a folder entry that cannot be read (an
unreadable folder, a dangling link, a FIFO), gets an error row and exit status 1; the other
files are still classified.

Every row names one file, and only one: JSON carries the name exactly (`os.fsencode` of it gives
the bytes back); the table and CSV print it as it is, or, when it holds a newline, an escape
code, a byte that is not UTF-8 or another invisible character, in the shell's `$'...'` quoting
(`pneumocnn.core.files.quoted_name`; `unquote_name` reads it back). No CSV cell starts a
spreadsheet formula. A closed or full standard output is an error (exit 2); a reader that went
away (`| head -1`) stops the command quietly (exit 141).

Example:

    python -m pneumocnn.predict xrays/ --format csv --threshold 0.5 > results.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any

from pneumocnn import cli
from pneumocnn.core.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError
from pneumocnn.core.files import csv_path, quoted_name, spreadsheet_cell
from pneumocnn.core.locations import check_model_path, default_model
from pneumocnn.core.metadata import INT8_FILE, THRESHOLD_MARGIN, is_usable_threshold
from pneumocnn.data.pixels import ImageLoadError
from pneumocnn.data.scan import collect_inputs, require_inputs
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.runtime.prediction import ROW_DECIMALS, decimals_to_show

FORMATS = ("table", "json", "csv")
# Decimals of the table's probability and threshold, unless more are needed to keep their order.
TABLE_DECIMALS = 4
# The CSV's leading columns; a subtype model adds P(<class>) for each class after them.
COLUMNS = (
    "path",
    "label",
    "probability",
    "threshold",
    "threshold_source",
    "verdict",
    "ood_score",
    "reason",
)


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not is_usable_threshold(value):  # also refuses nan, and what metadata may not hold
        raise argparse.ArgumentTypeError(
            f"the threshold is a probability strictly between 0 and 1, within "
            f"[{THRESHOLD_MARGIN:g}, 1 - {THRESHOLD_MARGIN:g}] (closer to 0 or 1 it gives every "
            f"film one label). Received: {text!r}. Pass e.g. --threshold 0.5."
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.predict",
        description="Classify chest X-rays (JPEG, PNG or DICOM) as NORMAL or PNEUMONIA, or with "
        "a subtype model (saved_models/pneumocnn_subtype_int8.tflite) as NORMAL, BACTERIAL or "
        "VIRAL. The input guard refuses images that are clearly not chest films and flags those "
        "unlike the training films.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="Image files, or folders searched for JPEG, PNG and DICOM files.",
    )
    parser.add_argument(
        "--model",
        default=str(default_model()),
        help="A .tflite, .keras, or run folder (default: the shipped int8 model, "
        f"saved_models/{INT8_FILE}, or the one in $PNEUMOCNN_MODEL_DIR).",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="table (default), json (one object per line) or csv (one row per file, with a "
        "header).",
    )
    parser.add_argument(
        "--json", action="store_true", help="Same as --format json (kept for old scripts)."
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        help="Decision threshold on P(pneumonia) for this run (default: the model's stored "
        "threshold, chosen on validation or site-calibrated with `pneumocnn.evaluate "
        "--calibrate-on`, as its metadata's threshold_rule says). Recorded in every output row.",
    )
    return parser


def _row(result: Any, source: str) -> dict[str, Any]:
    row = result.as_row()
    return {**{key: row.get(key) for key in COLUMNS}, "threshold_source": source, **row}


def _error_row(path: Any, error: Exception | str, threshold: float, source: str) -> dict[str, Any]:
    return {
        "path": os.fspath(path),
        "label": "",
        "probability": None,
        "threshold": round(threshold, decimals_to_show([threshold], ROW_DECIMALS)),
        "threshold_source": source,
        "verdict": "unreadable",
        "ood_score": None,
        "reason": str(error),
    }


def _table_line(row: dict[str, Any]) -> str:
    digits = decimals_to_show([row["probability"], row["threshold"]], TABLE_DECIMALS)
    probability = "" if row["probability"] is None else f"{row['probability']:.{digits}f}"
    score = "" if row["ood_score"] is None else f"{row['ood_score']:.2f}"
    label = row["label"] or ("ERROR" if row["verdict"] == "unreadable" else "-")
    note = f": {row['reason']}" if row["reason"] else ""
    return (
        f"{label:<10} {probability:>12} {row['threshold']:>9.{digits}f}  {row['verdict']:<10} "
        f"{score:>5}  {quoted_name(row['path'])}{note}"
    )


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as CSV cells: the path in `csv_path`'s spelling, no cell a spreadsheet formula."""
    return {
        key: csv_path(value) if key == "path" else spreadsheet_cell(value)
        for key, value in row.items()
    }


def _json_line(row: dict[str, Any], class_names: list[str]) -> str:
    """A row as one JSON object: the path exactly as it is (JSON escapes what must be)."""
    if row["verdict"] == "unreadable":
        row["error"] = row["reason"]
    else:
        row["probabilities"] = {
            name: row.pop(f"P({name})") for name in class_names if f"P({name})" in row
        }
    return json.dumps(row)


def open_classifier(model: str) -> Any:
    """The runner of `--model`: LiteRT for a `.tflite` (no TensorFlow, which the core install
    lacks), else `pneumocnn.runtime.runners.open_model` (a `.keras` or a run folder)."""
    path = check_model_path(model)
    if path.suffix == ".tflite":
        return LiteModel(path).require_grayscale()
    # TensorFlow: a float model only (on the core install, `pneumocnn.cli` names the extra).
    from pneumocnn.runtime.runners import open_model

    return open_model(path)


def _command(args: argparse.Namespace) -> int:
    output_format = "json" if args.json else (args.format or "table")
    if args.json and args.format not in (None, "json"):
        raise UsageError(
            f"--json asks for JSON, and --format for {args.format}. Received: --json --format "
            f"{args.format}. Pass one of them."
        )
    classifier = open_classifier(args.model)
    files, refused = collect_inputs(args.inputs)
    if not files and not refused:
        require_inputs(args.inputs)  # raises NoInputsError, naming the inputs
    source = "command line" if args.threshold is not None else "model"
    threshold = classifier.threshold if args.threshold is None else args.threshold
    writer = None
    if output_format == "csv":
        # Every column is known before the first row: the model's classes are fixed.
        columns = [*COLUMNS, *(f"P({name})" for name in classifier.class_names)]
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
    elif output_format == "table":
        print(
            f"{'label':<10} {'P(pneumonia)':>12} {'threshold':>9}  {'verdict':<10} {'OOD':>5}  file"
        )

    def report(row: dict[str, Any]) -> None:
        if writer is not None:
            writer.writerow(_csv_row(row))
        elif output_format == "json":
            print(_json_line(row, classifier.class_names))
        else:
            print(_table_line(row))

    # Entries of a folder walk that are inputs gone wrong: an error row each, first.
    failures = [(name, reason) for name, reason in refused]
    for name, reason in refused:
        report(_error_row(name, reason, threshold, source))
    for path in files:
        try:
            row = _row(classifier.predict_file(path, args.threshold), source)
        except ImageLoadError as error:
            failures.append((str(path), str(error)))
            row = _error_row(path, error, threshold, source)
        report({**row, "path": os.fspath(path)})
    if output_format == "table" and args.threshold is not None:
        print(
            f"Threshold {threshold:g} set on the command line (the model's: "
            f"{classifier.threshold:g})."
        )
    if failures:
        total = len(files) + len(refused)
        print(f"{len(failures)} of {total} files could not be read.", file=sys.stderr)
        return EXIT_SOME_INPUTS_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns 0 when every file was read (refused and flagged
    images included: they got a verdict), 1 when some could not be read (the others still
    are), 2 for a usage error (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
