"""The skeleton every command shares: exit codes, error classes, logging, input expansion.

Each command (`train`, `evaluate`, `export`, `predict`, `explain`, `web`) builds its `argparse`
parser without importing TensorFlow (so `--help` is instant and quiet), then hands its work to
`run`, which sets up logging, imports nothing heavy itself, and maps errors to exit codes:

- 0: all done.
- 1: some inputs could not be processed (unreadable images, no image found); the rest were.
- 2: usage or configuration error: a bad flag, a missing file or folder, a file that is not a
  model, metadata that does not match, a configuration whose training diverged. Nothing was
  done (or kept).
- 3: the program itself failed: an unexpected error (a bug; the traceback is printed).
- 4: the work ran, but a check refused its result (the int8 model strays from the float one).
  Nothing was written.
- 5: the work stopped before the end and can be resumed (a worker of a multi-worker run was
  lost); the message says how.

Every message names the received value and the fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from pneumocnn.files import display_name

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_CHECK_FAILED = 4
EXIT_RESUMABLE = 5


class UsageError(ValueError):
    """A bad flag value or a wrong file for a command (exit code 2)."""


class NoInputsError(ValueError):
    """No input could be processed: no image found where the user pointed (exit code 1)."""


class CheckFailedError(RuntimeError):
    """The work ran, but a check refused its result; nothing was written (exit code 4)."""


class ResumableError(RuntimeError):
    """The work stopped before the end and can be resumed (exit code 5)."""


def exit_code_of(error: BaseException) -> int:
    """The exit code of an error (see the table in this module's docstring)."""
    if isinstance(error, NoInputsError):
        return EXIT_SOME_INPUTS_FAILED
    if isinstance(error, CheckFailedError):
        return EXIT_CHECK_FAILED
    if isinstance(error, ResumableError):
        return EXIT_RESUMABLE
    # ValueError covers UsageError, DataError, MetadataError and ImageLoadError.
    if isinstance(error, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)):
        return EXIT_USAGE
    return EXIT_INTERNAL


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ start-up chatter to warnings and errors, before it is imported.

    Set `TF_CPP_MIN_LOG_LEVEL` yourself to override.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """Parses `argv`, runs `command(args)`, and returns its exit code, or the error's.

    Args:
        parser: the command's parser (argparse exits with 2 on a usage error).
        command: does the work, importing what it needs; returns an exit code.
        argv: the arguments. Defaults to `None`: `sys.argv[1:]`.

    Returns:
        The exit code.
    """
    args = parser.parse_args(argv)
    quiet_tensorflow()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return command(args)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the boundary: every error gets its exit code.
        code = exit_code_of(error)
        if code == EXIT_INTERNAL:
            traceback.print_exc()
            print(
                f"error: unexpected {type(error).__name__}: {error}. This is a bug in "
                f"{parser.prog}; please report it with the traceback above.",
                file=sys.stderr,
            )
        else:
            print(f"error: {error}", file=sys.stderr)
        return code


def collect_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files of `inputs`: each file as given, and each image file inside each folder
    (sorted, recursive; see `pneumocnn.images.scan_folder`, which never opens or blocks on an
    entry). Every entry a folder walk leaves out is logged with its reason.

    Returns:
        `(files, refused)`: the files, and `(name, reason)` for each entry that is an input gone
        wrong (an unreadable folder, a dangling link or link loop, a FIFO or device, a name that
        is not UTF-8), which a command reports as a failure (exit code 1). Names are escaped
        for printing.
    """
    from pneumocnn.images import scan_folder

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


def expand_inputs(inputs: list[str | Path]) -> Iterator[Path]:
    """Yields the image files of `inputs` (see `collect_inputs`)."""
    yield from collect_inputs(inputs)[0]


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
                f" ({len(refused)} entries refused, e.g. {refused[0][0]}: {refused[0][1]})"
                if refused
                else ""
            )
            + f". Received: inputs={[display_name(i) for i in inputs]}. Pass image files, or "
            "folders that hold .jpeg, .jpg, .png or .dcm files."
        )
    return files
