"""Prediction: `python -m pneumocnn.predict FILE_OR_FOLDER... [--model M] [--json]`.

Classifies JPEG, PNG or DICOM chest X-rays with the shipped int8 model (default), another
`.tflite` (e.g. the subtype model, NORMAL / BACTERIAL / VIRAL), a `.keras` file, or a run
folder; the task and classes come from the model's metadata. Prints a table, or one JSON
object per line with `--json`. A bad file, or a folder entry that cannot be read (an
unreadable folder, a dangling link, a FIFO), gets an error line and exit status 1; the other
files are still classified. File names are printed escaped (`pneumocnn.files.display_name`).

Example:

    python -m pneumocnn.predict xrays/ --json
"""

from __future__ import annotations

import argparse
import json
import sys

from pneumocnn import cli
from pneumocnn.metadata import INT8_FILE
from pneumocnn.runners import default_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.predict",
        description="Classify chest X-rays (JPEG, PNG or DICOM) as NORMAL or PNEUMONIA, or with a "
        "subtype model (saved_models/pneumocnn_subtype_int8.tflite) as NORMAL, BACTERIAL or VIRAL.",
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
    parser.add_argument("--json", action="store_true", help="Print one JSON object per line.")
    return parser


def _command(args: argparse.Namespace) -> int:
    from pneumocnn.files import display_name
    from pneumocnn.images import ImageLoadError
    from pneumocnn.runners import open_model

    classifier = open_model(args.model)
    files, refused = cli.collect_inputs(args.inputs)
    if not files and not refused:
        cli.require_inputs(args.inputs)  # raises NoInputsError, naming the inputs
    failures = [(name, reason) for name, reason in refused]
    if not args.json:
        print(f"{'label':<10} {'P(pneumonia)':>14} {'threshold':>9}  file")

    def report_failure(name: str, reason: str) -> None:
        if args.json:
            print(json.dumps({"path": name, "error": reason}))
        else:
            print(f"{'ERROR':<10} {'':>14} {'':>9}  {name}: {reason}")

    for name, reason in refused:  # entries of a folder walk that are inputs gone wrong
        report_failure(name, reason)
    for path in files:
        name = display_name(path)  # never a raw newline, escape code or undecodable byte
        try:
            result = classifier.predict_file(path)
        except ImageLoadError as error:
            failures.append((name, str(error)))
            report_failure(name, str(error))
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "path": name,
                        "label": result.label,
                        "probability": round(result.probability, 6),
                        "threshold": result.threshold,
                        "probabilities": {
                            name: round(value, 6) for name, value in result.probabilities.items()
                        },
                    }
                )
            )
        else:
            print(
                f"{result.label:<10} {result.probability:>14.4f} {result.threshold:>9.4f}  {name}"
            )
    if failures:
        total = len(files) + len(refused)
        print(f"{len(failures)} of {total} files could not be read.", file=sys.stderr)
        return cli.EXIT_SOME_INPUTS_FAILED
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns 0 when every file was classified, 1 when some could
    not be read (the others still are), 2 for a usage error (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
