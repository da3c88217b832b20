"""The one image loader shared by training, evaluation, prediction, LiteRT and the app.

It needs only numpy and Pillow (no TensorFlow; pydicom for DICOM, see `pneumocnn.data.dicom`),
so the edge install can use it, and training sees exactly the pixels a phone will: the same
decode, the same orientation, the same grayscale conversion, the same resize. Every decoder keeps
to the budget of `pneumocnn.data.pixels`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pneumocnn.core.files import display_name
from pneumocnn.core.metadata import FILM_SIZE
from pneumocnn.data.dicom import DICOM_EXTENSIONS, is_dicom, read_dicom
from pneumocnn.data.headers import check_container
from pneumocnn.data.pixels import (
    COLOURFULNESS_KEY,
    FRAMES_KEY,
    MAX_DECODED_BYTES,
    NOTES_KEY,
    ImageLoadError,
    check_budget,
    frames_note,
    pillow_bytes_per_pixel,
    to_uint8,
)

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", *DICOM_EXTENSIONS)
# The formats a film comes in, by Pillow's names (a phone's multi-picture JPEG opens as one),
# whatever the file is called; DICOM goes to pydicom. Everything else is refused by name, before
# Pillow's plugin for it runs: GIF, WebP, BMP, ICO, TGA, PPM and the like hold animations,
# screenshots and icons, JPEG 2000 outside DICOM is no film format, and EPS would start
# Ghostscript.
FILM_FORMATS = ("JPEG", "PNG", "TIFF")


def is_image_file(path: str | Path) -> bool:
    """Returns True for a visible file with a JPEG, PNG or DICOM extension."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


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
        return Image.fromarray(to_uint8(np.asarray(image)), mode="L")
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
# The loader


def _not_a_film(handle: BinaryIO, name: str, error: Exception) -> ImageLoadError:
    """Why Pillow could not open a file as a film: a damaged film, another format (named from
    its first bytes by Pillow's own format checks, which read nothing more), or no image."""
    handle.seek(0)
    prefix = handle.read(16)
    Image.init()  # every plugin's check of the first bytes, to name the format
    kinds = [kind for kind, (_, accept) in Image.OPEN.items() if accept and accept(prefix)]
    handle.seek(0, os.SEEK_END)
    if handle.tell() >= 26:  # TGA has no signature up front; version 2 ends with one
        handle.seek(-18, os.SEEK_END)
        if handle.read(18) == b"TRUEVISION-XFILE.\0":
            kinds.append("TGA")
    for kind in kinds:
        if kind in FILM_FORMATS:
            return ImageLoadError(
                f"Cannot read '{name}' as a {kind} image: it is damaged "
                f"({display_name(str(error))[:300]}). Replace or remove the file."
            )
        return ImageLoadError(
            f"'{name}' is an image in the {kind} format, which is not a film's: pneumocnn reads "
            f"JPEG, PNG, TIFF and DICOM files, whatever their names. Received: format={kind}. "
            "Save the film as PNG or JPEG (one frame) and pass that."
        )
    return ImageLoadError(
        f"Cannot read '{name}' as an image: it is not a JPEG, PNG, TIFF or DICOM file (it starts "
        f"with {prefix[:8]!r}). Expected a JPEG, PNG or DICOM chest X-ray; replace or remove the "
        "file."
    )


def _read_pillow(handle: BinaryIO, name: str) -> Image.Image:
    frames = check_container(handle, name)  # before Pillow reads the chunks, segments, tags
    try:
        opened = Image.open(handle, formats=FILM_FORMATS)
    except UnidentifiedImageError as error:
        raise _not_a_film(handle, name, error) from error
    with opened as image:
        width, height = image.size
        check_budget(name, 1, height, width, pillow_bytes_per_pixel(image.mode))
        if image.format != "TIFF":  # an APNG's or a multi-picture JPEG's, from its header
            frames = max(frames, int(getattr(image, "n_frames", 1)))
        image.load()
        notes = [frames_note(image.format, frames)] if frames > 1 else []
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
    gray.info[FRAMES_KEY] = frames
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

    The format is read from the content, not the name; other formats (GIF, WebP, BMP, JPEG
    2000, EPS, ...) are refused by name (see `FILM_FORMATS`). The EXIF orientation is applied.
    The container is checked against the budget before Pillow or pydicom reads it (see
    `pneumocnn.data.headers`), the header against `MAX_DECODED_BYTES` before any pixel data is
    decoded. Of a file of several frames (an APNG, a multi-page TIFF, a multi-frame DICOM) the
    first is read, and `image.info[FRAMES_KEY]` says how many there are. DICOM: through the
    modality and VOI LUT (or window), MONOCHROME1 inverted. What was done is listed in
    `image.info[NOTES_KEY]`.

    Args:
        source: a path, or a binary file object (e.g. an upload).
        name: the name used in error messages. Defaults to `None`: the path, or the file
            object's `name`. It is escaped for printing (see `pneumocnn.core.files.display_name`).

    Returns:
        A mode "L" Pillow image at the file's own size (turned upright);
        `image.info[COLOURFULNESS_KEY]` holds the colourfulness of the decoded image before the
        conversion (see `colourfulness`).

    Raises:
        ImageLoadError: if the file is missing, not a regular file, empty, not an image, in a
            format that is not a film's, truncated, compressed with a codec that is not
            installed, or over the memory budget (checked from the header, before decoding).
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
    if is_dicom(handle, name):
        return read_dicom(handle, name)
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

    The one place the resize happens, so every consumer feeds the model the same pixels. A film
    is brought to the data set's 224 px first (`pneumocnn.core.metadata.FILM_SIZE`; a no-op for
    the data set's own films), as the training films were made from the originals, then to
    `image_size`, both with Pillow's bilinear filter. The RGB variant of an export takes the
    224 px film and does the second step inside (`pneumocnn.edge.rgb.with_film_input`), so a
    stock classifier handed this first step's film makes exactly this call; `web/preprocess.js`
    does the same two steps.

    Args:
        gray: a mode "L" image (see `read_grayscale`).
        image_size: side of the square output.

    Returns:
        A uint8 array of shape `(image_size, image_size, 1)`.
    """
    if image_size < FILM_SIZE and gray.size != (FILM_SIZE, FILM_SIZE):
        gray = gray.resize((FILM_SIZE, FILM_SIZE), Image.Resampling.BILINEAR)
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
        and `(path, reason)` for each file that could not be read (the path as it is, for the
        JSON reports; the reason names it escaped).
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
                skipped.append((os.fspath(paths[index]), str(result)))
            else:
                images.append(result)
                kept.append(index)
            if (index + 1) % step == 0 or index + 1 == total:
                logger.info("Loaded %d/%d images (%d skipped)", index + 1, total, len(skipped))
    array = np.stack(images) if images else np.zeros((0, image_size, image_size, 1), dtype=np.uint8)
    return array, kept, skipped
