"""The one image loader shared by training, evaluation, prediction, LiteRT and the app.

It needs only numpy and Pillow (no TensorFlow; pydicom for DICOM), so the edge install can use it,
and training sees exactly the pixels a phone will: the same decode, the same orientation, the same
grayscale conversion, the same resize.

Every decoder keeps to one memory budget, `MAX_DECODED_BYTES`: frames x rows x columns x bytes
per pixel, read from the header, must fit before any pixel data is decoded (see
`decoded_bytes`). The conversions after decoding work in bounded blocks of rows, so the peak
memory stays within a small multiple of the budget whatever the file claims.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from pneumocnn.files import display_name, is_utf8_name

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", *DICOM_EXTENSIONS)
# The memory budget of one decoded image: frames x rows x columns x bytes per pixel. The largest
# chest film in the Kaggle data is about 2,900 x 2,700 px (8 Mpx, 8 MB in 8-bit gray); a 16-bit
# detector film of 4,300 x 3,500 px takes 30 MB. 128 MB leaves room for any real film, a
# 32-Mpx colour photograph of one, and refuses decompression bombs before they are decoded.
MAX_DECODED_BYTES = 128_000_000
# The key under which `read_grayscale` leaves notes on what it did (in the returned image's `info`).
NOTES_KEY = "pneumocnn_notes"
# Rows are converted in blocks of about this many pixels, so temporary arrays stay small.
_BLOCK_PIXELS = 1 << 20
# Large DICOM elements (overlays, private blobs) are read only if used: never, here.
_DICOM_DEFER_BYTES = 1 << 16
# A deflated DICOM data set is inflated whole before its header can be read; this much beyond
# the budget is allowed for the elements around the pixel data.
_DEFLATE_SLACK_BYTES = 16 << 20
# Where `read_grayscale` records the colourfulness of the image it converted (see
# `colourfulness`): the input guard refuses photographs, which the grayscale image hides.
COLOURFULNESS_KEY = "pneumocnn_colourfulness"


class ImageLoadError(ValueError):
    """Raised when a file cannot be read as an image; the message names the file."""


def is_image_file(path: str | Path) -> bool:
    """Returns True for a visible file with a JPEG, PNG or DICOM extension."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def decoded_bytes(frames: int, rows: int, columns: int, bytes_per_pixel: int) -> int:
    """The memory a decoded image takes: frames x rows x columns x bytes per pixel."""
    return frames * rows * columns * bytes_per_pixel


