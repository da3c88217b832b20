"""Where the shipped models live: the one place that builds their paths.

An installed wheel carries them inside the package, a checkout in `saved_models/`;
`$PNEUMOCNN_MODEL_DIR` points elsewhere. `default_model(role, task)` names one file of them;
`check_model_path` tells whether a path is a model this package runs, before anything is loaded;
`find_models` lists the exported models of a folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pneumocnn.core.metadata import (
    DEFAULT_NAMES,
    MetadataError,
    load_metadata,
    model_files,
)
from pneumocnn.core.task import Task

# The forms of a model file this package runs (a run folder is the third).
MODEL_SUFFIXES = (".tflite", ".keras")
# The folder of the exported models: `$PNEUMOCNN_MODEL_DIR`, else the shipped models.
MODEL_DIR_ENV_VAR = "PNEUMOCNN_MODEL_DIR"
# The package folder, `pneumocnn/` (this file is pneumocnn/core/locations.py).
_PACKAGE = Path(__file__).resolve().parents[1]


def shipped_model_dir() -> Path:
    """The folder holding the shipped models.

    An installed wheel carries them inside the package (`pneumocnn/saved_models/`, copied there
    by the build, see setup.py); a source checkout or an editable install has them in
    `saved_models/` beside the package, their home in the repository.

    Returns:
        The installed copy when there is one, else the checkout's `saved_models/`.
    """
    installed = _PACKAGE / "saved_models"
    return installed if installed.is_dir() else _PACKAGE.parent / "saved_models"


def default_model_dir() -> Path:
    """The folder holding the exported models: `$PNEUMOCNN_MODEL_DIR`, else the shipped ones
    (see `shipped_model_dir`)."""
    return Path(os.environ.get(MODEL_DIR_ENV_VAR) or shipped_model_dir())


def default_model(role: str = "int8", task: str = "binary") -> Path:
    """The path of a shipped model file.

    Args:
        role: "int8", "fp16", "keras", "labels" or "metadata" (see
            `pneumocnn.core.metadata.model_files`). Defaults to "int8".
        task: "binary" or "subtype". Defaults to "binary".

    Example:

    >>> default_model("keras", "subtype").name
    'pneumocnn_subtype.keras'
    """
    return default_model_dir() / model_files(DEFAULT_NAMES[task])[role]


def check_model_path(path: str | Path) -> Path:
    """Checks that `path` is a model this package can run, before anything is loaded.

    Raises:
        FileNotFoundError: if it does not exist.
        ValueError: if it is neither a `.tflite`, a `.keras`, nor a folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Model not found. Received: model='{path}'. Pass an exported .tflite or .keras "
            f"(e.g. {default_model()}), or a training run folder."
        )
    if path.is_file() and path.suffix not in MODEL_SUFFIXES:
        raise ValueError(
            f"Expected a model file (.tflite or .keras) or a training run folder. Received: "
            f"model='{path}'. A {path.suffix or 'file without suffix'} is not a model; pass "
            f"e.g. {default_model()} (the metadata .json beside it is found by name)."
        )
    return path


def find_models(folder: Path) -> dict[str, dict[str, Any]]:
    """The exported models in `folder`: `{name: metadata}` for each valid `<name>.json`, the
    binary model first.

    Files that are not pneumocnn metadata are ignored.
    """

    models = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            models[path.stem] = load_metadata(path)
        except MetadataError:
            continue
    return dict(
        sorted(models.items(), key=lambda item: (Task.of_metadata(item[1]).subtype, item[0]))
    )
