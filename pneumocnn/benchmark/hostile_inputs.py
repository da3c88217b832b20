"""Peak memory and time of reading the worst hostile input of each kind.

Builds each input in a temporary folder (sparse files where it claims hundreds of megabytes),
then reads it in a fresh Python process of its own, as `predict` would (`load_image` for an
image, `load_model` for a `.keras`, `LiteModel` for a model folder), and prints the outcome, the
seconds, the length of the error message and the peak resident memory (VmHWM) of that process
next to a baseline: an ordinary film, the shipped `.keras` and the shipped int8 model.

    python -m pneumocnn.benchmark.hostile_inputs
    python -m pneumocnn.benchmark.hostile_inputs --json

The builders (`png_with_text_chunk`, `jpeg_with_app_segments`, `tiff_with_large_tag`,
`dicom_with_frame`, `jpeg_claiming`, `j2k_claiming`, `keras_with_config`, `keras_declaring`) are
also what the
tests of these inputs build.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)

from pneumocnn.core.locations import default_model

# Each input is read in its own process, which prints one JSON line.
_CHILD = """
import json, sys, time
from pneumocnn.benchmark.timing import peak_memory_mb
kind, path = sys.argv[1:]
started = time.perf_counter()
message = ""
try:
    if kind == "image":
        from pneumocnn.data.images import load_image
        load_image(path, 224)
        outcome = "decoded"
    elif kind == "keras":
        from pneumocnn.network.model import load_model
        load_model(path)
        outcome = "loaded"
    else:
        from pneumocnn.runtime.lite import LiteModel
        LiteModel(path)
        outcome = "opened"
except Exception as error:
    message = str(error)
    outcome = f"refused ({type(error).__name__})"
print(json.dumps({"outcome": outcome, "seconds": round(time.perf_counter() - started, 2),
                  "message": message[:160], "message_chars": len(message),
                  "peak_mb": round(peak_memory_mb())}))
