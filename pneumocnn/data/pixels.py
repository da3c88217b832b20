"""The memory budget every decoder keeps, and the pixel conversions they share.

One budget (`pneumocnn.core.budget`), `MAX_DECODED_BYTES`: frames x rows x columns x bytes per
pixel, read from the header, must fit before any pixel data is decoded (see `decoded_bytes`),
and `MAX_METADATA_BYTES` for what comes with the pixels. The conversions after decoding work in
bounded blocks of rows (`to_uint8`), so the peak memory stays within a small multiple of the
budget whatever the file claims. Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

# Re-exported: the decoders (and their tests) import the budget from here.
from pneumocnn.core.budget import MAX_DECODED_BYTES, MAX_METADATA_BYTES  # noqa: F401

# The key under which `read_grayscale` leaves notes on what it did (in the returned image's `info`).
NOTES_KEY = "pneumocnn_notes"
# Where `read_grayscale` records how many frames (or pages) the file holds; the first is read.
FRAMES_KEY = "pneumocnn_frames"
# Rows are converted in blocks of about this many pixels, so temporary arrays stay small.
_BLOCK_PIXELS = 1 << 20
# Where `read_grayscale` records the colourfulness of the image it converted (see
# `colourfulness`): the input guard refuses photographs, which the grayscale image hides.
COLOURFULNESS_KEY = "pneumocnn_colourfulness"


class ImageLoadError(ValueError):
    """Raised when a file cannot be read as an image; the message names the file."""


def frames_note(kind: str, frames: int) -> str:
    """What a reader says of a file of several frames: which one it read."""
    return f"frame 1 of {frames} read (the {kind} file holds {frames} frames or pages)"


def decoded_bytes(frames: int, rows: int, columns: int, bytes_per_pixel: int) -> int:
    """The memory a decoded image takes: frames x rows x columns x bytes per pixel."""
    return frames * rows * columns * bytes_per_pixel


def check_budget(
    name: str, frames: int, rows: int, columns: int, bytes_per_pixel: int, what: str = ""
) -> None:
    if min(frames, rows, columns, bytes_per_pixel) < 1:
        raise ImageLoadError(
            f"Image '{name}' has a header that claims {frames} frame(s) of {columns}x{rows} px "
            f"at {bytes_per_pixel} bytes per pixel{what}, which is not an image. "
            "Replace or remove the file."
        )
    size = decoded_bytes(frames, rows, columns, bytes_per_pixel)
    if size > MAX_DECODED_BYTES:
        frame_text = f"{frames:,} frames of " if frames > 1 else ""
        raise ImageLoadError(
            f"Image '{name}' is {frame_text}{columns}x{rows} px at {bytes_per_pixel} bytes per "
            f"pixel{what}: {size:,} bytes decoded, above the limit of {MAX_DECODED_BYTES:,} "
            "(a decompression bomb, or not an X-ray). Resize it, or keep one frame, before use."
        )


def pillow_bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel: one byte for 8-bit single-band modes, two for 16-bit,
    four for everything else (multi-band modes are stored padded to four bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _blocks(rows: int, columns: int) -> Iterator[slice]:
    step = max(1, _BLOCK_PIXELS // max(1, columns))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def to_uint8(
    pixels: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] = lambda block: block,
    display_range: tuple[float, float] | None = None,
    invert: bool = False,
) -> np.ndarray:
    """Maps a 2-D array to 0-255, block by block, as a viewer would show it.

    `transform` (elementwise) is applied first; then `display_range` (`low`, `high`), or the
    transformed image's own minimum and maximum when it is `None`, is stretched linearly to
    0-255, and `invert` turns it over (MONOCHROME1). Temporary arrays hold one block of rows.
    """
    rows, columns = pixels.shape
    if display_range is None:
        low, high = math.inf, -math.inf
        for rows_slice in _blocks(rows, columns):
            block = np.asarray(transform(pixels[rows_slice]), dtype=np.float64)
            if not np.all(np.isfinite(block)):
                raise ValueError("the image holds NaN or infinite pixel values")
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    else:
        low, high = (float(value) for value in display_range)
    scale = 255.0 / (high - low) if high > low else 0.0
    output = np.empty((rows, columns), dtype=np.uint8)
    for rows_slice in _blocks(rows, columns):
        block = (np.asarray(transform(pixels[rows_slice]), dtype=np.float64) - low) * scale
        if invert:
            block = 255.0 - block
        output[rows_slice] = np.clip(np.rint(block), 0, 255)
    return output
