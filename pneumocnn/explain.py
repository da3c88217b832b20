"""Grad-CAM overlays: `python -m pneumocnn.explain IMAGE_OR_FOLDER... [--model M]`.

Writes one PNG per image: the film with its Grad-CAM evidence over it (see
`pneumocnn.runtime.gradcam`: at least 10x10 cells, on a fixed 0-1 scale), a colour bar, and the
label, probability and threshold in the title. Grad-CAM needs the float `.keras` model (an int8
`.tflite` has no gradients): given a `.tflite`, the `.keras` of the same export is found beside it
through the metadata, and the label and probability shown are the `.tflite` model's own, the ones
`predict` gives. Every image goes through the input guard first (`pneumocnn.runtime.guard`): a
refused image gets no overlay (its reason is reported), a flagged one says so under the title.

Example:

    python -m pneumocnn.explain chest.jpeg --output-dir gradcam/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pneumocnn import cli
from pneumocnn.core.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED
from pneumocnn.core.locations import default_model
from pneumocnn.runtime.prediction import classify

logger = logging.getLogger(__name__)


def explain_files(
    inputs: list[str | Path],
    model_path: str | Path,
    output_dir: str | Path,
    threshold: float | None = None,
    task: Any = None,
    classifier: Any = None,
    calibration: Any = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Writes one overlay PNG per image into `output_dir` (see `pneumocnn.runtime.gradcam`).

    Args:
        inputs: image files, or folders searched for images.
        model_path: the float `.keras` model.
        output_dir: where to write `<image>_gradcam.png` (named by
            `pneumocnn.core.files.output_names`: unique, at most 255 bytes).
        threshold: the decision threshold, shown with the verdict. Defaults to `None`.
        task: the model's task (a `pneumocnn.core.task.Task`). Defaults to `None`: read from
            the width of the model's head (a bare `.keras` carries nothing else).
        classifier: the runner whose label and probability are shown (e.g. the int8
            `LiteModel`), with its input guard. Defaults to `None`: the float model's own.
        calibration: the input guard's calibration when there is no `classifier` (see
            `pneumocnn.runtime.guard.calibration_of`). Defaults to `None`: refusal checks only.

    Returns:
        `(written, failed)`: the PNG paths, and `(name, reason)` for unreadable or refused
        images and folder entries that could not be read.

    Raises:
        NoInputsError: if `inputs` hold no image file.
    """
    from pneumocnn.core.files import atomic_path, display_name, output_names
    from pneumocnn.core.task import Task
    from pneumocnn.data.images import read_grayscale, to_model_input
    from pneumocnn.data.pixels import ImageLoadError
    from pneumocnn.network.model import load_model
    from pneumocnn.runtime import guard
    from pneumocnn.runtime.gradcam import GradCam, explain_image, overlay_figure

    files, refused = cli.collect_inputs(inputs)
    if not files and not refused:
        cli.require_inputs(inputs)  # raises NoInputsError, naming the inputs
    cam = GradCam(load_model(model_path))
    task = task or Task.of_head(cam.num_outputs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], [(display_name(name), reason) for name, reason in refused]
    # Unique and short enough: a/x.jpeg and b/x.jpeg must not overwrite each other.
    names = output_names(files, "_gradcam.png")
    for index, (path, name) in enumerate(zip(files, names, strict=True), start=1):
        try:
            gray = read_grayscale(path)
        except ImageLoadError as error:
            failed.append((display_name(path), str(error)))
            logger.warning("%s", error)
            continue
        image = to_model_input(gray, cam.image_size)
        label, probabilities = None, None
        if classifier is not None:
            result = classify(classifier, gray, path, threshold)
            verdict, label, probabilities = result.verdict, result.label, result.probabilities
        else:
            verdict = guard.judge(gray, image, calibration, cam.image_size)
        if verdict.status == guard.REFUSED:
            shown = display_name(path)
            failed.append((shown, f"'{shown}' was refused by the input guard: {verdict.reason}"))
            logger.warning("Refused %s: %s", shown, verdict.reason)
            continue
        result = explain_image(cam, image, threshold, task, label, probabilities)
        target = output_dir / name
        note = f"flagged: {verdict.reason}" if verdict.status == guard.FLAGGED else ""
        figure = overlay_figure(
            image,
            result.heatmap,
            result.probability,
            threshold,
            display_name(Path(path).name),
            explained=result.explained,
            label=result.label,
            note=note,
        )
        with atomic_path(target) as temporary:
            figure.savefig(temporary, dpi=110)
        written.append(target)
        logger.info("[%d/%d] %s -> %s", index, len(files), display_name(path), target)
    return written, failed


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
    from pneumocnn.core.metadata import load_metadata, model_name
    from pneumocnn.core.task import Task
    from pneumocnn.runtime import guard
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
