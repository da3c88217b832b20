"""Writing files so that a kill never leaves half of one, and naming files safely in messages.

Every file pneumocnn writes goes through `atomic_path` (or `write_text_atomic`): the content is
written under a temporary name in the same folder, flushed to disk, and renamed over the target
with `os.replace`, which is atomic on POSIX and Windows. A process killed at any moment leaves
either the previous file or the new one, never a 0-byte or truncated file.

No TensorFlow here: the edge runtime uses it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

# A hidden prefix: a folder walk (which skips hidden files) never mistakes a temporary file for
# an input, and `.partial` says what it is to a person who finds one after a power cut.
_TEMP_PREFIX = ".partial-"
_NEW_FILE_MODE = 0o644
# The longest file name most file systems take (ext4, APFS, NTFS), in bytes.
MAX_NAME_BYTES = 255


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is renamed to `path`.

    The temporary file keeps `path`'s suffix, so writers that choose a format from the extension
    (Keras's `.keras`, Matplotlib, pandas) still do. If the block raises, the temporary file is
    removed and `path` is left as it was.

    Args:
        path: the file to write.

    Yields:
        The temporary path to write to.

    Example:

    >>> with atomic_path("runs/x/best.keras") as temporary:  # doctest: +SKIP
    ...     model.save(temporary)
    """
    path = Path(path)
    # The stem, cut so the temporary name stays within MAX_NAME_BYTES even for a long target.
    stem = os.fsencode(path.stem)[:100].decode("utf-8", "ignore")
    handle, name = tempfile.mkstemp(
        prefix=_TEMP_PREFIX + stem + "-", suffix=path.suffix, dir=path.parent
    )
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:  # the bytes reach the disk before the rename
            os.fsync(written.fileno())
        # mkstemp makes the file private (0600); keep the old file's mode, else the usual 0644.
        mode = path.stat().st_mode & 0o777 if path.exists() else _NEW_FILE_MODE
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename (see `atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def display_name(path: str | Path | bytes) -> str:
    """A file name safe to print on a terminal, in a log, a CSV or JSON.

    Bytes that are not UTF-8 (which Python keeps as lone surrogates in `str`) become `\\xNN`;
    newlines, tabs, terminal escape codes and other unprintable characters become `\\n`, `\\x1b`
    and so on, so a hostile name can neither forge lines of output nor drive the terminal.
    Ordinary names come back unchanged.

    Args:
        path: a path or name, as `str`, `Path` or `bytes`.

    Returns:
        The escaped name.

    Example:

    >>> display_name("a\\nb\\x1b[31m.jpeg")
    'a\\\\nb\\\\x1b[31m.jpeg'
    """
    raw = path if isinstance(path, bytes) else os.fsencode(os.fspath(path))
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def is_utf8_name(path: str | Path) -> bool:
    """True when `path` can be written to a UTF-8 file (CSV, JSON) as it is.

    On Linux a file name is any bytes; Python keeps bytes that are not UTF-8 as lone surrogates,
    which no UTF-8 writer accepts.
    """
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def output_names(paths: Sequence[str | Path], suffix: str) -> list[str]:
    """One output file name per input, `<stem><suffix>`, unique among `paths` and short enough.

    When inputs share a stem (`a/x.jpeg` and `b/x.jpeg`), or a name would pass
    `MAX_NAME_BYTES`, the stem (cut to fit) gets the first 8 hex digits of the SHA-256 of the
    input's absolute path: `x-1a2b3c4d_gradcam.png`. Stems are escaped (see `display_name`), so
    no name holds a newline, an escape code or a byte that is not UTF-8.

    Args:
        paths: the inputs.
        suffix: what follows the stem, e.g. "_gradcam.png".

    Returns:
        The names, in the order of `paths`.
    """
    stems = [display_name(Path(path).stem) for path in paths]
    counts = Counter(stems)
    names = []
    for path, stem in zip(paths, stems, strict=True):
        name = stem + suffix
        if counts[stem] > 1 or len(name.encode("utf-8")) > MAX_NAME_BYTES:
            digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:8]
            room = MAX_NAME_BYTES - len(f"-{digest}{suffix}".encode())
            cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
            name = f"{cut}-{digest}{suffix}"
        names.append(name)
    return names
