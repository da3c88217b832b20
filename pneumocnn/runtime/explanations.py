"""Grad-CAM overlays for a list of films: the library side of `python -m pneumocnn.explain`.

Each film goes through the input guard first (`pneumocnn.runtime.guard`): a refused film gets no
overlay (its reason is reported), a flagged one says so under the title. The overlay itself is
`pneumocnn.runtime.gradcam.overlay_figure`, written through `pneumocnn.core.files.atomic_path`.

Example:

>>> model = "saved_models/pneumocnn.keras"
>>> written, failed = explain_files(["chest.jpeg"], model, "gradcam/")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pneumocnn.core.files import atomic_path, display_name, output_names
from pneumocnn.core.task import Task
from pneumocnn.data.images import read_grayscale, to_model_input
from pneumocnn.data.pixels import ImageLoadError
from pneumocnn.data.scan import collect_inputs, require_inputs
from pneumocnn.network.model import load_model
from pneumocnn.runtime import guard
from pneumocnn.runtime.gradcam import GradCam, explain_image, overlay_figure
from pneumocnn.runtime.prediction import classify

logger = logging.getLogger(__name__)


def explain_files(
    inputs: list[str | Path],
    model_path: str | Path,
    output_dir: str | Path,
    threshold: float | None = None,
    task: Task | None = None,
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
    files, refused = collect_inputs(inputs)
    if not files and not refused:
        require_inputs(inputs)  # raises NoInputsError, naming the inputs
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
        target = output_dir / name
        reason = _explain_one(cam, gray, path, target, threshold, task, classifier, calibration)
        if reason:
            shown = display_name(path)
            failed.append((shown, f"'{shown}' was refused by the input guard: {reason}"))
            logger.warning("Refused %s: %s", shown, reason)
            continue
        written.append(target)
        logger.info("[%d/%d] %s -> %s", index, len(files), display_name(path), target)
    return written, failed


def _explain_one(
    cam: GradCam,
    gray: np.ndarray,
    path: str | Path,
    target: Path,
    threshold: float | None,
    task: Task,
    classifier: Any,
    calibration: Any,
) -> str:
    """Writes one film's overlay to `target`; returns the input guard's reason when it refused
    the film (and writes nothing), else an empty string."""
    image = to_model_input(gray, cam.image_size)
    label, probabilities = None, None
    if classifier is not None:
        result = classify(classifier, gray, path, threshold)
        verdict, label, probabilities = result.verdict, result.label, result.probabilities
    else:
        verdict = guard.judge(gray, image, calibration, cam.image_size)
    if verdict.status == guard.REFUSED:
        return verdict.reason
    result = explain_image(cam, image, threshold, task, label, probabilities)
    figure = overlay_figure(
        image,
        result.heatmap,
        result.probability,
        threshold,
        display_name(Path(path).name),
        explained=result.explained,
        label=result.label,
        note=f"flagged: {verdict.reason}" if verdict.status == guard.FLAGGED else "",
    )
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=110)
    return ""
