"""Walking a folder of films: which entries are images, and why the others were left out.

`scan_folder` never opens or blocks on an entry (FIFOs, devices, link loops are refused by their
type), so a hostile folder cannot hang it. `collect_inputs` and `require_inputs` turn a
command's arguments (files and folders) into the image files to read.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
from pathlib import Path

from pneumocnn.core.errors import NoInputsError
from pneumocnn.core.files import display_name, is_utf8_name
from pneumocnn.data.images import is_image_file

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Folder walks


NOT_AN_IMAGE = "not a JPEG, PNG or DICOM file name"
_LINK_TO_FOLDER = "link to a folder (not followed)"
_NOT_INPUTS = frozenset({"hidden", NOT_AN_IMAGE, _LINK_TO_FOLDER, "ignored folder"})


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What a folder walk found.

    Args:
        files: the image files, sorted by path (`str`).
        skipped: `(path, reason)` for every entry left out and why; the path as it is (escape
            it to print it: `pneumocnn.core.files.display_name` in a message, `quoted_name` in a
            report).
    """

    files: list[str]
    skipped: list[tuple[str, str]]

    @property
    def refused(self) -> list[tuple[str, str]]:
        """The skipped entries that are inputs gone wrong (unreadable folders, dangling links,
        link loops, FIFOs and devices, names that are not UTF-8), as opposed to entries that are
        simply not images (hidden or other files, links to folders, ignored folders)."""
        return [(name, reason) for name, reason in self.skipped if reason not in _NOT_INPUTS]

    def log_skipped(self, log: logging.Logger = logger) -> None:
        """Logs one warning per reason: how many entries, and the first few names."""
        by_reason: dict[str, list[str]] = {}
        for entry, reason in self.skipped:
            by_reason.setdefault(reason, []).append(display_name(entry))
        for reason, entries in by_reason.items():
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            log.warning("Skipped %d entries: %s (%s)", len(entries), reason, shown)


def scan_folder(folder: str | Path, ignored_dirs: frozenset[str] = frozenset()) -> FolderScan:
    """Lists the image files under `folder`, recursively, and every entry left out and why.

    Never opens a file and never blocks: it only reads folder listings and `lstat`/`stat`
    results. Links to files are followed when they lead to a regular file; links to folders are
    not followed (no loops). Left out, each with its reason: hidden entries, names that are not
    UTF-8 (they cannot be written to a CSV or JSON report), entries whose name is not an
    image's (whatever they are: a `notes.txt`, a socket or a dangling link `notes`), and, of
    the entries named like images, dangling links and link loops, links to folders, FIFOs,
    sockets and devices, and unreadable folders.

    Args:
        folder: the folder to walk.
        ignored_dirs: folder names to leave out (e.g. `__MACOSX`), reported as "ignored
            folder". Defaults to none.

    Returns:
        A `FolderScan`.
    """
    files: list[str] = []
    skipped: list[tuple[str, str]] = []

    def skip(path: str, reason: str) -> None:
        skipped.append((path, reason))

    pending = [os.fspath(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listing = list(entries)
        except OSError as error:
            skip(current, f"unreadable folder ({error.strerror or type(error).__name__})")
            continue
        for entry in listing:
            path = entry.path
            if entry.name.startswith("."):
                skip(path, "hidden")
                continue
            if not is_utf8_name(path):
                skip(path, "name is not valid UTF-8; rename the file")
                continue
            is_link = entry.is_symlink()
            try:
                target = entry.stat(follow_symlinks=True)
            except OSError as error:
                if not is_image_file(path):  # a dangling `notes` is no more an input than notes
                    skip(path, NOT_AN_IMAGE)
                    continue
                if not is_link:
                    reason = "unreadable entry"
                else:
                    reason = "link loop" if error.errno == errno.ELOOP else "dangling link"
                skip(path, f"{reason} ({error.strerror or type(error).__name__})")
                continue
            if stat.S_ISDIR(target.st_mode):
                if is_link:
                    skip(path, _LINK_TO_FOLDER)
                elif entry.name in ignored_dirs:
                    skip(path, "ignored folder")
                else:
                    pending.append(path)
            elif not is_image_file(path):
                skip(path, NOT_AN_IMAGE)
            elif not stat.S_ISREG(target.st_mode):
                skip(path, "not a regular file (a FIFO, socket or device)")
            else:
                files.append(path)
    return FolderScan(sorted(files), sorted(skipped))


def collect_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files of `inputs`: each file as given, and each image file inside each folder
    (sorted, recursive; see `pneumocnn.data.scan.scan_folder`, which never opens or blocks on an
    entry). Every entry a folder walk leaves out is logged with its reason.

    Returns:
        `(files, refused)`: the files, and `(path, reason)` for each entry that is an input gone
        wrong (an unreadable folder, a dangling link or link loop, a FIFO or device named like
        an image, a name that is not UTF-8), which a command reports as a failure (exit code
        1). Paths are as they are: escape them to print them.
    """
    files: list[Path] = []
    refused: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            scan = scan_folder(path)
            scan.log_skipped(logging.getLogger(__name__))
            files += [Path(name) for name in scan.files]
            refused += scan.refused
        else:  # a file named by the user: the loader says what is wrong with it, if anything
            files.append(path)
    return files, refused


def require_inputs(inputs: list[str | Path]) -> list[Path]:
    """The image files of `inputs` (see `collect_inputs`).

    Raises:
        NoInputsError: if there is none.
    """
    files, refused = collect_inputs(inputs)
    if not files:
        raise NoInputsError(
            "No JPEG, PNG or DICOM images found"
            + (
                f" ({len(refused)} entries refused, e.g. {display_name(refused[0][0])}: "
                f"{refused[0][1]})"
                if refused
                else ""
            )
            + f". Received: inputs={[display_name(i) for i in inputs]}. Pass image files, or "
            "folders that hold .jpeg, .jpg, .png or .dcm files."
        )
    return files
