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
import json
import os
import string
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pneumocnn.core.budget import MAX_METADATA_BYTES

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
    """A file name safe to print in a message or a log, on a terminal.

    Bytes that are not UTF-8 (which Python keeps as lone surrogates in `str`) become `\\xNN`;
    newlines, tabs, terminal escape codes and other unprintable characters become `\\n`, `\\x1b`
    and so on, so a hostile name can neither forge lines of output nor drive the terminal.
    Ordinary names come back unchanged. Two names can print alike (`a<newline>b` and a file
    named `a\\nb`): where a name must identify its file (a report's path column), use
    `quoted_name`.

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


# What `quoted_name` writes in place of a character the shell's $'...' quoting spells out.
_SHELL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_SHELL_UNESCAPES = {"\\": "\\", "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_QUOTE_OPEN = "$'"


def quoted_name(path: str | Path | bytes) -> str:
    """A path as the output of a command shows it: one spelling per file, and back again.

    A name of printable characters is shown as it is. Any other (a newline, a terminal escape
    code, a byte that is not UTF-8, an invisible character), or one that starts with `$'`, is
    shown in the shell's ANSI-C quoting, `$'a\\nb.jpeg'`, which bash and zsh read as the very
    name, and `unquote_name` turns back into it. Unlike `display_name` (for messages), two files
    never print alike: `a<newline>b.jpeg` is `$'a\\nb.jpeg'`, a file named `a\\nb.jpeg` is
    `a\\nb.jpeg`.

    Args:
        path: a path or name, as `str`, `Path` or `bytes`.

    Returns:
        The name to print.

    Example:

    >>> quoted_name("a\\nb.jpeg"), quoted_name("plain.jpeg")
    ("$'a\\\\nb.jpeg'", 'plain.jpeg')
    """
    text = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    if text.isprintable() and not text.startswith(_QUOTE_OPEN):
        return text
    parts = []
    for char in text:
        if char in _SHELL_ESCAPES:
            parts.append(_SHELL_ESCAPES[char])
        elif "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8, kept by Python as is
            parts.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            parts.append(char)
        elif ord(char) < 0x80:
            parts.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(f"\\U{ord(char):08x}")
    return _QUOTE_OPEN + "".join(parts) + "'"


def unquote_name(shown: str) -> str:
    """The path `quoted_name` printed as `shown` (as `str`; `os.fsencode` gives its bytes).

    Raises:
        ValueError: if `shown` starts with `$'` but is not a quoting `quoted_name` writes.
    """
    if not shown.startswith(_QUOTE_OPEN):
        return shown
    if len(shown) < 3 or not shown.endswith("'"):
        raise ValueError(f"Not a quoted name: it does not end with a quote. Received: {shown!r}.")
    body, raw, index = shown[2:-1], bytearray(), 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            raw += char.encode("utf-8", "surrogateescape")
            index += 1
            continue
        kind = body[index + 1 : index + 2]
        if kind in _SHELL_UNESCAPES:
            raw += _SHELL_UNESCAPES[kind].encode()
            index += 2
            continue
        digits = {"x": 2, "u": 4, "U": 8}.get(kind)
        code = body[index + 2 : index + 2 + digits] if digits else ""
        if not digits or len(code) != digits or not all(c in string.hexdigits for c in code):
            raise ValueError(f"Not a quoted name: bad escape at {index}. Received: {shown!r}.")
        value = int(code, 16)
        raw += bytes([value]) if kind == "x" else chr(value).encode("utf-8", "surrogatepass")
        index += 2 + digits
    return os.fsdecode(bytes(raw))


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula: text starting with `=`, `+`, `-`, `@`,
    a tab or a carriage return gets a leading `'` (OWASP's advice); other values pass as they
    are. For a path, use `csv_path` instead, which keeps it a name of the file."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_path(path: str | Path | bytes) -> str:
    """A path for a CSV cell: `quoted_name`, and in the shell's quoting also when it would
    start a formula (`=cmd|calc.jpeg` is `$'=cmd|calc.jpeg'`), so it still names the file and
    `unquote_name` still reads it back."""
    shown = quoted_name(path)
    if shown.startswith(FORMULA_STARTS):
        return _QUOTE_OPEN + shown.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return shown


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


class UnreadableJsonError(ValueError):
    """A JSON file that cannot be read: the message says why, without the path (the caller
    names the file and its fix)."""


def read_json(path: str | Path, max_bytes: int = MAX_METADATA_BYTES) -> Any:
    """Reads a JSON file within a memory budget, whatever it holds.

    Args:
        path: the file.
        max_bytes: the largest file read. Defaults to `MAX_METADATA_BYTES` (16 MB).

    Returns:
        The parsed value.

    Raises:
        OSError: if the file cannot be opened or read.
        UnreadableJsonError: if it is larger than `max_bytes`, not UTF-8, not JSON, or nested
            deeper than the parser goes.
    """
    with open(path, "rb") as handle:
        content = handle.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise UnreadableJsonError(f"it is larger than {max_bytes:,} bytes")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableJsonError(
            f"it is not UTF-8 text: byte 0x{content[error.start]:02x} at position {error.start}"
        ) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableJsonError(f"it is not valid JSON: {error}") from error
    except RecursionError as error:
        raise UnreadableJsonError("it is nested deeper than a JSON parser goes") from error
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise UnreadableJsonError(f"it is not usable JSON: {str(error)[:200]}") from error
