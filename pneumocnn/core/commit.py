"""Replacing a set of files together: a kill, a full disk or a crash never leaves a mix of old and
new, and never two writers at once.

A writer claims a scratch folder of a fixed name beside the files it replaces (`claim`; the
folder records the writing process, so a second writer is refused by name while the first
lives). It writes every new file into it; then `commit` writes the plan (`commit.json`: which
file goes where, in order) into the scratch folder in one atomic step, the commit point, and
moves the files into place. A scratch folder left without a plan is an unfinished write: `settle`
removes it and the files in place are the previous ones (rolled back). One with a plan was
interrupted while moving: `settle` completes the moves (rolled forward). Whoever claims the
folder next, or opens the files it replaces (see `settle_stale`), settles it first.

Standard library only: the edge runtime uses it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pneumocnn.core.errors import CannotWriteError, UsageError
from pneumocnn.core.files import atomic_path, display_name, read_json

logger = logging.getLogger(__name__)

PLAN_FILE = "commit.json"
OWNER_FILE = "owner.pid"
# A scratch folder whose owner cannot be told (no owner file: an older version's) is stale after
# this long; one with an owner is stale once that process is gone.
_UNOWNED_STALE_SECONDS = 3600
# File system faults a write can meet, each with its fix.
WRITE_FAULTS = {
    errno.ENOSPC: "free space on that file system, or write elsewhere, and run it again",
    errno.EDQUOT: "free space within your quota, or write elsewhere, and run it again",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "check the folder's permissions, or write elsewhere",
    errno.EPERM: "check the folder's permissions, or write elsewhere",
}


class BusyError(UsageError):
    """Another process is writing the same files (exit code 2): wait for it, then run again."""


def _start_time(pid: int) -> str | None:
    """The start time of a process (Linux: field 22 of /proc/<pid>/stat), which tells a process
    from a later one that got its id; `None` where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _owner_record() -> str:
    pid = os.getpid()
    return f"{pid} {_start_time(pid) or '-'}\n"


