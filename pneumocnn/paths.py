"""Where the shipped models are: one lookup for every consumer.

Importing this module does no work.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


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
