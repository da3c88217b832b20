"""The error classes every stage raises, and the exit code each maps to.

Library code raises these; the commands (`pneumocnn.cli.run`) turn them into exit codes:

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
- 141 (128 + SIGPIPE): the reader of the output went away (`predict ... | head -1`): the command
  stops at once and quietly, as any Unix filter does.

A file system fault (a read-only or full disk, a closed standard output, no permission) is an
error of the environment, not a bug: exit code 2, naming the path and the fix; what was in place
before stays as it was.

Every message names the received value and the fix.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_CHECK_FAILED = 4
EXIT_RESUMABLE = 5
EXIT_BROKEN_PIPE = 141


class UsageError(ValueError):
    """A bad flag value or a wrong file for a command (exit code 2)."""


class NoInputsError(ValueError):
    """No input could be processed: no image found where the user pointed (exit code 1)."""


class CheckFailedError(RuntimeError):
    """The work ran, but a check refused its result; nothing was written (exit code 4)."""


class ResumableError(RuntimeError):
    """The work stopped before the end and can be resumed (exit code 5)."""


class CannotWriteError(RuntimeError):
    """A file, folder or standard output could not be written: read-only, full, closed, or
    not permitted (exit code 2). Nothing the command was not asked to change was changed."""


class OutputClosedError(RuntimeError):
    """The reader of standard output went away, a broken pipe (exit code 141, no message)."""


def exit_code_of(error: BaseException) -> int:
    """The exit code of an error (see the table in this module's docstring)."""
    if isinstance(error, NoInputsError):
        return EXIT_SOME_INPUTS_FAILED
    if isinstance(error, CheckFailedError):
        return EXIT_CHECK_FAILED
    if isinstance(error, ResumableError):
        return EXIT_RESUMABLE
    if isinstance(error, OutputClosedError):
        return EXIT_BROKEN_PIPE
    if isinstance(error, CannotWriteError):
        return EXIT_USAGE
    # ValueError covers UsageError, DataError, MetadataError and ImageLoadError.
    if isinstance(error, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)):
        return EXIT_USAGE
    return EXIT_INTERNAL


class DataError(ValueError):
    """Raised when the data folder is missing or not laid out as expected."""
