"""Reading a DICOM film (pydicom) into an 8-bit grayscale image, within the decode budget.

The header is read first and checked against `pneumocnn.data.pixels.MAX_DECODED_BYTES`; the
pixels are then windowed as a viewer shows them (VOI LUT, or the stored window), MONOCHROME1
inverted. `pneumocnn.data.images.read_grayscale` calls `read_dicom` for DICOM files, which reads
no patient data; `dicom_patient` reads the header's PatientID alone, as a one-way key that
groups a patient's films (`pneumocnn.data.folders.match_patient`).

pydicom is optional (the `lite` and `app` extras; 0.12 s to import): without it JPEG and PNG
films load as before and a DICOM file is refused with the command that installs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

try:  # optional (`pneumocnn[lite]`): without it a DICOM file is refused, naming the install
    import pydicom
    import pydicom.uid
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
    from pydicom.pixels.utils import _array_common
    from pydicom.uid import UID
except ImportError:
    pydicom = None

from pneumocnn.data.headers import codestream_size
from pneumocnn.data.pixels import (
    FRAMES_KEY,
    MAX_DECODED_BYTES,
    MAX_METADATA_BYTES,
    NOTES_KEY,
    ImageLoadError,
    check_budget,
    frames_note,
    to_uint8,
)

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom")
# Large DICOM elements (overlays, private blobs) are read only if used: never, here.
_DICOM_DEFER_BYTES = 1 << 16
# The start of a compressed frame read for its codestream header (SOF or SIZ comes within the
# first kilobytes; large APP segments could push it further).
_CODESTREAM_HEAD_BYTES = 1 << 20
_ITEM_TAG = (0xFFFE, 0xE000)


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
    if transfer_syntax != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return
    limit = MAX_DECODED_BYTES + MAX_METADATA_BYTES
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


def _first_fragment(handle: BinaryIO) -> bytes | None:
    """The start of the first frame of encapsulated pixel data (after the basic offset table),
    read through pydicom's own positioning at the pixel data; `None` if it is not there."""
    handle.seek(0)
    _array_common(handle, [])  # leaves the file at the start of the pixel data's value
    for item in ("offset table", "fragment"):
        raw = handle.read(8)
        if len(raw) < 8:
            return None
        group, element, length = struct.unpack("<HHI", raw)
        if (group, element) != _ITEM_TAG:
            return None
        if item == "fragment":
            return handle.read(min(length, _CODESTREAM_HEAD_BYTES))
        handle.seek(length, 1)
    return None


def _check_codestream(handle: BinaryIO, name: str, header, transfer_syntax: str) -> None:
    """Checks what the compressed first frame will decode to, from its own header, against the
    DICOM header and the budget, before a decoder (Pillow, pylibjpeg) decodes it whole.

    A JPEG inside a DICOM file can claim another size than the file's Rows and Columns: a
    224 x 224 header holding a 12,000 x 12,000 JPEG took 1.48 GB before the mismatch surfaced.
    """
    syntax = pydicom.uid.UID(transfer_syntax)
    if not syntax.is_compressed or syntax in (
        pydicom.uid.RLELossless,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    ):
        return  # the output of these decoders is the header's size
    fragment = _first_fragment(handle)
    size = codestream_size(fragment or b"")
    if size is None:
        raise ImageLoadError(
            f"DICOM file '{name}' is compressed as {syntax.name}, but its first frame does not "
            "start with a JPEG or JPEG 2000 header that says its size. Export the film again, "
            "or uncompressed."
        )
    rows, columns, components, bits = size
    bytes_per_pixel = (4 if components in (3, 4) else max(components, 1)) * (2 if bits > 8 else 1)
    check_budget(name, 1, rows, columns, bytes_per_pixel, " in its compressed frame")
    samples = int(header.get("SamplesPerPixel") or 1)
    expected = (int(header.Rows), int(header.Columns), samples)
    if (rows, columns, components) != expected:
        raise ImageLoadError(
            f"DICOM file '{name}' says its frames are {expected[1]}x{expected[0]} px with "
            f"{samples} sample(s), but its compressed frame holds {columns}x{rows} px with "
            f"{components} component(s). Received: Rows={expected[0]}, Columns={expected[1]}. "
            "The file contradicts itself; export the film again."
        )


def _first_number(header, keyword: str, name: str) -> float:
    value: object = "?"
    try:  # pydicom converts a DS on access: text that is no number fails there
        element = header[keyword]
        value = element.value[0] if element.VM > 1 else element.value
        number = float(value)
    except (TypeError, ValueError, IndexError) as error:
        value = value if value != "?" else str(error).rsplit(":", 1)[-1].strip()
        number = math.nan
    if not math.isfinite(number):
        raise ImageLoadError(
            f"DICOM file '{name}' has a {keyword} that is not a finite number. Received: "
            f"{keyword}={str(value)[:60]!r}. Fix or remove the {keyword} in the file (a viewer "
            "would not show it either)."
        )
    return number


