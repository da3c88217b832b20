"""Grad-CAM overlays: `python -m pneumocnn.explain IMAGE_OR_FOLDER... [--model M]`.

Writes one PNG per image: the film with its Grad-CAM evidence over it (see
`pneumocnn.runtime.gradcam`: at least 10x10 cells, on a fixed 0-1 scale), a colour bar, and the
label, probability and threshold in the title. Grad-CAM needs the float `.keras` model (an int8
`.tflite` has no gradients): given a `.tflite`, the `.keras` of the same export is found beside it
through the metadata, and the label and probability shown are the `.tflite` model's own, the ones
`predict` gives. Every image goes through the input guard first (`pneumocnn.runtime.guard`): a
refused image gets no overlay (its reason is reported), a flagged one says so under the title.
The work is `pneumocnn.runtime.explanations.explain_files`; TensorFlow loads only once the
arguments are parsed.

Example:

    python -m pneumocnn.explain chest.jpeg --output-dir gradcam/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pneumocnn import cli
from pneumocnn.core.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED
from pneumocnn.core.locations import default_model
from pneumocnn.core.metadata import load_metadata, model_name
from pneumocnn.core.task import Task
from pneumocnn.runtime import guard

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.explain",
        description="Write Grad-CAM overlays showing where the model looked.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument(
        "--model",
        default=str(default_model("keras")),
        help="A float .keras model, or a .tflite whose .keras sits beside it (default: "
        "saved_models/pneumocnn.keras, or the one in $PNEUMOCNN_MODEL_DIR; the subtype model "
        "is saved_models/pneumocnn_subtype.keras).",
    )
    parser.add_argument("--output-dir", default="gradcam", help="Where to write the PNGs.")
    return parser


def _command(args: argparse.Namespace) -> int:
    from pneumocnn.runtime.explanations import explain_files  # TensorFlow: after --help
    from pneumocnn.runtime.runners import keras_beside, open_model

    model_path = keras_beside(args.model)
    # The label and probability shown are those of the model asked for (the int8 one, given a
    # .tflite), with its input guard; Grad-CAM runs on the float model beside it.
    classifier = open_model(args.model) if Path(args.model).suffix == ".tflite" else None
    if model_path != Path(args.model):
        logger.info("Grad-CAM needs the float model: using %s", model_path)
    threshold, task, calibration = None, None, None
    metadata_path = model_path.parent / f"{model_name(model_path)}.json"
    if metadata_path.is_file():
        metadata = load_metadata(metadata_path, model_path)
        threshold, task = metadata["threshold"], Task.of_metadata(metadata)
        calibration = guard.calibration_of(metadata)
    written, failed = explain_files(
        args.inputs, model_path, args.output_dir, threshold, task, classifier, calibration
    )
    print(f"Wrote {len(written)} Grad-CAM overlays to {args.output_dir}")
    for name, reason in failed:
        print(
            f"error: {name}: {reason}" if name not in reason else f"error: {reason}",
            file=sys.stderr,
        )
    return EXIT_SOME_INPUTS_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns 0, 1 if some images could not be read (or none was
    found), 2 for a usage error (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
