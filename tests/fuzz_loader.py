"""Fuzzing the image loader: mutated films and crafted headers, PNG, JPEG, TIFF and DICOM.

The bases include what issue "Hostile inputs and faults, round two" found: files of several
frames (APNG, multi-page TIFF), other formats named like films (a GIF named .png), metadata
chunks and segments (a PNG text chunk, JPEG APP segments), and DICOM files holding a JPEG or a
JPEG 2000 frame, whose own size header the crafters rewrite as they rewrite DICOM's.

Run as a script it prints what happened to each kind of input; `tests/test_fuzz_loader.py` runs
it in a child process (so a hang is a timeout and the memory figure is the child's own) and
demands: no exception but `ImageLoadError`, no input slower than `HANG_SECONDS`, a peak resident
memory within `MEMORY_LIMIT_MB`.

    python tests/fuzz_loader.py --count 1000 --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.benchmark.hostile_inputs import dicom_with_frame
from pneumocnn.benchmark.timing import peak_memory_mb
from pneumocnn.data.images import load_image
from pneumocnn.data.pixels import ImageLoadError
from pneumocnn.testing import synthetic_xray, write_dicom

HANG_SECONDS = 10.0
MEMORY_LIMIT_MB = 1024
# Header sizes tried: nothing, tiny, ordinary, just within the budget, far beyond it.
DIMENSIONS = (0, 1, 7, 64, 300, 2048, 4096, 11000, 30000, 65535)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _dicom_bytes(pixels: np.ndarray, photometric: str, bits: int, **options) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = write_dicom(Path(folder) / "x.dcm", pixels, photometric, bits, **options)
        return path.read_bytes()


def base_files(rng: np.random.Generator) -> dict[str, bytes]:
    """Small valid films of every kind the loader reads, named with their extension."""
    film = synthetic_xray(rng, 1, (48, 40))
    gray = Image.fromarray(film)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "gray.jpeg": _encode(gray, "JPEG"),
        "rotated.jpeg": _encode(gray.convert("RGB"), "JPEG", exif=exif.tobytes()),
        "progressive.jpeg": _encode(gray, "JPEG", progressive=True),
        "gray.png": _encode(gray, "PNG"),
        "sixteen.png": _encode(Image.fromarray(film.astype(np.uint16) * 257), "PNG"),
        "alpha.png": _encode(gray.convert("RGBA"), "PNG"),
        "raw.tiff": _encode(gray, "TIFF"),
        "lzw.tiff": _encode(gray, "TIFF", compression="tiff_lzw"),
        "apng.png": _encode(gray, "PNG", save_all=True, append_images=[gray.rotate(90)]),
        "pages.tiff": _encode(
            gray, "TIFF", save_all=True, append_images=[gray.rotate(90)], compression="tiff_lzw"
        ),
        "gif.png": _encode(gray, "GIF"),
        "text.png": _encode(gray, "PNG", pnginfo=_text_info()),
        "app.jpeg": _encode(gray, "JPEG", exif=exif.tobytes(), comment=b"x" * 2000),
    }
    try:
        from pydicom.uid import RLELossless
    except ImportError:  # no pydicom: the DICOM files are still tried, and must be refused
        RLELossless = None
    wide = film.astype(np.uint16) * 16
    dicoms = {
        "mono2.dcm": (film, "MONOCHROME2", 8, {}),
        "mono1.dcm": (4095 - wide, "MONOCHROME1", 12, {"window": (2048, 4096)}),
        "frames.dcm": (np.stack([film, film[::-1]]), "MONOCHROME2", 8, {}),
        "rle.dcm": (wide, "MONOCHROME2", 12, {"compress": RLELossless}),
        "deflated.dcm": (wide, "MONOCHROME2", 12, {"compress": "1.2.840.10008.1.2.1.99"}),
    }
    for name, (pixels, photometric, bits, options) in dicoms.items():
        try:
            files[name] = _dicom_bytes(pixels, photometric, bits, **options)
        except ImportError:
            pass
    try:
        from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit
    except ImportError:
        return files
    rows, columns = film.shape
    for name, frame, syntax in (
        ("jpeg.dcm", _encode(gray, "JPEG"), JPEGBaseline8Bit),
        ("j2k.dcm", _encode(gray, "JPEG2000", no_jp2=True), JPEG2000Lossless),
    ):
        with tempfile.TemporaryDirectory() as folder:
            files[name] = dicom_with_frame(
                Path(folder) / name, rows, columns, frame, syntax
            ).read_bytes()
    return files


def _text_info():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a film " * 200)
    info.add_text("Software", "fuzz", zip=True)
    return info


# ---------------------------------------------------------------------------------------------
# Crafted headers


def _png_header(content: bytes, rng: np.random.Generator) -> bytes:
    width, height = (int(rng.choice(DIMENSIONS)) for _ in range(2))
    depth, colour = int(rng.choice([1, 2, 4, 8, 16, 3])), int(rng.choice([0, 2, 3, 4, 6, 5]))
    body = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, int(rng.integers(0, 2)))
    crc = zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF
    if rng.random() < 0.2:
        crc ^= 1  # a wrong checksum too
    return content[:16] + body + struct.pack(">I", crc) + content[33:]


def _png_chunk(content: bytes, rng: np.random.Generator) -> bytes:
    """Rewrites the length of one chunk after IHDR: none, one more, or gigabytes claimed."""
    data, at, starts = bytearray(content), 8, []
    while at + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        starts.append(at)
        at += 12 + length
    if len(starts) < 2:
        return bytes(data)
    at = starts[int(rng.integers(1, len(starts)))]
    (length,) = struct.unpack_from(">I", data, at)
    claimed = [0, length + 1, 600_000_000, 2**31 - 1][int(rng.integers(0, 4))]
    struct.pack_into(">I", data, at, claimed)
    return bytes(data)


def _png_crafted(content: bytes, rng: np.random.Generator) -> bytes:
    return (_png_header if rng.random() < 0.5 else _png_chunk)(content, rng)


def _j2k_header(content: bytes, rng: np.random.Generator) -> bytes:
    """Rewrites the size and component count of a JPEG 2000 SIZ segment."""
    data = bytearray(content)
    at = data.find(b"\xff\x51")
    if at >= 0:
        width, height = (int(rng.choice(DIMENSIONS)) for _ in range(2))
        data[at + 6 : at + 14] = struct.pack(">II", width, height)
        if rng.random() < 0.3:
            struct.pack_into(">H", data, at + 38, int(rng.choice([0, 1, 3, 4, 255])))
    return bytes(data)


def _jpeg_header(content: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(content)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            height, width = (int(rng.choice(DIMENSIONS)) for _ in range(2))
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            if rng.random() < 0.3:
                data[at + 9] = int(rng.integers(0, 256))  # number of components
    return bytes(data)


def _tiff_header(content: bytes, rng: np.random.Generator) -> bytes:
    """Rewrites the width, length, bits per sample and samples per pixel tags of the first IFD."""
    data = bytearray(content)
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    for index in range(count):
        at = offset + 2 + 12 * index
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = int(rng.choice(DIMENSIONS))
        elif tag in (258, 277) and rng.random() < 0.3:  # BitsPerSample, SamplesPerPixel
            value = int(rng.choice([0, 1, 3, 8, 12, 16, 32, 255]))
        else:
            continue
        if kind == 3:  # SHORT
            struct.pack_into(order + "H", data, at + 8, min(value, 65535))
        elif kind == 4:  # LONG
            struct.pack_into(order + "I", data, at + 8, value)
    return bytes(data)


def _dicom_header(content: bytes, rng: np.random.Generator) -> bytes:
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(content))
    for keyword, values in (
        ("Rows", DIMENSIONS),
        ("Columns", DIMENSIONS),
        ("NumberOfFrames", (0, 1, 2, 50, 10_000, 10**9)),
        ("BitsAllocated", (0, 1, 8, 16, 32, 64)),
        ("BitsStored", (0, 1, 8, 12, 16, 40)),
        ("SamplesPerPixel", (0, 1, 3, 4)),
        ("PixelRepresentation", (0, 1, 2)),
        ("PhotometricInterpretation", ("MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "")),
        ("WindowWidth", (0, 1, -5, 1e300)),
    ):
        if rng.random() < 0.35:
            dataset.update({keyword: values[int(rng.integers(0, len(values)))]})
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _dicom_crafted(content: bytes, rng: np.random.Generator) -> bytes:
    """DICOM's header fields, or the size header of the frame it encapsulates."""
    if b"\xff\xd8\xff" in content and rng.random() < 0.5:
        return _jpeg_header(content, rng)
    if b"\xff\x4f\xff\x51" in content and rng.random() < 0.5:
        return _j2k_header(content, rng)
    return _dicom_header(content, rng)


