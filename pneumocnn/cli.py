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

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_CHECK_FAILED = 4


class UsageError(ValueError):
    """A bad flag value or a wrong file for a command (exit code 2)."""


class NoInputsError(ValueError):
    """No input could be processed: no image found where the user pointed (exit code 1)."""


class CheckFailedError(RuntimeError):
    """The work ran, but a check refused its result; nothing was written (exit code 4)."""


def exit_code_of(error: BaseException) -> int:
    """The exit code of an error (see the table in this module's docstring)."""
    if isinstance(error, NoInputsError):
        return EXIT_SOME_INPUTS_FAILED
    if isinstance(error, CheckFailedError):
        return EXIT_CHECK_FAILED
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


def expand_inputs(inputs: list[str | Path]) -> Iterator[Path]:
    """Yields each file as given, and each image file inside each folder (sorted, recursive)."""
    from pneumocnn.images import is_image_file

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        else:
            yield path


def require_inputs(inputs: list[str | Path]) -> list[Path]:
    """The image files of `inputs` (see `expand_inputs`).

    Raises:
        NoInputsError: if there is none.
    """
    files = list(expand_inputs(inputs))
    if not files:
        raise NoInputsError(
            f"No JPEG or PNG images found. Received: inputs={[str(i) for i in inputs]}. Pass "
            "image files, or folders that hold .jpeg, .jpg or .png files."
        )
    return files