def _check_budget(
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


def _pillow_bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel: one byte for 8-bit single-band modes, two for 16-bit,
    four for everything else (multi-band modes are stored padded to four bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _blocks(rows: int, columns: int) -> Iterator[slice]:
    step = max(1, _BLOCK_PIXELS // max(1, columns))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _to_uint8(
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


def to_grayscale(image: Image.Image) -> Image.Image:
    """Converts any Pillow image to 8-bit grayscale (mode "L").

    RGB and CMYK go through Pillow's luminance conversion; transparency is flattened onto black
    (the background of a film); 16-bit and float images are stretched from their own minimum and
    maximum to 0-255, as a viewer's default window would show them.

    Args:
        image: a Pillow image of any mode.

    Returns:
        A mode "L" image of the same size.

    Raises:
        ValueError: if a float image holds NaN or infinite values.
    """
    if image.mode == "L":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("RGB").convert("L") if image.mode == "CMYK" else image.convert("L")


def colourfulness(image: Image.Image) -> float:
    """Hasler and Suesstrunk's colourfulness of a decoded image: 0 for gray, about 15 for
    "slightly", 33 for "moderately" and 60 or more for "highly" colourful.

    Computed on a copy reduced to at most about 256 px a side, so a large photo stays cheap.

    Args:
        image: a Pillow image of any mode (a gray mode gives 0).

    Returns:
        `std(rg, yb) + 0.3 * mean(rg, yb)`, with `rg = R - G` and `yb = (R + G) / 2 - B`.
    """
    if image.mode in ("1", "L", "LA", "I", "F") or image.mode.startswith("I;"):
        return 0.0
    rgb = image.convert("RGB")
    factor = max(1, max(rgb.size) // 256)
    pixels = np.asarray(rgb.reduce(factor) if factor > 1 else rgb, np.float64)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    rg, yb = red - green, 0.5 * (red + green) - blue
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


# ---------------------------------------------------------------------------------------------
# DICOM


def _is_dicom(handle: BinaryIO, name: str) -> bool:
    if Path(name).suffix.lower() in DICOM_EXTENSIONS:
        return True
    position = handle.tell()
    preamble = handle.read(132)
    handle.seek(position)
    return preamble[128:132] == b"DICM"


def _check_deflated_size(handle: BinaryIO, name: str, transfer_syntax: str) -> None:
    """Inflates a deflated data set in bounded steps, refusing it past the budget (pydicom
    inflates it whole, before any header can be checked)."""
    import pydicom.uid

    if transfer_syntax != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return
    limit = MAX_DECODED_BYTES + _DEFLATE_SLACK_BYTES
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    while chunk := handle.read(1 << 16):
        while chunk:
            total += len(inflater.decompress(chunk, 1 << 20))
            if total > limit:
                raise ImageLoadError(
                    f"DICOM file '{name}' is deflated and inflates to more than {limit:,} bytes, "
                    f"above the limit of {MAX_DECODED_BYTES:,} bytes of pixel data (a "
                    "decompression bomb, or a long multi-frame series). Keep one frame."
                )
            chunk = inflater.unconsumed_tail
        if inflater.eof:
            break


def _dicom_header(handle: BinaryIO, name: str):
    """Reads the data set before its pixel data, checking the budget; large values stay on disk."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    read_preamble(handle, force=False)
    meta = _read_file_meta_info(handle)
    transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
    _check_deflated_size(handle, name, transfer_syntax)
    handle.seek(0)
    header = pydicom.dcmread(handle, stop_before_pixels=True, defer_size=_DICOM_DEFER_BYTES)
    missing = [key for key in ("Rows", "Columns", "BitsAllocated") if header.get(key) is None]
    if missing:
        raise ImageLoadError(
            f"DICOM file '{name}' holds no image: its header lacks {missing}. "
            "Export the radiograph itself (a DX, CR or secondary-capture image)."
        )
    frames = int(header.get("NumberOfFrames") or 1)
    samples = int(header.get("SamplesPerPixel") or 1)
    bytes_per_sample = math.ceil(int(header.BitsAllocated) / 8)
    # The whole pixel data must fit: a deflated or encapsulated multi-frame file can make a
    # decoder hold every frame, although only the first is used.
    _check_budget(
        name,
        frames,
        int(header.Rows),
        int(header.Columns),
        samples * bytes_per_sample,
        f" ({samples} sample(s) of {int(header.BitsAllocated)} bits)",
    )
    return header, transfer_syntax, frames


def _require_decoder(transfer_syntax: str, name: str) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as error:
        raise ImageLoadError(
            f"DICOM file '{name}' uses the transfer syntax {UID(transfer_syntax).name} "
            f"({transfer_syntax}), which pydicom cannot decode. Export it uncompressed."
        ) from error
    if not decoder.is_available:
        raise ImageLoadError(
            f"DICOM file '{name}' is compressed as {UID(transfer_syntax).name} "
            f"({transfer_syntax}), and no decoder for it is installed; pydicom's plugins for it "
            f"need: {'; '.join(decoder.missing_dependencies)}. Install one, e.g. "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or export the file "
            "uncompressed."
        )


def _dicom_display_range(header, pixels: np.ndarray) -> tuple[float, float] | None:
    """The range a viewer maps to black and white after the modality and VOI steps.

    The VOI LUT's output range; else the window's; else, for data of 8 bits or fewer, every
    value those bits can hold (the values are display values already, as in an 8-bit PNG);
    else `None`: the image's own minimum and maximum (a viewer's automatic window).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if header.get("VOILUTSequence"):
        depth = int(header.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    if "WindowCenter" in header and "WindowWidth" in header:
        low, high = apply_voi_lut(np.array([-1e30, 1e30]), header)
        return float(low), float(high)
    bits = int(header.get("BitsStored") or header.BitsAllocated)
    if bits <= 8 and np.issubdtype(pixels.dtype, np.integer):
        signed = np.issubdtype(pixels.dtype, np.signedinteger)
        first = -(2 ** (bits - 1)) if signed else 0
        codes = np.arange(first, first + 2**bits, dtype=np.int64).astype(pixels.dtype)
        mapped = np.asarray(apply_modality_lut(codes, header), dtype=np.float64)
        return float(mapped.min()), float(mapped.max())
    return None


def _read_dicom(handle: BinaryIO, name: str) -> Image.Image:
    """Reads the first frame of a DICOM file as 8-bit grayscale, as a viewer shows it.

    Modality LUT (rescale) and VOI LUT or window applied with pydicom's own functions;
    MONOCHROME1 inverted; colour converted to luminance. Patient data is never read.
    """
    try:
        import pydicom
        import pydicom.uid
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
    except ImportError as error:
        raise ImageLoadError(
            f"'{name}' is a DICOM file, and reading DICOM needs pydicom. "
            'Install it with: pip install "pneumocnn[lite]" (or pip install pydicom).'
        ) from error
    header, transfer_syntax, frames = _dicom_header(handle, name)
    _require_decoder(transfer_syntax, name)
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith(
        "YBR"
    ):
        raise ImageLoadError(
            f"DICOM file '{name}' has the photometric interpretation '{photometric}'; a chest "
            "film is MONOCHROME1 or MONOCHROME2 (or RGB). Export it as a grayscale image."
        )
    handle.seek(0)
    # YBR data from native and RLE syntaxes is kept as stored (raw): its Y channel is the
    # luminance, and pydicom's own YBR-to-RGB conversion works in float64, 8 bytes a sample,
    # eight times the budget. JPEG-family decoders return RGB themselves.
    encapsulated = pydicom.uid.UID(transfer_syntax).is_compressed
    raw = not encapsulated or transfer_syntax == pydicom.uid.RLELossless
    if transfer_syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        # pydicom reads a deflated file's pixels only from the inflated data set, which
        # `_dicom_header` has checked fits the budget.
        pixels = pixel_array(pydicom.dcmread(handle), index=0, raw=raw)
    else:
        pixels = pixel_array(handle, index=0, raw=raw)  # reads and decodes the first frame only
    notes = [f"DICOM {photometric}, {int(header.BitsAllocated)}-bit"]
    if frames > 1:
        notes.append(f"first of {frames} frames used")
        logger.warning("'%s' has %d frames; only the first is used", name, frames)
    if pixels.ndim == 3 and raw and photometric.startswith("YBR"):
        luminance = pixels[..., 0]  # Y: the luminance, as stored (colour is never windowed)
        if luminance.dtype != np.uint8:
            luminance = _to_uint8(luminance)
        gray = Image.fromarray(np.ascontiguousarray(luminance), mode="L")
    elif pixels.ndim == 3:  # RGB: Pillow's luminance, as for a colour PNG
        if pixels.dtype != np.uint8:
            pixels = _to_uint8(pixels.reshape(pixels.shape[0], -1)).reshape(pixels.shape)
        gray = Image.fromarray(np.ascontiguousarray(pixels[..., :3]), mode="RGB").convert("L")
    elif pixels.ndim != 2:
        raise ImageLoadError(f"DICOM file '{name}' decoded to an array of shape {pixels.shape}.")
    else:

        def to_display(block: np.ndarray) -> np.ndarray:
            return apply_voi_lut(apply_modality_lut(block, header), header)

        display_range = _dicom_display_range(header, pixels)
        if (
            display_range is not None
            and "WindowCenter" not in header
            and not header.get("VOILUTSequence")
        ):
            notes.append("no window in the file: 8-bit values shown as they are")
        elif display_range is None:
            notes.append("no window in the file: stretched from its darkest to brightest pixel")
        else:
            notes.append("the file's VOI LUT or window applied")
        gray = Image.fromarray(
            _to_uint8(pixels, to_display, display_range, invert=photometric == "MONOCHROME1"),
            mode="L",
        )
    gray.info[NOTES_KEY] = notes
    return gray


# ---------------------------------------------------------------------------------------------
# The loader


def _read_pillow(handle: BinaryIO, name: str) -> Image.Image:
    with Image.open(handle) as image:
        width, height = image.size
        _check_budget(name, 1, height, width, _pillow_bytes_per_pixel(image.mode))
        image.load()
        notes = []
        # Phones and many viewers store a film as shot and say in EXIF how to turn it upright.
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            upright = ImageOps.exif_transpose(image)
            notes.append(f"turned upright (EXIF orientation {orientation})")
        else:
            upright = image
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            notes.append(f"{image.mode} image: stretched from its darkest to brightest pixel")
        colour = colourfulness(upright)
        gray = to_grayscale(upright)
        if gray is image:  # still tied to the file, which is about to close
            gray = gray.copy()
    gray.info[NOTES_KEY] = notes
    gray.info[COLOURFULNESS_KEY] = colour
    return gray


def _open_regular_file(path: str | Path, name: str) -> BinaryIO:
    """Opens a path for reading, refusing anything but a regular file without blocking on it.

    O_NONBLOCK makes opening a FIFO return at once (a plain open waits for a writer forever);
    fstat on the open descriptor then tells what it is, with no race between check and use.
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
            raise ImageLoadError(
                f"'{name}' is {kind}, not a regular file, so it is not read. Pass an image file."
            )
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_grayscale(source: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Decodes an image file (JPEG, PNG, TIFF, or DICOM with pydicom) as a full-size, upright,
    8-bit grayscale image.

    The EXIF orientation is applied. The header is checked against `MAX_DECODED_BYTES` before
    any pixel data is decoded. DICOM: the first frame, through the modality and VOI LUT (or
    window), MONOCHROME1 inverted. What was done is listed in `image.info[NOTES_KEY]`.

    Args:
        source: a path, or a binary file object (e.g. an upload).
        name: the name used in error messages. Defaults to `None`: the path, or the file
            object's `name`. It is escaped for printing (see `pneumocnn.files.display_name`).

    Returns:
        A mode "L" Pillow image at the file's own size (turned upright);
        `image.info[COLOURFULNESS_KEY]` holds the colourfulness of the decoded image before the
        conversion (see `colourfulness`).

    Raises:
        ImageLoadError: if the file is missing, not a regular file, empty, not an image,
            truncated, compressed with a codec that is not installed, or over the memory
            budget (checked from the header, before decoding).
    """
    if name is None:  # a path names itself; a file object may carry a name (Path.name would not do)
        name = str(source) if isinstance(source, str | Path) else getattr(source, "name", "upload")
    name = display_name(name)
    try:
        if isinstance(source, str | Path):
            with _open_regular_file(source, name) as handle:
                return _read(handle, name)
        return _read(source, name)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own, larger limit, at open
        raise ImageLoadError(
            f"Image '{name}' is above the limit of {MAX_DECODED_BYTES:,} decoded bytes "
            f"({error}). Resize it before use."
        ) from error
    except FileNotFoundError as error:
        raise ImageLoadError(f"Image file not found: '{name}'. Check the path.") from error
    # Pillow and pydicom signal a bad file with many types (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, ...); all mean "this file is not a usable image".
    except Exception as error:  # noqa: BLE001
        raise ImageLoadError(
            f"Cannot read '{name}' as an image ({type(error).__name__}: "
            f"{display_name(str(error))[:300]}). Expected a JPEG, PNG or DICOM chest X-ray; "
            "replace or remove the file."
        ) from error


def _read(handle: BinaryIO, name: str) -> Image.Image:
    if _is_dicom(handle, name):
        return _read_dicom(handle, name)
    return _read_pillow(handle, name)


def load_image(
    source: str | Path | BinaryIO, image_size: int, name: str | None = None
) -> np.ndarray:
    """Reads an image file as a `(image_size, image_size, 1)` uint8 array of raw 0-255 pixels.

    The image is decoded (see `read_grayscale`), turned upright, converted to grayscale, and
    resized to a square with bilinear filtering (no crop, no padding). No normalisation: the
    model rescales inside itself.

    Args:
        source: a path, or a binary file object (e.g. an upload).
        image_size: side of the square output.
        name: the name used in error messages. Defaults to `None` (see `read_grayscale`).

    Returns:
        A uint8 array of shape `(image_size, image_size, 1)`.

    Raises:
        ImageLoadError: if the file cannot be used (see `read_grayscale`).
    """
    return to_model_input(read_grayscale(source, name), image_size)


def to_model_input(gray: Image.Image, image_size: int) -> np.ndarray:
    """Resizes a grayscale image to the model's square input of raw 0-255 pixels.

    The one place the resize happens, so every consumer feeds the model the same pixels.

    Args:
        gray: a mode "L" image (see `read_grayscale`).
        image_size: side of the square output.

    Returns:
        A uint8 array of shape `(image_size, image_size, 1)`.
    """
    resized = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)[:, :, np.newaxis]


def load_images(
    paths: Sequence[str | Path], image_size: int, workers: int | None = None
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Loads many images in parallel, skipping unreadable ones with a warning.

    Pillow releases the GIL while decoding and resizing, so threads use every core. Progress is
    logged every tenth of the way (at most every 100 images).

    Args:
        paths: image files.
        image_size: side of the square output.
        workers: threads to use. Defaults to `None`, the number of CPU cores.

    Returns:
        A tuple `(images, kept, skipped)`: a uint8 array of shape
        `(len(kept), image_size, image_size, 1)`, the indices into `paths` of the images in it,
        and `(path, reason)` for each file that could not be read (the path escaped for printing,
        see `pneumocnn.files.display_name`).
    """
    total = len(paths)
    workers = workers or os.cpu_count() or 1
    images: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []

    def read(index: int) -> np.ndarray | ImageLoadError:
        try:
            return load_image(paths[index], image_size)
        except ImageLoadError as error:
            return error

    step = max(100, total // 10)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, result in enumerate(pool.map(read, range(total))):
            if isinstance(result, ImageLoadError):
                logger.warning("Skipping unreadable image: %s", result)
                skipped.append((display_name(paths[index]), str(result)))
            else:
                images.append(result)
                kept.append(index)
            if (index + 1) % step == 0 or index + 1 == total:
                logger.info("Loaded %d/%d images (%d skipped)", index + 1, total, len(skipped))
    array = np.stack(images) if images else np.zeros((0, image_size, image_size, 1), dtype=np.uint8)
    return array, kept, skipped


# ---------------------------------------------------------------------------------------------
# Folder walks


NOT_AN_IMAGE = "not a JPEG, PNG or DICOM file name"
_LINK_TO_FOLDER = "link to a folder (not followed)"
_NOT_INPUTS = frozenset({"hidden", NOT_AN_IMAGE, _LINK_TO_FOLDER, "ignored folder"})


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What a folder walk found.

    Args:
        files: the image files, sorted by path (`str`).
        skipped: `(name, reason)` for every entry left out and why, the name escaped for
            printing (see `pneumocnn.files.display_name`).
    """

    files: list[str]
    skipped: list[tuple[str, str]]

    @property
    def refused(self) -> list[tuple[str, str]]:
        """The skipped entries that are inputs gone wrong (unreadable folders, dangling links,
        link loops, FIFOs and devices, names that are not UTF-8), as opposed to entries that are
        simply not images (hidden or other files, links to folders, ignored folders)."""
        return [(name, reason) for name, reason in self.skipped if reason not in _NOT_INPUTS]

    def log_skipped(self, log: logging.Logger = logger) -> None:
        """Logs one warning per reason: how many entries, and the first few names."""
        by_reason: dict[str, list[str]] = {}
        for entry, reason in self.skipped:
            by_reason.setdefault(reason, []).append(entry)
        for reason, entries in by_reason.items():
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            log.warning("Skipped %d entries: %s (%s)", len(entries), reason, shown)


def scan_folder(folder: str | Path, ignored_dirs: frozenset[str] = frozenset()) -> FolderScan:
    """Lists the image files under `folder`, recursively, and every entry left out and why.

    Never opens a file and never blocks: it only reads folder listings and `lstat`/`stat`
    results. Links to files are followed when they lead to a regular file; links to folders are
    not followed (no loops). Left out, each with its reason: hidden entries, names that are not
    UTF-8 (they cannot be written to a CSV or JSON report), dangling links and link loops,
    links to folders, FIFOs, sockets and devices, unreadable folders, and files whose extension
    is not an image's.

    Args:
        folder: the folder to walk.
        ignored_dirs: folder names to leave out (e.g. `__MACOSX`), reported as "ignored
            folder". Defaults to none.

    Returns:
        A `FolderScan`.
    """
    files: list[str] = []
    skipped: list[tuple[str, str]] = []

    def skip(path: str, reason: str) -> None:
        skipped.append((display_name(path), reason))

    pending = [os.fspath(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listing = list(entries)
        except OSError as error:
            skip(current, f"unreadable folder ({error.strerror or type(error).__name__})")
            continue
        for entry in listing:
            path = entry.path
            if entry.name.startswith("."):
                skip(path, "hidden")
                continue
            if not is_utf8_name(path):
                skip(path, "name is not valid UTF-8; rename the file")
                continue
            is_link = entry.is_symlink()
            try:
                target = entry.stat(follow_symlinks=True)
            except OSError as error:
                if not is_link:
                    reason = "unreadable entry"
                else:
                    reason = "link loop" if error.errno == errno.ELOOP else "dangling link"
                skip(path, f"{reason} ({error.strerror or type(error).__name__})")
                continue
            if stat.S_ISDIR(target.st_mode):
                if is_link:
                    skip(path, _LINK_TO_FOLDER)
                elif entry.name in ignored_dirs:
                    skip(path, "ignored folder")
                else:
                    pending.append(path)
            elif not stat.S_ISREG(target.st_mode):
                skip(path, "not a regular file (a FIFO, socket or device)")
            elif not is_image_file(path):
                skip(path, NOT_AN_IMAGE)
            else:
                files.append(path)
    return FolderScan(sorted(files), sorted(skipped))