HEADERS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    ".png": _png_crafted,
    ".jpeg": _jpeg_header,
    ".tiff": _tiff_header,
    ".dcm": _dicom_crafted,
}


# ---------------------------------------------------------------------------------------------
# Byte mutations


def mutate(content: bytes, suffix: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of `content`: a crafted header, truncation, flipped bytes, spliced
    or overwritten blocks. Returns the mutation's name and the new bytes."""
    kind = str(rng.choice(["header", "header", "truncate", "flip", "splice", "overwrite"]))
    data = bytearray(content)
    if kind == "header":
        try:
            return kind, HEADERS[suffix](content, rng)
        except Exception:  # noqa: BLE001 - a base this crafter cannot parse: flip bytes instead
            kind = "flip"
    if kind == "truncate":
        return kind, bytes(data[: int(rng.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(data)
    noise = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    at = int(rng.integers(0, len(data)))
    if kind == "splice":
        return kind, bytes(data[:at]) + noise + bytes(data[at:])
    return kind, bytes(data[:at]) + noise + bytes(data[at + len(noise) :])


def run(count: int, seed: int, keep: int | None = None) -> dict:
    """Throws `count` mutated files at `load_image` and tallies the outcomes."""
    rng = np.random.default_rng(seed)
    bases = base_files(rng)
    names = sorted(bases)
    outcomes: Counter = Counter()
    crashes: list[str] = []
    slowest = (0.0, "")
    hungriest = (0.0, "")  # the input that raised the peak memory the most, and by how much
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            name = names[index % len(names)]
            suffix = Path(name).suffix
            kind, content = mutate(bases[name], suffix, rng)
            if rng.random() < 0.1:  # a wrong extension: the loader must sniff, not trust it
                suffix = str(rng.choice([".png", ".jpeg", ".dcm", ".tiff"]))
            path = Path(folder) / f"fuzz{index}{suffix}"
            path.write_bytes(content)
            began = time.perf_counter()
            peak_before = peak_memory_mb()
            try:
                image = load_image(path, 32)
                assert image.shape == (32, 32, 1) and image.dtype == np.uint8, image.shape
                outcomes["decoded"] += 1
            except ImageLoadError as error:
                assert path.name in str(error), str(error)
                outcomes["refused"] += 1
            except Exception:  # noqa: BLE001 - what the fuzzer is looking for
                outcomes["crashed"] += 1
                crashes.append(f"{name} {kind}: {traceback.format_exc(limit=3)}")
            seconds = time.perf_counter() - began
            raised = peak_memory_mb() - peak_before
            if raised > hungriest[0]:
                hungriest = (raised, f"{name} {kind} (file {index}, {len(content):,} bytes)")
            if seconds > slowest[0]:
                slowest = (seconds, f"{name} {kind}")
            outcomes[f"{name} {kind}"] += 0
            if keep is not None and index == keep:
                Path(f"fuzz{index}{suffix}").write_bytes(content)
            path.unlink()
    return {
        "tried": count,
        "decoded": outcomes["decoded"],
        "refused": outcomes["refused"],
        "crashes": crashes,
        "hangs": int(slowest[0] > HANG_SECONDS),
        "slowest_seconds": round(slowest[0], 3),
        "slowest_input": slowest[1],
        "hungriest_input": f"{hungriest[1]}: +{hungriest[0]:.0f} MB",
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_memory_mb(), 1),
        "bases": names,
    }


def main(argv: list[str] | None = None) -> int:
    # Pillow, libtiff and pydicom warn about every odd file; the tally is what matters here.
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=int, help="write input number KEEP to the current folder")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.count, args.seed, args.keep), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
