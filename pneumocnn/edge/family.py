"""Writing an exported family into place: the card and metadata last, every file renamed from a
scratch folder, so a kill never leaves a family whose files disagree.

`Family` and `read_family` read and verify an exported family; `finish_recalibration` completes a
recalibration that a kill interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pneumocnn.core.metadata import find_metadata, load_metadata, model_name, write_json_atomically
from pneumocnn.edge.card import card_file, model_card

logger = logging.getLogger(__name__)
# The model files of an export, by role (see `pneumocnn.core.metadata.model_files`).
MODEL_ROLES = ("int8", "fp16", "rgb_int8", "keras")


def write_family(
    scratch: Path,
    output_dir: Path,
    files: dict[str, str],
    metadata: dict[str, Any],
    roles: tuple[str, ...] = (*MODEL_ROLES, "labels"),
) -> None:
    """Step 7: writes the model card (see `pneumocnn.edge.card`) and the metadata, and renames every
    file into `output_dir`: models first, metadata last, so the metadata never names a file
    that is not in place. A recalibration passes the `roles` it rewrote; a name no longer in
    `scratch` was moved already (by a run that was interrupted after writing the metadata, see
    `finish_recalibration`). The card is written every time, so it always tells what the
    metadata holds (a recalibrated threshold included)."""

    card = files.get("card") or card_file(Path(files["metadata"]).stem)
    (scratch / card).write_text(model_card(metadata))
    write_json_atomically(scratch / files["metadata"], metadata)
    for name in (*(files[role] for role in roles), card, files["metadata"]):
        if (scratch / name).exists():
            (scratch / name).replace(output_dir / name)


SCRATCH_PREFIX = ".export-"
# In each scratch folder: the process id of the export that owns it.
SCRATCH_OWNER = "owner.pid"


def remove_stale_scratch(output_dir: str | Path) -> list[Path]:
    """Removes the scratch folders (`.export-*`) that killed exports left in `output_dir`.

    An export works in a hidden scratch folder and renames the finished files into place; a
    kill (SIGKILL, power cut) leaves that folder behind. A scratch folder is stale when the
    process named in its `owner.pid` no longer runs (or, with no such file, after an hour), so
    a concurrent export's folder is never touched.

    Returns:
        The folders removed.
    """
    removed = []
    for folder in Path(output_dir).glob(SCRATCH_PREFIX + "*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            owner = int((folder / SCRATCH_OWNER).read_text().split()[0])
            alive = _process_exists(owner)
        except (OSError, ValueError, IndexError):
            alive = time.time() - folder.stat().st_mtime < 3600
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("Removed %s, left by an export that was killed", folder)
            removed.append(folder)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# Site recalibration of an exported model: a new threshold for a whole file family.

# The recalibration's scratch folder, beside the family: `.recalibrate-<name>`. A fixed name, so
# the next run finds one that a kill interrupted.
RECALIBRATION_PREFIX = ".recalibrate-"
_PROVISIONAL = "provisional.json"


@dataclasses.dataclass
class Family:
    """An exported model's files, as its metadata lists them.

    Args:
        folder: the folder holding them.
        metadata: the metadata `<name>.json`, verified.
    """

    folder: Path
    metadata: dict[str, Any]

    @property
    def files(self) -> dict[str, str]:
        return self.metadata["files"]

    @property
    def scratch(self) -> Path:
        return self.folder / f"{RECALIBRATION_PREFIX}{self.metadata['name']}"


def finish_recalibration(metadata_path: Path) -> bool:
    """Completes a recalibration of the family of `metadata_path` that a kill interrupted.

    Its scratch folder holds the new metadata only once every new file is written and checked
    (the commit point): then the files still there are moved into place, metadata last. Without
    the metadata, the run never committed and its scratch is removed: the family in place is
    the previous one, untouched.

    Returns:
        True if an interrupted recalibration was completed.
    """

    scratch = metadata_path.parent / f"{RECALIBRATION_PREFIX}{model_name(metadata_path)}"
    if not scratch.is_dir():
        return False
    committed = scratch / metadata_path.name
    if not committed.is_file():
        shutil.rmtree(scratch)
        return False
    metadata = json.loads(committed.read_text())
    logger.warning("Completing the interrupted recalibration in '%s'", scratch)
    write_family(scratch, metadata_path.parent, metadata["files"], metadata)
    shutil.rmtree(scratch)
    return True


def read_family(model_path: str | Path) -> Family:
    """Recalibration step 1: finds the family of an exported model file, completes an
    interrupted recalibration of it (see `finish_recalibration`), and verifies it: every model
    file it lists matches its SHA-256.

    Args:
        model_path: any file of the family (`<name>_int8.tflite`, `<name>.keras`, ...).

    Raises:
        MetadataError: if the metadata is missing, or a file does not match it.
    """

    metadata_path = find_metadata(model_path)
    finish_recalibration(metadata_path)
    metadata = load_metadata(metadata_path)
    files = metadata.get("files", {})
    for role in MODEL_ROLES:
        if role in files:
            load_metadata(metadata_path, metadata_path.parent / files[role])
    return Family(metadata_path.parent, metadata)


def describe_again(family: Family, updates: dict[str, Any]) -> dict[str, Any]:
    """Rewrites a family's metadata with `updates` (figures measured after its export, such
    as a score on withheld films) and its card; the model files stay as they are.

    The metadata and card are written into the family's scratch folder and renamed into
    place, metadata last (see `write_family`), so a kill leaves the previous pair or the new
    one; an interrupted rewrite is completed by the next `read_family`.

    Returns:
        The new metadata.
    """
    metadata = {**family.metadata, **updates}
    family.scratch.mkdir()
    try:
        write_family(family.scratch, family.folder, family.files, metadata, roles=())
    finally:
        shutil.rmtree(family.scratch, ignore_errors=True)
    return metadata
