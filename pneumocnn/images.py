"""The one image loader shared by training, evaluation, prediction, LiteRT and the app.

It needs only numpy and Pillow (no TensorFlow), so the edge install can use it, and training sees
exactly the pixels a phone will: the same decode, the same grayscale conversion, the same resize.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# The largest chest film in the Kaggle data is about 2,900 x 2,700 px (8 Mpx); anything far above
# that is more likely a decompression bomb than an X-ray, and is refused before decoding.
MAX_PIXELS = 64_000_000
# Where `read_grayscale` records the colourfulness of the image it converted (see
# `colourfulness`): the input guard refuses photographs, which the grayscale image hides.
COLOURFULNESS_KEY = "pneumocnn_colourfulness"


class ImageLoadError(ValueError):
    """Raised when a file cannot be read as an image; the message names the file."""


def is_image_file(path: str | Path) -> bool:
    """Returns True for a visible file with a JPEG or PNG extension."""
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
    """
    if image.mode == "L":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
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


def _check_size(name: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            f"Image '{name}' is {width}x{height} px, above the limit of {MAX_PIXELS:,} pixels "
            "(a decompression bomb, or not an X-ray). Resize it before use."
        )


def _is_dicom(source: str | Path | BinaryIO, name: str) -> bool:
    if Path(name).suffix.lower() in (".dcm", ".dicom"):
        return True
    if isinstance(source, str | Path):
        with open(source, "rb") as handle:
            preamble = handle.read(132)
    else:
        position = source.tell()
        preamble = source.read(132)
        source.seek(position)
    return preamble[128:132] == b"DICM"


def _read_dicom(source: str | Path | BinaryIO, name: str) -> Image.Image:
    """Reads a DICOM file's pixels as 8-bit grayscale (VOI LUT or windowing applied)."""
    try:
        import pydicom
        from pydicom.pixels import apply_voi_lut
    except ImportError as error:
        raise ImageLoadError(
            f"'{name}' is a DICOM file, and reading DICOM needs pydicom. "
            'Install it with: pip install "pneumocnn[app]".'
        ) from error
    dataset = pydicom.dcmread(source)
    _check_size(name, int(dataset.Columns), int(dataset.Rows))
    pixels = apply_voi_lut(dataset.pixel_array, dataset).astype(np.float64)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour: luminance
        pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif pixels.ndim == 3:  # several frames: the first
        pixels = pixels[0]
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels  # MONOCHROME1 shows low values as white
    return to_grayscale(Image.fromarray(pixels.astype(np.float32), mode="F"))


def read_grayscale(source: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Decodes an image file (JPEG, PNG, or DICOM with pydicom) as a full-size grayscale image.

    Args:
        source: a path, or a binary file object (e.g. an upload).
        name: the name used in error messages. Defaults to `None`: the path, or the file
            object's `name`.

    Returns:
        A mode "L" Pillow image at the file's own size; `image.info[COLOURFULNESS_KEY]` holds
        the colourfulness of the decoded image before the conversion (see `colourfulness`).

    Raises:
        ImageLoadError: if the file is missing, empty, not an image, truncated, or larger than
            `MAX_PIXELS` (checked from the header, before decoding).
    """
    if name is None:  # a path names itself; a file object may carry a name (Path.name would not do)
        name = str(source) if isinstance(source, str | Path) else getattr(source, "name", "upload")
    try:
        if _is_dicom(source, name):
            return _read_dicom(source, name)
        with Image.open(source) as image:
            _check_size(name, *image.size)
            image.load()
            gray = to_grayscale(image)
            gray.info[COLOURFULNESS_KEY] = colourfulness(image)
            return gray
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own, larger limit, at open
        raise ImageLoadError(
            f"Image '{name}' is above the limit of {MAX_PIXELS:,} pixels ({error}). "
            "Resize it before use."
        ) from error
    except FileNotFoundError as error:
        raise ImageLoadError(f"Image file not found: '{name}'. Check the path.") from error
    # Pillow and pydicom signal a bad file with many types (OSError, SyntaxError, ValueError,
    # struct.error, DecompressionBombError, ...); all mean "this file is not a usable image".
    except Exception as error:  # noqa: BLE001
        raise ImageLoadError(
            f"Cannot read '{name}' as an image ({type(error).__name__}: {error}). "
            "Expected a JPEG or PNG chest X-ray; replace or remove the file."
        ) from error


def load_image(
    source: str | Path | BinaryIO, image_size: int, name: str | None = None
) -> np.ndarray:
    """Reads an image file as a `(image_size, image_size, 1)` uint8 array of raw 0-255 pixels.

    The image is decoded (see `read_grayscale`), converted to grayscale, and resized to a square
    with bilinear filtering (no crop, no padding). No normalisation: the model rescales inside
    itself.

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
        and `(path, reason)` for each file that could not be read.
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
                skipped.append((str(paths[index]), str(result)))
            else:
                images.append(result)
                kept.append(index)
            if (index + 1) % step == 0 or index + 1 == total:
                logger.info("Loaded %d/%d images (%d skipped)", index + 1, total, len(skipped))
    array = np.stack(images) if images else np.zeros((0, image_size, image_size, 1), dtype=np.uint8)
    return array, kept, skipped
