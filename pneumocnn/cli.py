"""The skeleton every command shares: logging, error-to-exit-code mapping, input expansion.

Each command (`train`, `evaluate`, `export`, `adapt`, `predict`, `explain`, `web`) builds its
`argparse` parser without importing TensorFlow (so `--help` is instant and quiet), then hands its
work to `run`, which sets up logging, imports nothing heavy itself, and maps errors to exit codes
(see `pneumocnn.core.errors` for the table).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from pneumocnn.core.errors import EXIT_INTERNAL, NoInputsError, exit_code_of
from pneumocnn.core.files import display_name


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
    (sorted, recursive; see `pneumocnn.data.scan.scan_folder`, which never opens or blocks on an
    entry). Every entry a folder walk leaves out is logged with its reason.

    Returns:
        `(files, refused)`: the files, and `(name, reason)` for each entry that is an input gone
        wrong (an unreadable folder, a dangling link or link loop, a FIFO or device, a name that
        is not UTF-8), which a command reports as a failure (exit code 1). Names are escaped
        for printing.
    """
    from pneumocnn.data.scan import scan_folder

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
