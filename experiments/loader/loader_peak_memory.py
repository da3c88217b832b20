"""Peak memory of `python -m pneumocnn.predict` on the worst inputs that fit the loader's budget.

Builds, in a temporary folder, one file of each kind as close to `MAX_DECODED_BYTES` as it can
get (16-bit and 12-bit DICOM, deflated and multi-frame DICOM, 8-bit, 16-bit and RGBA PNG, an
RGB JPEG turned by EXIF, a float TIFF), runs `predict` on each in its own process under
`/usr/bin/time -v`, and prints the peak resident memory of each run next to a baseline run on a
small film.

    python experiments/loader/loader_peak_memory.py
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.core.locations import default_model
from pneumocnn.data.pixels import MAX_DECODED_BYTES
from pneumocnn.testing import write_dicom

ROOT = Path(__file__).resolve().parents[2]

MODEL = default_model("int8")


def _gradient(rows: int, columns: int, dtype, high: int) -> np.ndarray:
    """A film-like ramp (not constant, so nothing compresses it away in memory)."""
    row = np.linspace(0, high, columns).astype(dtype)
    return np.broadcast_to(row, (rows, columns)).copy()


def _side(bytes_per_pixel: int, frames: int = 1) -> int:
    return math.isqrt(MAX_DECODED_BYTES // (bytes_per_pixel * frames))


def _deflated_dicom(path: Path, frames: int, rows: int, columns: int) -> Path:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    plain = write_dicom(
        path.with_suffix(".plain.dcm"),
        np.stack([_gradient(rows, columns, np.uint16, 4095)] * frames),
        "MONOCHROME2",
        12,
        window=(2048, 4096),
    )
    dataset = pydicom.dcmread(plain)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    plain.unlink()
    return path


def build(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    small = Image.fromarray(_gradient(224, 224, np.uint8, 255))
    files["baseline: 224x224 JPEG"] = folder / "small.jpeg"
    small.save(files["baseline: 224x224 JPEG"])

    side = _side(2)
    files[f"DICOM 16-bit MONOCHROME1 {side}x{side}, window"] = write_dicom(
        folder / "deep.dcm",
        _gradient(side, side, np.uint16, 65535),
        "MONOCHROME1",
        16,
        window=(32768, 65536),
    )
    files[f"DICOM 12-bit {side}x{side}, no window (two passes)"] = write_dicom(
        folder / "auto.dcm", _gradient(side, side, np.uint16, 4095), "MONOCHROME2", 12
    )
    side = _side(3)
    ybr = np.full((side, side, 3), 128, np.uint8)
    ybr[..., 0] = _gradient(side, side, np.uint8, 255)
    files[f"DICOM YBR_FULL colour {side}x{side}"] = write_dicom(
        folder / "ybr.dcm", ybr, "YBR_FULL", 8
    )
    del ybr
    frames, rows = 16, _side(2, 16)
    files[f"DICOM {frames} frames of {rows}x{rows} 16-bit"] = write_dicom(
        folder / "frames.dcm",
        np.stack([_gradient(rows, rows, np.uint16, 65535)] * frames),
        "MONOCHROME2",
        16,
    )
    rows = _side(2, 2) - 64  # the inflated data set holds a little more than the pixels
    files[f"DICOM deflated, 2 frames of {rows}x{rows} 12-bit"] = _deflated_dicom(
        folder / "deflated.dcm", 2, rows, rows
    )
    side = _side(1)
    files[f"PNG 8-bit {side}x{side}"] = folder / "gray.png"
    Image.fromarray(_gradient(side, side, np.uint8, 255)).save(files[f"PNG 8-bit {side}x{side}"])
    side = _side(2)
    files[f"PNG 16-bit {side}x{side}, EXIF orientation 6"] = folder / "deep.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_gradient(side, side, np.uint16, 65535)).save(
        folder / "deep.png", exif=exif.tobytes()
    )
    side = _side(4)
    rgb = np.stack([_gradient(side, side, np.uint8, 255)] * 3, axis=-1)
    files[f"JPEG RGB {side}x{side}, EXIF orientation 6"] = folder / "rgb.jpeg"
    Image.fromarray(rgb).save(folder / "rgb.jpeg", exif=exif.tobytes(), quality=90)
    files[f"PNG RGBA {side}x{side}"] = folder / "rgba.png"
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    files[f"TIFF float32 {side}x{side}"] = folder / "float.tiff"
    Image.fromarray(_gradient(side, side, np.float32, 1000)).save(folder / "float.tiff")
    del rgb
    return files


def peak_mb(path: Path) -> tuple[float, str]:
    completed = subprocess.run(
        [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "pneumocnn.predict",
            str(path),
            "--model",
            str(MODEL),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", completed.stderr)
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    return int(match.group(1)) / 1024, (lines[-1] if lines else completed.stderr[-300:])


def main() -> int:
    # No options: the parser answers --help (without it, the script would do its work).
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(f"Budget: MAX_DECODED_BYTES = {MAX_DECODED_BYTES:,} bytes\n")
    # File sizes in MB (10^6 bytes); the peak from time -v (kbytes, 1,024 bytes) in MiB.
    print("| input | file MB | peak RSS of predict, MiB | result |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, path in build(Path(folder)).items():
            peak, result = peak_mb(path)
            size = path.stat().st_size / 1e6
            result = re.sub(r"\s+", " ", result.replace(str(path), path.name))[:70]
            print(f"| {name} | {size:.1f} | {peak:.0f} | {result} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
