"""The skeleton every command shares: logging and the error-to-exit-code mapping.

Each command (`train`, `evaluate`, `export`, `adapt`, `predict`, `explain`, `web`) builds its
`argparse` parser without importing TensorFlow (so `--help` is instant and quiet), then hands its
work to `run`, which sets up logging, imports nothing heavy itself, and maps errors to exit codes
(see `pneumocnn.core.errors` for the table).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from pneumocnn.core.commit import WRITE_FAULTS
from pneumocnn.core.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    CannotWriteError,
    OutputClosedError,
    UsageError,
    exit_code_of,
)
from pneumocnn.core.files import display_name

# The longest error message printed whole; a longer one (a library quoting a whole file) is cut.
MAX_MESSAGE_CHARS = 2000
# What a traceback may take on stderr before the rest is cut.
MAX_TRACEBACK_CHARS = 20000


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ start-up chatter to warnings and errors, before it is imported.

    Set `TF_CPP_MIN_LOG_LEVEL` yourself to override.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class GuardedOutput:
    """Standard output as a command writes it, with its faults named.

    A closed standard output (`>&-`), a full disk (`> /dev/full`) or a read-only one raise
    `CannotWriteError` (exit code 2) naming the fix; a reader that went away (`| head -1`)
    raises `OutputClosedError` (exit code 141). Everything else is the wrapped stream's.

    Args:
        stream: the stream to write to; `None` when standard output is closed.
    """

    def __init__(self, stream: Any):
        self.stream = stream

    def _call(self, method: str, *arguments: Any) -> Any:
        if self.stream is None:
            raise CannotWriteError(
                "Standard output is closed, so the results cannot be written. Received: no "
                "stdout (e.g. `>&-`). Run the command with its output to a terminal, a file or "
                "a pipe (`> results.txt`; `> /dev/null` to discard it)."
            )
        try:
            return getattr(self.stream, method)(*arguments)
        except BrokenPipeError as error:
            raise OutputClosedError("standard output: the reader went away") from error
        except (OSError, ValueError) as error:  # ValueError: "I/O operation on closed file"
            reason = getattr(error, "strerror", None) or str(error)
            raise CannotWriteError(
                f"Cannot write the results to standard output ({reason}). Received: "
                f"stdout={display_name(getattr(self.stream, 'name', '?'))}. Send the output "
                "somewhere it can be written (a file system with free space, a terminal, a pipe)."
            ) from error

    def write(self, text: str) -> int:
        return self._call("write", text)

    def flush(self) -> None:
        if self.stream is not None:  # nothing was written to a closed output
            self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters left out)"


def _write_fault(error: BaseException) -> CannotWriteError | None:
    """A file system fault of the environment as the error the user sees, or `None`."""
    if not isinstance(error, OSError) or error.errno not in WRITE_FAULTS:
        return None
    path = error.filename if error.filename is not None else "?"
    return CannotWriteError(
        f"{error.strerror or type(error).__name__}: '{display_name(str(path))}'. Received: "
        f"path='{display_name(str(path))}'. To fix it, {WRITE_FAULTS[error.errno]}. Files that "
        "were in place before were left as they were."
    )


# The extra that installs each optional package a command may need (see setup.cfg); the core
# install (`pip install pneumocnn`) runs `predict` on `.tflite` files without any of them.
EXTRAS = {
    **dict.fromkeys(
        ("tensorflow", "keras", "sklearn", "scipy", "pandas", "matplotlib", "seaborn",
         "kagglehub", "mediapipe"),
        "train",
    ),
    "streamlit": "app",
    "pydicom": "lite",
}  # fmt: skip


def _missing_extra(error: BaseException, prog: str) -> UsageError | None:
    """A package of an extra that this install lacks, as the error the user sees, or `None`."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    package = error.name.split(".")[0]
    if package not in EXTRAS:
        return None
    return UsageError(
        f"{prog} needs {package}, which this install lacks. Received: {error}. Install it with "
        f'pip install "pneumocnn[{EXTRAS[package]}]" (the core install runs predict on .tflite '
        "files only)."
    )


def _silence(stream: Any) -> None:
    """Points a broken standard output at /dev/null, so the interpreter's last flush of what is
    still buffered cannot fail again (the recipe of Python's `signal` documentation)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _tell(message: str) -> None:
    """Prints `message` on stderr; a closed or broken stderr loses it rather than fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(message, file=sys.stderr)


def run(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """Parses `argv`, runs `command(args)`, and returns its exit code, or the error's.

    Standard output is written through `GuardedOutput` and flushed before the code is returned,
    so a closed, full or broken output is an error of its own (see `pneumocnn.core.errors`);
    messages are cut to `MAX_MESSAGE_CHARS`.

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
    stdout = sys.stdout
    sys.stdout = GuardedOutput(stdout)
    try:
        code = command(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        _tell("error: interrupted.")
        return 130
    except Exception as error:  # noqa: BLE001 - the boundary: every error gets its exit code.
        error = _write_fault(error) or _missing_extra(error, parser.prog) or error
        code = exit_code_of(error)
        if isinstance(error, OutputClosedError | CannotWriteError) and stdout is not None:
            _silence(stdout)
        if code == EXIT_BROKEN_PIPE:
            return code
        if code == EXIT_INTERNAL:
            _tell(bounded("".join(traceback.format_exc()), MAX_TRACEBACK_CHARS))
            _tell(
                f"error: unexpected {type(error).__name__}: {bounded(str(error))}. This is a "
                f"bug in {parser.prog}; please report it with the traceback above."
            )
        else:
            _tell(f"error: {bounded(str(error))}")
        return code
    finally:
        sys.stdout = stdout
