"""Where the shipped models live: the one place that builds their paths.

An installed wheel carries them inside the package, a checkout in `saved_models/`;
`$PNEUMOCNN_MODEL_DIR` points elsewhere. `default_model(role, task)` names one file of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pneumocnn.core.metadata import (
    DEFAULT_NAMES,
    model_files,
)

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
