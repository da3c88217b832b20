"""Teacher models for distillation (`Config.distill_from`): loaded and checked against the run."""

from __future__ import annotations

from pathlib import Path

from pneumocnn.core.config import Config
from pneumocnn.network.model import load_model


def load_teachers(config: Config, num_classes: int) -> list:
    """Loads the teacher models `config.distill_from` names (comma-separated `.keras` files).

    Returns:
        The models (uncompiled), or `[]` when `distill_from` is empty.

    Raises:
        FileNotFoundError: if a teacher file does not exist.
        ValueError: if a teacher's input size or outputs do not match the run's.
    """

    teachers = []
    for path in [part.strip() for part in config.distill_from.split(",") if part.strip()]:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"Teacher model '{path}' does not exist. Received: distill_from="
                f"{config.distill_from!r}. Name .keras files (e.g. RUN_DIR/best.keras), "
                "separated by commas."
            )
        teacher = load_model(path)
        outputs = 1 if num_classes == 2 else num_classes
        if tuple(teacher.input_shape[1:3]) != (config.image_size,) * 2 or (
            teacher.output_shape[-1] != outputs
        ):
            raise ValueError(
                f"Teacher '{path}' takes {teacher.input_shape[1:3]} films and gives "
                f"{teacher.output_shape[-1]} outputs; this run needs ({config.image_size}, "
                f"{config.image_size}) and {outputs}. Received: distill_from="
                f"{config.distill_from!r}. Use teachers of the same task and image size."
            )
        teacher.trainable = False
        teachers.append(teacher)
    return teachers
