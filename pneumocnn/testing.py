"""Synthetic films and the files made from them, for tests and experiments; the app in a headless
server, for browser tests and screenshots.

Tiny seeded gray "films" whose class shows in the pixels, written as images, as a Kaggle-layout
data set, as DICOM, or as a PNG header that lies about its size. The tests use them, and so do
the experiments (the input guard's non-chest set, the loader's worst inputs), which is why they
live in the package rather than in `tests/`. Needs only numpy and Pillow; `write_dicom` needs
pydicom too (the `lite` and `app` extras install it), `serve_app` Streamlit (the `app` extra).

Example:

>>> import numpy as np
>>> synthetic_xray(np.random.default_rng(0), 1, (48, 40)).shape
(40, 48)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import subprocess
import sys
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.core.locations import MODEL_DIR_ENV_VAR

try:  # optional (the `lite` and `app` extras): only `write_dicom` needs it
    from pydicom import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
except ImportError:
    Dataset = None

__all__ = [
    "png_claiming",
    "serve_app",
    "synthetic_xray",
    "write_dataset",
    "write_dicom",
    "write_image",
]

# The Streamlit page `serve_app` runs (a path: the command module is not imported here).
APP_FILE = Path(__file__).resolve().parent / "app.py"


def synthetic_xray(
    rng: np.random.Generator, label: int, size: tuple[int, int], subtype: str = "bacteria"
) -> np.ndarray:
    """A gray 'film' whose class shows as a bright blotch (PNEUMONIA), or none (NORMAL).

    With `subtype="virus"` the PNEUMONIA film shows a bright horizontal band across the middle
    instead of a blotch, so a three-class model can tell the subtypes apart.

    Args:
        rng: the random generator (seeded by the caller, so films repeat).
        label: 0 for NORMAL, 1 for PNEUMONIA.
        size: `(width, height)` in pixels.
        subtype: "bacteria" or "virus", for a PNEUMONIA film. Defaults to "bacteria".

    Returns:
        A `(height, width)` uint8 array.
    """
    width, height = size
    image = rng.normal(90, 20, (height, width))
    yy, xx = np.mgrid[:height, :width]
    if label == 1 and subtype == "virus":
        image += 110 * np.exp(-((yy - height / 2) ** 2) / (2 * (height / 10) ** 2))
    elif label == 1:
        y, x = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
        image += 120 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (min(size) / 6) ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    """Saves `pixels` as an image file, its format from the extension.

    Args:
        path: where to write (parent folders are made).
        pixels: a 2-D uint8 array.
        mode: the Pillow mode to store it in, e.g. "L" or "RGB". Defaults to "L".

    Returns:
        `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").convert(mode).save(path)
    return path


def write_dataset(
    root: Path,
    patients: int = 6,
    images_per_patient: int = 2,
    seed: int = 0,
    subtypes: bool = False,
) -> Path:
    """Writes a tiny Kaggle-layout data set, `root/train/{NORMAL,PNEUMONIA}/`.

    Kaggle-style names; a mix of JPEG and PNG, grayscale and RGB, and odd sizes. PNEUMONIA
    patients are all `person<N>_bacteria_<K>`, or with `subtypes` alternately bacteria and
    virus, with films to match (see `synthetic_xray`).

    Args:
        root: the data set's folder.
        patients: patients per class. Defaults to 6.
        images_per_patient: films per patient. Defaults to 2.
        seed: the seed of the films and their sizes. Defaults to 0.
        subtypes: alternate bacterial and viral PNEUMONIA patients. Defaults to False.

    Returns:
        `root`.
    """
    rng = np.random.default_rng(seed)
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for patient in range(patients):
            subtype = "virus" if subtypes and patient % 2 else "bacteria"
            for shot in range(images_per_patient):
                if label == 0:
                    stem = f"IM-{patient:04d}-{shot + 1:04d}"
                else:
                    stem = f"person{patient}_{subtype}_{shot + 1}"
                extension, mode = [(".jpeg", "L"), (".png", "RGB"), (".jpeg", "RGB")][
                    (patient + shot) % 3
                ]
                size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
                pixels = synthetic_xray(rng, label, size, subtype)
                write_image(root / "train" / name / f"{stem}{extension}", pixels, mode)
    return root


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    *,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[list[int], np.ndarray] | None = None,
    compress: str | None = None,
    patient: tuple[str, str] = ("Doe^Jane", "SECRET-4711"),
) -> Path:
    """Writes `pixels` (rows x columns, or frames x rows x columns) as a DX DICOM file.

    Uncompressed or deflated, the same pixels always give the same bytes (the instance UID comes
    from them); pydicom's `compress` draws a new UID. Needs pydicom.

    Args:
        path: where to write (parent folders are made).
        pixels: uint8, uint16 or int16 stored values.
        photometric: "MONOCHROME1" or "MONOCHROME2" (or a colour one, e.g. "YBR_FULL").
            Defaults to "MONOCHROME2".
        bits_stored: the stored bits. Defaults to `None`: the dtype's bits.
        window: `(center, width)`. Defaults to `None`: no window.
        rescale: `(slope, intercept)` of the modality LUT. Defaults to `None`: none.
        voi_lut: `(LUTDescriptor, LUTData)` of a VOI LUT Sequence. Defaults to `None`: none.
        compress: a transfer syntax UID to compress with (pydicom's own encoders, e.g. RLE
            Lossless). Defaults to `None`: Explicit VR Little Endian.
        patient: `(PatientName, PatientID)`, which must never be printed. Defaults to a
            made-up patient.

    Returns:
        `path`.
    """
    if Dataset is None:
        raise ImportError('write_dicom needs pydicom: pip install "pneumocnn[lite]"')
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.Modality = "DX"
    dataset.PatientName, dataset.PatientID = patient
    bits = bits_stored or pixels.dtype.itemsize * 8
    dataset.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    # A UID from the pixels, so the same film always gives the same bytes (the fuzz test relies
    # on it).
    dataset.SOPInstanceUID = "2.25." + str(
        int(hashlib.sha256(pixels.tobytes()).hexdigest()[:24], 16)
    )
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
        dataset.RescaleType = "US"
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = voi_lut[0]
        item.add_new(0x00283006, "US", [int(value) for value in voi_lut[1]])  # LUTData
        dataset.VOILUTSequence = Sequence([item])
    if compress == "1.2.840.10008.1.2.1.99":  # Deflated Explicit VR Little Endian
        meta.TransferSyntaxUID = compress
    elif compress is not None:
        dataset.compress(compress)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def png_claiming(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """A PNG whose header claims `width` x `height` but holds almost no data: a decompression
    bomb's header.

    Args:
        width: the claimed width.
        height: the claimed height.
        depth: the claimed bit depth. Defaults to 8.
        colour: the claimed PNG colour type (0 gray, 2 RGB, 6 RGBA, ...). Defaults to 0.

    Returns:
        The PNG file's bytes.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def read_embedded_labels(model: bytes, name: str = "labels.txt") -> list[str]:
    """The labels packed in a `.tflite` by `pneumocnn.edge.embedded.embed_metadata`, one a line;
    `name` picks the file (`GUARD_LABELS_FILE` for the guard head's)."""
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        return archive.read(name).decode().splitlines()


@contextlib.contextmanager
def serve_app(
    port: int, model_folder: str | Path | None = None, timeout: float = 60
) -> Iterator[str]:
    """Runs the app in a headless Streamlit server on 127.0.0.1 for the duration of a block.

    For browser tests and screenshots.

    Args:
        port: a free local port.
        model_folder: the exported model folder. Defaults to `None` (see
            `pneumocnn.core.locations.default_model_dir`).
        timeout: seconds to wait for the server to answer. Defaults to 60.

    Yields:
        The app's URL.

    Raises:
        RuntimeError: if the server does not answer in time (its output is in the message).
    """
    env = dict(os.environ)
    if model_folder is not None:
        env[MODEL_DIR_ENV_VAR] = str(model_folder)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_FILE),
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    server.kill()
                    output = server.stdout.read().decode(errors="replace")
                    raise RuntimeError(f"The app did not start on {url}:\n{output}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
