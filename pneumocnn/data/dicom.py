"""Reading a DICOM film (pydicom) into an 8-bit grayscale image, within the decode budget.

The header is read first and checked against `pneumocnn.data.pixels.MAX_DECODED_BYTES`; the
pixels are then windowed as a viewer shows them (VOI LUT, or the stored window), MONOCHROME1
inverted. `pneumocnn.data.images.read_grayscale` calls `read_dicom` for DICOM files.

pydicom is optional (the `lite` and `app` extras): each function imports what it needs of it,
so JPEG and PNG films load without it.
"""

from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from pneumocnn.data.pixels import (
    MAX_DECODED_BYTES,
    NOTES_KEY,
    ImageLoadError,
    check_budget,
    to_uint8,
)

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom")
# Large DICOM elements (overlays, private blobs) are read only if used: never, here.
_DICOM_DEFER_BYTES = 1 << 16
# A deflated DICOM data set is inflated whole before its header can be read; this much beyond
# the budget is allowed for the elements around the pixel data.
_DEFLATE_SLACK_BYTES = 16 << 20


# ---------------------------------------------------------------------------------------------
# DICOM


def is_dicom(handle: BinaryIO, name: str) -> bool:
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
    check_budget(
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


def read_dicom(handle: BinaryIO, name: str) -> Image.Image:
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
            luminance = to_uint8(luminance)
        gray = Image.fromarray(np.ascontiguousarray(luminance), mode="L")
    elif pixels.ndim == 3:  # RGB: Pillow's luminance, as for a colour PNG
        if pixels.dtype != np.uint8:
            pixels = to_uint8(pixels.reshape(pixels.shape[0], -1)).reshape(pixels.shape)
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
            to_uint8(pixels, to_display, display_range, invert=photometric == "MONOCHROME1"),
            mode="L",
        )
    gray.info[NOTES_KEY] = notes
    return gray