def _stored_range(header) -> np.ndarray:
    """The lowest and highest value the stored bits can hold, through the modality LUT."""
    bits = int(header.get("BitsStored") or header.BitsAllocated)
    signed = int(header.get("PixelRepresentation") or 0) == 1
    first = -(2 ** (bits - 1)) if signed else 0
    if bits <= 16:  # every code: a modality LUT may map them in any order
        codes = np.arange(first, first + 2**bits, dtype=np.int64)
    else:
        codes = np.array([first, first + 2**bits - 1], dtype=np.int64)
    mapped = np.asarray(apply_modality_lut(codes, header), dtype=np.float64)
    return np.array([mapped.min(), mapped.max()])


def _check_luts(header, name: str) -> None:
    """Refuses a rescale or window a viewer could not apply (not a number, NaN, infinite, a
    width below 1), or a window that shows every value the file can hold as one gray level."""
    if "RescaleSlope" in header or "RescaleIntercept" in header:
        slope = _first_number(header, "RescaleSlope", name) if "RescaleSlope" in header else 1
        if "RescaleIntercept" in header:
            _first_number(header, "RescaleIntercept", name)
        if slope == 0:
            raise ImageLoadError(
                f"DICOM file '{name}' has a RescaleSlope of 0: every pixel would be one value. "
                "Received: RescaleSlope=0. Fix the rescale in the file."
            )
    windowed = [key for key in ("WindowCenter", "WindowWidth") if key in header]
    if not windowed or header.get("VOILUTSequence"):
        return
    if len(windowed) == 1:
        raise ImageLoadError(
            f"DICOM file '{name}' has a {windowed[0]} but no "
            f"{({'WindowCenter', 'WindowWidth'} - set(windowed)).pop()}: no window can be applied. "
            "Add the missing one, or remove both to have the film's own range shown."
        )
    center = _first_number(header, "WindowCenter", name)
    width = _first_number(header, "WindowWidth", name)
    function = str(header.get("VOILUTFunction", "LINEAR")).upper()
    if width < (1 if function == "LINEAR" else 1e-9):
        raise ImageLoadError(
            f"DICOM file '{name}' has a window width below 1, which no viewer applies. "
            f"Received: WindowCenter={center:g}, WindowWidth={width:g}. Fix the window in the file."
        )
    low, high = apply_voi_lut(np.array([-1e30, 1e30]), header)
    shown = np.asarray(apply_voi_lut(_stored_range(header), header), dtype=np.float64)
    if high <= low or abs(float(shown[1] - shown[0])) * 255 < float(high - low):
        data_low, data_high = _stored_range(header)
        raise ImageLoadError(
            f"DICOM file '{name}' has a window that shows every value the file can hold "
            f"({data_low:g} to {data_high:g}) as one gray level: the window is the problem, "
            f"not the film. Received: WindowCenter={center:g}, WindowWidth={width:g}. Fix the "
            "window in the file, or remove it to have the film's own range shown."
        )


class _QuietDecoding(logging.Filter):
    """Drops pydicom's logging of a failed decode while `read_dicom` decodes: the failure comes
    back as the `ImageLoadError` naming the file, and the traceback pydicom logs at ERROR level
    would only repeat it (on the terminal of `predict`). Other threads are not affected."""

    state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.state, "decoding", False)


_QUIET = _QuietDecoding()
# The loggers pydicom's decoding logs to (a logger's filter sees only its own records).
_QUIET_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    for logger_name in _QUIET_LOGGERS:  # adding the same filter again is a no-op
        logging.getLogger(logger_name).addFilter(_QUIET)
    _QUIET.state.decoding = True
    try:
        yield
    finally:
        _QUIET.state.decoding = False


def _require_decoder(transfer_syntax: str, name: str) -> None:
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


def dicom_patient(path: str | Path) -> str | None:
    """The patient of a DICOM film, from its header's PatientID, as a one-way key.

    The ID itself is never kept: the key is `patient_key` of it (`dicom-` and the first 16 hex
    digits of its SHA-256), so a split or a fold groups a patient's films without any file or
    message holding the ID. Only the header is read (a deflated data set within the decode
    budget).

    Args:
        path: a film.

    Returns:
        The key, or `None` when the file is not DICOM, pydicom is not installed, the header
        cannot be read (the image loader names why, later) or its PatientID is empty.
    """
    if pydicom is None:
        return None
    name = Path(path).name
    try:
        with open(path, "rb") as handle:
            if not is_dicom(handle, name):
                return None
            read_preamble(handle, force=False)
            meta = _read_file_meta_info(handle)
            _check_deflated_size(handle, name, str(meta.get("TransferSyntaxUID", "")))
            handle.seek(0)
            header = pydicom.dcmread(
                handle, stop_before_pixels=True, specific_tags=["PatientID"], force=True
            )
    # Any failure leaves the patient untold: the film is then refused or skipped with the
    # loader's own reason (pydicom raises many kinds on a hostile header).
    except Exception:  # noqa: BLE001
        return None
    value = str(header.get("PatientID", "") or "").strip()
    return patient_key(value) if value else None