"""


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def _film(size: tuple[int, int] = (224, 224)) -> Image.Image:
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 40, (height, width), dtype=np.uint8)
    return Image.fromarray(np.broadcast_to(ramp, (height, width)) // 2 + noise)


def _encoded(image: Image.Image, kind: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def png_with_text_chunk(path: Path, length: int) -> Path:
    """A small PNG film with a `tEXt` chunk of `length` bytes before its pixels, written as a
    sparse file (the chunk's body is a hole; its checksum is wrong, which is read last)."""
    png = _encoded(_film(), "PNG")
    header, rest = png[:33], png[33:]  # the signature and IHDR, then the rest
    with open(path, "wb") as handle:
        handle.write(header + struct.pack(">I", length) + b"tEXt")
        handle.seek(length + 4, 1)  # the body (a hole) and its CRC
        handle.write(rest)
    return path


def jpeg_with_app_segments(path: Path, count: int) -> Path:
    """A small JPEG film with `count` APP15 segments of 64 KB before its frame header."""
    jpeg = _encoded(_film(), "JPEG")
    segment = b"\xff\xef" + struct.pack(">H", 65535) + bytes(65533)
    path.write_bytes(jpeg[:2] + segment * count + jpeg[2:])
    return path


def tiff_with_large_tag(path: Path, length: int) -> Path:
    """A small TIFF film whose ImageDescription tag claims `length` bytes of text past its pixels,
    written as a sparse file."""
    tiff = bytearray(_encoded(_film(), "TIFF"))
    (offset,) = struct.unpack_from("<I", tiff, 4)
    (count,) = struct.unpack_from("<H", tiff, offset)
    entries = [tiff[offset + 2 + 12 * index : offset + 14 + 12 * index] for index in range(count)]
    text_at = len(tiff) + 2 + 12 * (count + 1) + 4
    entries.append(struct.pack("<HHII", 270, 2, length, text_at))  # ImageDescription, ASCII
    entries.sort(key=lambda entry: struct.unpack_from("<H", entry)[0])
    directory = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    new_offset = len(tiff)
    struct.pack_into("<I", tiff, 4, new_offset)
    with open(path, "wb") as handle:
        handle.write(bytes(tiff) + directory)
        handle.seek(length - 1, 1)
        handle.write(b"\0")
    return path


def jpeg_claiming(width: int, height: int, components: int = 1) -> bytes:
    """A tiny baseline JPEG whose frame header claims `width` x `height` px: what a decoder
    reads as the size to allocate."""
    mode = "RGB" if components == 3 else "L"
    jpeg = bytearray(
        _encoded(Image.new(mode, (16, 16), 100 if mode == "L" else (90, 100, 110)), "JPEG")
    )
    at = jpeg.find(b"\xff\xc0")
    jpeg[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def j2k_claiming(width: int, height: int) -> bytes:
    """A tiny JPEG 2000 codestream whose SIZ segment claims `width` x `height` px."""
    j2k = bytearray(_encoded(Image.new("L", (16, 16), 100), "JPEG2000", no_jp2=True))
    at = j2k.find(b"\xff\x51")
    j2k[at + 6 : at + 14] = struct.pack(">II", width, height)
    return bytes(j2k)


def dicom_with_frame(
    path: Path, rows: int, columns: int, frame: bytes, transfer_syntax: str, samples: int = 1
) -> Path:
    """A DX DICOM file whose header says `rows` x `columns` and whose one encapsulated frame is
    `frame` (a JPEG or JPEG 2000 codestream, which may say another size)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = samples
    dataset.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "YBR_FULL_422"
    if samples == 3:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def keras_with_config(path: Path, source: Path, config_bytes: int) -> Path:
    """A copy of the `.keras` `source` whose `config.json` inflates to about `config_bytes`
    (its real config, padded with spaces: still valid JSON), streamed into the zip."""
    with (
        zipfile.ZipFile(source) as original,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as copy,
    ):
        for member in original.infolist():
            content = original.read(member.filename)
            if member.filename != "config.json":
                copy.writestr(member.filename, content)
                continue
            with copy.open("config.json", "w", force_zip64=True) as handle:
                handle.write(content[:-1])
                block = b" " * (1 << 20)
                for _ in range(max(0, config_bytes - len(content)) >> 20):
                    handle.write(block)
                handle.write(content[-1:])
    return path


def keras_declaring(path: Path, source: Path, units: int) -> Path:
    """A copy of the `.keras` `source` whose `config.json` gives its Dense layers `units` units
    each (a few bytes changed; the weights file stays the original's). The shipped model's last
    layer then declares 256 x `units` float32 weights."""
    with (
        zipfile.ZipFile(source) as original,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as copy,
    ):
        for member in original.infolist():
            content = original.read(member.filename)
            if member.filename == "config.json":
                config = json.loads(content)
                for layer in config["config"]["layers"]:
                    if layer["class_name"] == "Dense":
                        layer["config"]["units"] = units
                content = json.dumps(config).encode()
            copy.writestr(member.filename, content)
    return path


def nested_metadata_family(folder: Path, model: Path, depth: int) -> Path:
    """A copy of the shipped family of `model` whose metadata is a list nested `depth` deep."""
    folder.mkdir()
    for sibling in model.parent.glob(model.name.split("_int8")[0] + "*"):
        if sibling.is_file():
            shutil.copy(sibling, folder / sibling.name)
    (folder / (model.name.split("_int8")[0] + ".json")).write_text("[" * depth + "]" * depth)
    return folder / model.name


def cases(folder: Path) -> list[tuple[str, str, Path]]:
    """`(description, kind, path)` of each input: the baselines, then the hostile ones."""
    int8, keras = default_model(), default_model("keras")
    baseline = folder / "film.jpeg"
    _film().save(baseline)
    big = folder / "big.jpeg"
    _film((12000, 12000)).save(big, quality=50)
    built: list[tuple[str, str, Callable[[], Path]]] = [
        ("baseline: 224 x 224 JPEG film", "image", lambda: baseline),
        (
            "PNG with a 600 MB tEXt chunk (sparse file)",
            "image",
            lambda: png_with_text_chunk(folder / "text.png", 600_000_000),
        ),
        (
            "JPEG with 320 APP segments of 64 KB (21 MB)",
            "image",
            lambda: jpeg_with_app_segments(folder / "app.jpeg", 320),
        ),
        (
            "TIFF with a 600 MB ImageDescription tag (sparse file)",
            "image",
            lambda: tiff_with_large_tag(folder / "tag.tiff", 600_000_000),
        ),
        (
            f"DICOM 224 x 224 holding a real 12000 x 12000 baseline JPEG "
            f"({big.stat().st_size / 1e6:.1f} MB)",
            "image",
            lambda: dicom_with_frame(
                folder / "bomb.dcm", 224, 224, big.read_bytes(), JPEGBaseline8Bit
            ),
        ),
        (
            "DICOM 224 x 224 colour holding a JPEG claiming 12000 x 12000",
            "image",
            lambda: dicom_with_frame(
                folder / "colour.dcm",
                224,
                224,
                jpeg_claiming(12000, 12000, 3),
                JPEGBaseline8Bit,
                samples=3,
            ),
        ),
        (
            "DICOM 224 x 224 holding a JPEG 2000 claiming 12000 x 12000",
            "image",
            lambda: dicom_with_frame(
                folder / "j2k.dcm", 224, 224, j2k_claiming(12000, 12000), JPEG2000Lossless
            ),
        ),
        ("baseline: the shipped .keras", "keras", lambda: keras),
        (
            ".keras whose config.json inflates to 1 GiB",
            "keras",
            lambda: keras_with_config(folder / "huge.keras", keras, 1 << 30),
        ),
        (
            ".keras whose config.json declares 8 GB of weights (a Dense layer of 8,000,000 units)",
            "keras",
            lambda: keras_declaring(folder / "declares.keras", keras, 8_000_000),
        ),
        ("baseline: the shipped int8 model", "model", lambda: int8),
        (
            "metadata nested 100,000 levels deep",
            "model",
            lambda: nested_metadata_family(folder / "nested", int8, 100_000),
        ),
    ]
    return [(description, kind, build()) for description, kind, build in built]


def measure(kind: str, path: Path) -> dict[str, Any]:
    """Reads `path` in a fresh process; its outcome, seconds, message and peak memory."""
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if completed.returncode != 0:
        return {"outcome": f"crashed ({completed.returncode})", "message": completed.stderr[-300:]}
    return json.loads(completed.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per input")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for description, kind, path in cases(Path(folder)):
            row = {"input": description, "file_mb": round(_disk_size(path) / 1e6, 1)}
            row.update(measure(kind, path))
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print("| input | file on disk (MB) | outcome | seconds | message chars | peak MB |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['input']} | {row['file_mb']} | {row['outcome']} | "
                f"{row.get('seconds', '')} | {row.get('message_chars', '')} | "
                f"{row.get('peak_mb', '')} |"
            )
    return 0


def _disk_size(path: Path) -> int:
    """Bytes a file takes on disk: a sparse file's holes count nothing."""
    return path.stat().st_blocks * 512


if __name__ == "__main__":
    sys.exit(main())