def owner_alive(scratch: Path) -> bool:
    """True while the process that claimed `scratch` runs (see `claim`)."""
    try:
        pid_text, *rest = (scratch / OWNER_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        try:
            return time.time() - scratch.stat().st_mtime < _UNOWNED_STALE_SECONDS
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    started = rest[0] if rest else "-"
    now = _start_time(pid)
    return started == "-" or now is None or now == started


def _target(scratch: Path, to: str) -> Path:
    path = Path(to)
    return path if path.is_absolute() else scratch.parent / path


def _move(source: Path, target: Path) -> None:
    """Renames `source` over `target`; across file systems, copies it in atomically."""
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        with atomic_path(target) as temporary:
            shutil.copyfile(source, temporary)
        source.unlink()


def _apply(scratch: Path, moves: list[tuple[str, str]]) -> None:
    for name, to in moves:
        if (scratch / name).exists():  # else moved already, by the run that was interrupted
            _move(scratch / name, _target(scratch, to))


def commit(scratch: Path, moves: list[tuple[str, Path]]) -> None:
    """Moves the files written into `scratch` into place, in the order of `moves`, after the
    commit point (the plan written atomically into `scratch`).

    Args:
        scratch: the claimed scratch folder (see `claim`).
        moves: `(name in scratch, target path)`, in order: the file that says the others are in
            place (a model's metadata) last but for records kept elsewhere.
    """
    plan = [
        (name, target.name if target.parent == scratch.parent else str(target.absolute()))
        for name, target in moves
    ]
    with atomic_path(scratch / PLAN_FILE) as temporary:
        temporary.write_text(json.dumps({"moves": plan}))
    _apply(scratch, plan)


def settle(scratch: Path) -> str:
    """Completes or removes a scratch folder its owner left: "rolled forward" when it holds a
    plan (the moves are finished), else "rolled back" (it is removed; the files in place are
    the previous ones)."""
    try:
        plan = read_json(scratch / PLAN_FILE)
    except FileNotFoundError:
        plan = None
    except (OSError, ValueError):
        plan = None  # a plan cut short was never committed (it is written atomically)
    if isinstance(plan, dict) and isinstance(plan.get("moves"), list):
        logger.warning("Completing the interrupted write in '%s'", display_name(scratch))
        _apply(scratch, [(str(name), str(to)) for name, to in plan["moves"]])
        outcome = "rolled forward"
    else:
        outcome = "rolled back"
    shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def settle_stale(folder: str | Path, pattern: str) -> list[tuple[Path, str]]:
    """Settles every scratch folder in `folder` matching `pattern` whose owner is gone.

    Returns:
        `(folder, outcome)` for each one settled (see `settle`).
    """
    settled = []
    for scratch in sorted(Path(folder).glob(pattern)):
        if scratch.is_dir() and not scratch.is_symlink() and not owner_alive(scratch):
            settled.append((scratch, settle(scratch)))
    return settled


@contextlib.contextmanager
def claim(scratch: Path, what: str) -> Iterator[Path]:
    """Claims the scratch folder `scratch` for the block, settling one its owner left.

    The folder is made under a temporary name with the owner file in it, then renamed to
    `scratch`, so a folder of that name always names its owner. On leaving the block the folder
    is removed: after `commit`, or after a failure before it (nothing was changed). A failure
    during the moves leaves it for `settle` to complete.

    Args:
        scratch: the folder to claim (its parent must exist).
        what: what is being written, for the message when another process holds it.

    Raises:
        BusyError: if a running process holds the folder.
    """
    for _ in range(2):
        staging = Path(tempfile.mkdtemp(prefix=".claim-", dir=scratch.parent))
        try:
            (staging / OWNER_FILE).write_text(_owner_record())
            os.rename(staging, scratch)
            break
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if owner_alive(scratch):
            owner = (scratch / OWNER_FILE).read_text().split()[0] if scratch.is_dir() else "?"
            raise BusyError(
                f"Another process (id {owner}) is writing {what} in '{scratch.parent}' (its "
                f"scratch folder '{scratch.name}'). Received: {display_name(scratch)}. Wait for "
                "it to finish, then run this again."
            )
        settle(scratch)
    else:
        raise BusyError(
            f"Cannot claim '{display_name(scratch)}' for {what}: another process keeps taking "
            "it. Wait for the other writers to finish, then run this again."
        )
    try:
        yield scratch
    except BaseException:
        if not (scratch / PLAN_FILE).exists():  # not committed: nothing was changed
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)


def write_fault(error: BaseException, folder: str | Path, flag: str) -> CannotWriteError | None:
    """A write into `folder` that the environment refused, as the error the user sees, or `None`.

    Args:
        error: what was raised (an `OSError`, or a library's error quoting one, such as
            TensorFlow's when it saves a model).
        folder: where the command writes.
        flag: how to write elsewhere, e.g. "--output-dir".
    """
    number = getattr(error, "errno", None)
    if number in (errno.EACCES, errno.EPERM):  # a denied read of an input is not this
        filename = getattr(error, "filename", None)
        inside = filename is not None and Path(os.fsdecode(filename)).absolute().is_relative_to(
            Path(folder).absolute()
        )
        number = number if inside else None
    elif number not in WRITE_FAULTS:
        text = str(error)[:10_000]
        faults = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        number = next((code for code in faults if os.strerror(code) in text), None)
    if number is None:
        return None
    filename = getattr(error, "filename", None)
    where = f" ('{display_name(os.fsdecode(filename))}')" if filename else ""
    return CannotWriteError(
        f"Cannot write into '{display_name(folder)}': {os.strerror(number)}{where}. Nothing was "
        f"changed: the files there are the ones that were there before. Received: "
        f"folder='{display_name(folder)}'. To fix it, {WRITE_FAULTS[number]} ({flag})."
    )