def patient_key(patient: str) -> str:
    """The one-way key that stands for a patient ID a site assigned (a DICOM PatientID, or a
    `--patients` table's): `dicom-` and the first 16 hex digits of its SHA-256, so that the same
    ID from either source groups the same films, and nothing downstream holds the ID itself."""
    return "dicom-" + hashlib.sha256(patient.strip().encode("utf-8")).hexdigest()[:16]


def read_dicom(handle: BinaryIO, name: str) -> Image.Image:
    """Reads the first frame of a DICOM file as 8-bit grayscale, as a viewer shows it.

    Modality LUT (rescale) and VOI LUT or window applied with pydicom's own functions;
    MONOCHROME1 inverted; colour converted to luminance. Patient data is never read.
    """
    if pydicom is None:
        raise ImageLoadError(
            f"'{name}' is a DICOM file, and reading DICOM needs pydicom. "
            'Install it with: pip install "pneumocnn[lite]" (or pip install pydicom).'
        )
    header, transfer_syntax, frames = _dicom_header(handle, name)
    _require_decoder(transfer_syntax, name)
    _check_codestream(handle, name, header, transfer_syntax)
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith(
        "YBR"
    ):
        raise ImageLoadError(
            f"DICOM file '{name}' has the photometric interpretation '{photometric}'; a chest "
            "film is MONOCHROME1 or MONOCHROME2 (or RGB). Export it as a grayscale image."
        )
    if photometric.startswith("MONOCHROME"):
        _check_luts(header, name)
    handle.seek(0)
    # YBR data from native and RLE syntaxes is kept as stored (raw): its Y channel is the
    # luminance, and pydicom's own YBR-to-RGB conversion works in float64, 8 bytes a sample,
    # eight times the budget. JPEG-family decoders return RGB themselves.
    encapsulated = pydicom.uid.UID(transfer_syntax).is_compressed
    raw = not encapsulated or transfer_syntax == pydicom.uid.RLELossless
    pixels = _first_frame(handle, name, transfer_syntax, raw)
    notes = [f"DICOM {photometric}, {int(header.BitsAllocated)}-bit"]
    if frames > 1:
        notes.append(frames_note("DICOM", frames))
        logger.warning("'%s' has %d frames; only the first is used", name, frames)
    gray = _to_gray(pixels, header, name, photometric, raw, notes)
    gray.info[NOTES_KEY] = notes
    gray.info[FRAMES_KEY] = frames
    return gray


def _first_frame(handle: BinaryIO, name: str, transfer_syntax: str, raw: bool) -> np.ndarray:
    """The first frame's stored pixels, decoded by pydicom (and its plugins)."""
    try:
        with _decoding():
            if transfer_syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
                # pydicom reads a deflated file's pixels only from the inflated data set, which
                # `_dicom_header` has checked fits the budget.
                return pixel_array(pydicom.dcmread(handle), index=0, raw=raw)
            return pixel_array(handle, index=0, raw=raw)  # decodes the first frame only
    # pydicom and its plugins signal a bad frame with many types: all mean "cannot decode".
    except Exception as error:  # noqa: BLE001
        reason = " ".join(str(error).split())[:300]
        raise ImageLoadError(
            f"DICOM file '{name}': its pixel data ({pydicom.uid.UID(transfer_syntax).name}) "
            f"cannot be decoded ({type(error).__name__}: {reason}). The file is damaged or cut "
            "short; export the film again."
        ) from error


def _to_gray(
    pixels: np.ndarray, header, name: str, photometric: str, raw: bool, notes: list[str]
) -> Image.Image:
    """The decoded frame as 8-bit grayscale as a viewer shows it; says how in `notes`."""
    if pixels.ndim == 3 and raw and photometric.startswith("YBR"):
        luminance = pixels[..., 0]  # Y: the luminance, as stored (colour is never windowed)
        if luminance.dtype != np.uint8:
            luminance = to_uint8(luminance)
        return Image.fromarray(np.ascontiguousarray(luminance), mode="L")
    if pixels.ndim == 3:  # RGB: Pillow's luminance, as for a colour PNG
        if pixels.dtype != np.uint8:
            pixels = to_uint8(pixels.reshape(pixels.shape[0], -1)).reshape(pixels.shape)
        return Image.fromarray(np.ascontiguousarray(pixels[..., :3]), mode="RGB").convert("L")
    if pixels.ndim != 2:
        raise ImageLoadError(f"DICOM file '{name}' decoded to an array of shape {pixels.shape}.")

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
    return Image.fromarray(
        to_uint8(pixels, to_display, display_range, invert=photometric == "MONOCHROME1"),
        mode="L",
    )
