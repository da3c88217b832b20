"""Writing an exported family into place: every file renamed from one scratch folder after a
commit point, so a kill, a full disk or a second writer never leaves a family whose files
disagree (see `pneumocnn.core.commit`).

An export and a recalibration of the family `<name>` both write through the scratch folder
`.export-<name>` beside it (`claim_family`), so two never run at once; `write_family` commits and
moves the files, metadata last. `read_family` completes or removes a write that was killed, then
reads and verifies the family.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pneumocnn.core.commit import OWNER_FILE, claim, commit, settle_stale
from pneumocnn.core.metadata import (
    SCRATCH_PREFIX,
    family_scratch,
    find_metadata,
    load_metadata,
    model_name,
    settle_family,
    write_json_atomically,
)
from pneumocnn.edge.card import card_file, model_card

logger = logging.getLogger(__name__)
# The model files of an export, by role (see `pneumocnn.core.metadata.model_files`).
MODEL_ROLES = ("int8", "fp16", "rgb_int8", "keras")
# In each scratch folder: the process that owns it (see `pneumocnn.core.commit.claim`).
SCRATCH_OWNER = OWNER_FILE
# Provisional metadata in a scratch folder, for checks that run the new files: not the
# metadata's own name, which only the committed family carries.
PROVISIONAL = "provisional.json"
# Scratch folders of older versions (a recalibration's); settled like the others.
_OLD_PREFIXES = (".recalibrate-",)


@contextlib.contextmanager
def claim_family(folder: str | Path, name: str) -> Iterator[Path]:
    """Claims the scratch folder of the family `name` in `folder` for an export or a
    recalibration (see `pneumocnn.core.commit.claim`), completing or removing one a killed
    writer left.

    Raises:
        BusyError: if another export or recalibration of the family is running.
    """
    folder = Path(folder)
    for prefix in _OLD_PREFIXES:
        settle_stale(folder, f"{prefix}{name}")
    with claim(family_scratch(folder, name), f"the model family '{name}'") as scratch:
        yield scratch


def write_family(
    scratch: Path,
    output_dir: Path,
    files: dict[str, str],
    metadata: dict[str, Any],
    roles: tuple[str, ...] = (*MODEL_ROLES, "labels"),
    records: tuple[tuple[str, Path], ...] = (),
) -> None:
    """The last step: writes the model card (see `pneumocnn.edge.card`) and the metadata into
    `scratch`, commits, and moves every file into `output_dir`: models first, metadata last, so
    the metadata never names a file that is not in place; then the `records` kept elsewhere (a
    run folder's `threshold.json`). A recalibration passes the `roles` it rewrote. The card is
    written every time, so it always tells what the metadata holds (a recalibrated threshold
    included).

    Args:
        scratch: the claimed scratch folder (see `claim_family`), holding the new files.
        output_dir: the family's folder.
        files: the family's file names by role.
        metadata: the metadata to write.
        roles: the roles whose files are in `scratch`. Defaults to every model file and the
            labels.
        records: `(name in scratch, target)` of files to move after the family. Defaults to
            none.
    """

    card = files.get("card") or card_file(Path(files["metadata"]).stem)
    (scratch / card).write_text(model_card(metadata))
    write_json_atomically(scratch / files["metadata"], metadata)
    names = [files[role] for role in roles if role in files]
    moves = [(name, output_dir / name) for name in (*names, card, files["metadata"])]
    commit(scratch, [*moves, *records])


def remove_stale_scratch(output_dir: str | Path) -> list[Path]:
    """Settles the scratch folders (`.export-*`) that killed exports or recalibrations left in
    `output_dir`: one whose owner is gone is completed if it was committed, else removed (see
    `pneumocnn.core.commit.settle`); a running writer's is never touched.

    Returns:
        The folders settled.
    """
    settled = settle_stale(output_dir, SCRATCH_PREFIX + "*")
    for prefix in _OLD_PREFIXES:
        settled += settle_stale(output_dir, prefix + "*")
    for folder, outcome in settled:
        logger.info("Settled %s, left by a killed export or calibration (%s)", folder, outcome)
    return [folder for folder, _ in settled]


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
        """The family's scratch folder (see `claim_family`)."""
        return family_scratch(self.folder, model_name(self.files["metadata"]))


def read_family(model_path: str | Path) -> Family:
    """Recalibration step 1: finds the family of an exported model file, completes or removes a
    write of it that was killed (see `pneumocnn.core.metadata.settle_family`), and verifies it:
    every model file it lists matches its SHA-256.

    Args:
        model_path: any file of the family (`<name>_int8.tflite`, `<name>.keras`, ...).

    Raises:
        MetadataError: if the metadata is missing, or a file does not match it.
    """

    metadata_path = find_metadata(model_path)
    settle_family(metadata_path)
    metadata = load_metadata(metadata_path)
    files = metadata.get("files", {})
    for role in MODEL_ROLES:
        if role in files:
            load_metadata(metadata_path, metadata_path.parent / files[role])
    return Family(metadata_path.parent, metadata)


def describe_again(family: Family, updates: dict[str, Any]) -> dict[str, Any]:
    """Rewrites a family's metadata with `updates` (figures measured after its export, such
    as a score on withheld films) and its card; the model files stay as they are.

    The metadata and card are written into the family's claimed scratch folder and committed
    (see `write_family`), so a kill leaves the previous pair or the new one, and the next
    reader of the family completes an interrupted rewrite.

    Returns:
        The new metadata.

    Raises:
        BusyError: if an export or recalibration of the family is running.
    """
    metadata = {**family.metadata, **updates}
    with claim_family(family.folder, model_name(family.files["metadata"])) as scratch:
        write_family(scratch, family.folder, family.files, metadata, roles=())
    return metadata
