"""What an image file's container says, read before any decoder runs: its frames, and what it
holds besides pixels.

Pillow reads a PNG's text and unknown chunks, a JPEG's APP segments and a TIFF's tags whole into
memory while it opens the file, before any check of ours can run: a 600 MB `tEXt` chunk took
1.28 GB. `check_container` walks the chunks, segments or tags with seeks, reading only their
headers, and refuses a file whose non-pixel data passes `MAX_METADATA_BYTES`. It also counts the
frames (an APNG's, a TIFF's pages). `codestream_size` reads the size a JPEG or JPEG 2000
codestream will decode to (the one inside a DICOM file), so a frame that lies about its size is
refused before it is decoded. Standard library only.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pneumocnn.core.budget import MAX_METADATA_BYTES
from pneumocnn.data.pixels import ImageLoadError

# Chunks, segments or IFD entries walked at most: a real film has a few thousand (a PNG's IDAT
# chunks) at the very most; a file of millions of empty ones would cost Pillow minutes.
MAX_PARTS = 1_000_000
# TIFF pages counted at most: the first is read, the count is only reported.
MAX_PAGES = 1000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PIXEL_CHUNKS = (b"IDAT", b"fdAT")
# TIFF field types by size in bytes (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8, IFD8).
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip
# Tags that point at a sub-IFD Pillow reads (EXIF, GPS, interoperability).
_TIFF_SUB_IFDS = (34665, 34853, 40965)


def _too_much(name: str, what: str, size: int) -> ImageLoadError:
    return ImageLoadError(
        f"Image '{name}' holds {what} of {size:,} bytes besides its pixels, above the limit of "
        f"{MAX_METADATA_BYTES:,} (what a reader would hold in memory before decoding). Save the "
        "film again without its metadata (e.g. as a plain PNG or JPEG)."
    )


def check_container(handle: BinaryIO, name: str) -> int:
    """Walks a PNG's chunks, a JPEG's segments or a TIFF's IFDs without decoding anything.

    Args:
        handle: the file, at its start (it is left there).
        name: the name for messages.

    Returns:
        The frames the file holds (an APNG's, a TIFF's pages, counted up to `MAX_PAGES`); 1 for
        a single image, or a format this module does not walk.

    Raises:
        ImageLoadError: if the data besides the pixels passes `MAX_METADATA_BYTES`, or the file
            has more than `MAX_PARTS` chunks or segments.
    """
    start = handle.tell()
    head = handle.read(8)
    handle.seek(start)
    try:
        if head.startswith(_PNG_SIGNATURE):
            return _png_frames(handle, name)
        if head.startswith(b"\xff\xd8"):
            _check_jpeg(handle, name)
        elif head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            return _tiff_pages(handle, name)
        return 1
    finally:
        handle.seek(start)


def _png_frames(handle: BinaryIO, name: str) -> int:
    handle.seek(len(_PNG_SIGNATURE), 1)
    other, frames = 0, 1
    for _ in range(MAX_PARTS):
        header = handle.read(8)
        if len(header) < 8:
            return frames  # truncated: Pillow says so
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            return frames
        if kind == b"acTL" and length >= 8:
            frames = max(1, struct.unpack(">I", handle.read(4))[0])
            handle.seek(-4, 1)
        if kind not in _PNG_PIXEL_CHUNKS:
            other += length
            if length > MAX_METADATA_BYTES:
                raise _too_much(name, f"a {kind.decode('latin-1')!r} chunk", length)
            if other > MAX_METADATA_BYTES:
                raise _too_much(name, "chunks", other)
        handle.seek(length + 4, 1)  # the data and its CRC
    raise ImageLoadError(
        f"Image '{name}' is a PNG of more than {MAX_PARTS:,} chunks, which no film needs. Save "
        "it again as a plain PNG."
    )


def _check_jpeg(handle: BinaryIO, name: str) -> None:
    """Sums the APP and comment segments before the scan (Pillow keeps every one of them)."""
    handle.seek(2, 1)
    other = 0
    for _ in range(MAX_PARTS):
        marker = handle.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return  # not where a marker should be: Pillow's decoder says what is wrong
        code = marker[1]
        if code == 0xFF:  # fill byte
            handle.seek(-1, 1)
            continue
        if code == 0xD8 or 0xD0 <= code <= 0xD7 or code == 0x01:  # markers without a length
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan
            return
        size = handle.read(2)
        if len(size) < 2:
            return
        (length,) = struct.unpack(">H", size)
        if length < 2:  # a length that counts not even itself: Pillow says what is wrong
            return
        if 0xE0 <= code <= 0xEF or code == 0xFE:
            other += length
            if other > MAX_METADATA_BYTES:
                raise _too_much(name, "APP and comment segments", other)
        handle.seek(length - 2, 1)
    raise ImageLoadError(
        f"Image '{name}' is a JPEG of more than {MAX_PARTS:,} segments before its pixels, which "
        "no film needs. Save it again as a plain JPEG."
    )


def _tiff_pages(handle: BinaryIO, name: str) -> int:
    start = handle.tell()
    head = handle.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(order + "H", head[2:4])[0] == 43
    if big:
        offset = struct.unpack(order + "Q", head[8:16])[0] if len(head) >= 16 else 0
    else:
        offset = struct.unpack(order + "I", head[4:8])[0]
    seen: set[int] = set()
    pages = 0
    while offset and offset not in seen and pages < MAX_PAGES:
        seen.add(offset)
        handle.seek(start + offset)
        next_offset, sub_ifds = _tiff_ifd(handle, order, big, name, start)
        if next_offset is None:
            break  # cut short: Pillow says so, if it is the first
        for sub in sub_ifds if pages == 0 else ():
            if sub not in seen:
                seen.add(sub)
                handle.seek(start + sub)
                _tiff_ifd(handle, order, big, name, start)
        pages += 1
        offset = next_offset
    return max(pages, 1)


def _tiff_ifd(
    handle: BinaryIO, order: str, big: bool, name: str, start: int
) -> tuple[int | None, list[int]]:
    """Checks one IFD's out-of-line tag data; returns the next IFD's offset and the sub-IFDs."""
    count_format, entry_size, inline = (order + "Q", 20, 8) if big else (order + "H", 12, 4)
    raw = handle.read(struct.calcsize(count_format))
    if len(raw) < struct.calcsize(count_format):
        return None, []
    (entries,) = struct.unpack(count_format, raw)
    if entries > MAX_PARTS:
        raise ImageLoadError(
            f"Image '{name}' is a TIFF whose directory claims {entries:,} tags, which no film "
            "needs. Save it again as a plain TIFF, PNG or JPEG."
        )
    table = handle.read(entries * entry_size)
    if len(table) < entries * entry_size:
        return None, []
    other, sub_ifds = 0, []
    entry_format = order + ("HHQQ" if big else "HHII")
    for index in range(entries):
        tag, kind, count, value = struct.unpack_from(entry_format, table, index * entry_size)
        size = _TIFF_TYPE_BYTES.get(kind, 1) * count
        if size > inline:
            other += size
            if other > MAX_METADATA_BYTES:
                raise _too_much(name, "TIFF tags", other)
        if tag in _TIFF_SUB_IFDS and value:
            sub_ifds.append(value)
    raw = handle.read(8 if big else 4)
    if len(raw) < (8 if big else 4):
        return 0, sub_ifds
    return struct.unpack(order + ("Q" if big else "I"), raw)[0], sub_ifds


# ---------------------------------------------------------------------------------------------
# Codestreams: the size a JPEG or JPEG 2000 stream decodes to


def codestream_size(data: bytes) -> tuple[int, int, int, int] | None:
    """The image a JPEG (baseline, extended, lossless, JPEG-LS) or JPEG 2000 codestream (raw or
    in a JP2 file) will decode to, from its header.

    Args:
        data: the start of the codestream (its header: the first few kilobytes suffice unless
            large APP segments come first).

    Returns:
        `(rows, columns, components, bits)`, or `None` when `data` holds no such header.
    """
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"\xff\x4f\xff\x51"):  # SOC, then SIZ
        return _j2k_size(data, 2)
    if data[4:12] == b"jP  \r\n\x87\n":
        return _jp2_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int, int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        code = data[at + 1]
        if code == 0xFF:
            at += 1
            continue
        if code == 0xD8 or 0xD0 <= code <= 0xD7 or code == 0x01:
            at += 2
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        # SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC); SOF55 (F7) is JPEG-LS's.
        if (0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC)) or code == 0xF7:
            if at + 10 > len(data):
                return None
            bits, rows, columns, components = struct.unpack_from(">BHHB", data, at + 4)
            return rows, columns, components, bits
        if code in (0xD9, 0xDA):
            return None
        at += 2 + length
    return None


def _j2k_size(data: bytes, at: int) -> tuple[int, int, int, int] | None:
    """From the SIZ segment at `at` (its marker): the reference grid less its offsets."""
    if at + 40 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, at + 6)
    components = struct.unpack_from(">H", data, at + 38)[0]
    bits = (data[at + 40] & 0x7F) + 1 if at + 40 < len(data) else 8
    return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components, bits


def _jp2_size(data: bytes) -> tuple[int, int, int, int] | None:
    """From the `ihdr` box of a JP2 file's `jp2h` header box, or its codestream's SIZ."""
    at = 0
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if length == 1 and at + 16 <= len(data):
            length, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        if kind == b"jp2h":  # a superbox: look inside
            at += header
            continue
        if kind == b"ihdr" and at + 22 <= len(data):
            rows, columns, components, depth = struct.unpack_from(">IIHB", data, at + 8)
            return rows, columns, components, (depth & 0x7F) + 1
        if kind == b"jp2c":
            inner = at + header
            if data[inner : inner + 4] == b"\xff\x4f\xff\x51":
                return _j2k_size(data, inner + 2)
            return None
        if length < header:
            return None
        at += length
    return None
