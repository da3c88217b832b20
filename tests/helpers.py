"""Test helpers: tiny seeded synthetic images and data sets, and where the real data is.

A plain module (not conftest.py) so tests can import it by name: the notebooks folder has a
conftest.py of its own, and two modules named `conftest` cannot both be imported.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumocnn import web

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "chest_xray"
SHIPPED = Path(__file__).resolve().parents[1] / "saved_models"
SHIPPED_INT8 = SHIPPED / "pneumocnn_int8.tflite"
requires_shipped_model = pytest.mark.skipif(
    not SHIPPED_INT8.is_file(), reason="the shipped int8 model is not in saved_models/"
)

# A tiny model (the fixtures' and the multi-worker test's), trained without augmentation or
# mixup: these runs test the pipeline and the stages after it, not the recipe.
TINY_RUN = dict(
    image_size=32,
    base_filters=8,
    num_blocks=2,
    augment_strength=0,
    intensity_strength=0,
    mixup_alpha=0,
    seed=1,
    val_fraction=0.25,
)

requires_real_data = pytest.mark.skipif(
    not (REAL_DATA / "train").is_dir(),
    reason=f"the real data is not at {REAL_DATA} (see ../shared/chest_xray/README.md)",
)


def synthetic_xray(
    rng: np.random.Generator, label: int, size: tuple[int, int], subtype: str = "bacteria"
) -> np.ndarray:
    """A gray 'film' whose class shows as a bright blotch (PNEUMONIA), or none (NORMAL).

    With `subtype="virus"` the PNEUMONIA film shows a bright horizontal band across the middle
    instead of a blotch, so a three-class model can tell the subtypes apart.
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


def flags(**values) -> list[str]:
    """CLI flags from keyword arguments: `flags(image_size=32)` -> `["--image-size", "32"]`."""
    argv = []
    for name, value in values.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def write_image(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    """Saves `pixels` (2-D uint8) as `path` in `mode` (format from the extension)."""
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
    """Writes a tiny Kaggle-layout data set `root/train/{NORMAL,PNEUMONIA}/` and returns `root`.

    Kaggle-style names; a mix of JPEG and PNG, grayscale and RGB, and odd sizes. PNEUMONIA
    patients are all `person<N>_bacteria_<K>`, or with `subtypes` alternately bacteria and
    virus, with films to match (see `synthetic_xray`).
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


def real_films(count: int) -> list[np.ndarray]:
    """`count` films from the development half of the test split (alternately NORMAL and
    PNEUMONIA, the first by name), as 8-bit grayscale stretched to span 0-255 exactly, so the
    same pixels can be stored as PNG and as DICOM of any depth without rounding."""
    normal = sorted((REAL_DATA / "test" / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted((REAL_DATA / "test" / "PNEUMONIA").glob("*.jpeg"))
    paths = [path for pair in zip(normal, pneumonia, strict=False) for path in pair][:count]
    films = []
    for path in paths:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"), dtype=np.float64)
        stretched = (gray - gray.min()) * 255 / (gray.max() - gray.min())
        films.append(np.rint(stretched).astype(np.uint8))
    return films


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

    Args:
        path: where to write.
        pixels: uint8, uint16 or int16 stored values.
        photometric: "MONOCHROME1" or "MONOCHROME2".
        bits_stored: defaults to the dtype's bits.
        window: `(center, width)`, or `None` for no window.
        rescale: `(slope, intercept)` of the modality LUT, or `None`.
        voi_lut: `(LUTDescriptor, LUTData)` of a VOI LUT Sequence, or `None`.
        compress: a transfer syntax UID to compress with (pydicom's own encoders, e.g. RLE
            Lossless), or `None` for Explicit VR Little Endian.
        patient: `(PatientName, PatientID)`, which must never be printed.
    """
    from pydicom import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

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
    """A PNG whose header claims `width` x `height` (bit depth, colour type) but holds almost no
    data: a decompression bomb's header."""

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


def train_in_subprocess(argv: list[str], prelude: str = "", returncode: int = 0) -> None:
    """Runs `pneumocnn.train.main(argv)` in a fresh Python (after `prelude`, e.g. a patch), from
    the project root, and checks its exit status."""
    script = f"{prelude}\nimport sys\nfrom pneumocnn import train\nsys.exit(train.main({argv!r}))\n"
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == returncode, completed.stdout[-2000:] + completed.stderr[-3000:]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = web.CHROMIUM_ARGS
requires_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no chromium binary (apt-get install chromium)"
)


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serves `folder` over HTTP on 127.0.0.1 (a free port) for the duration of a block, as any
    static host would; yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def film_file(
    path: Path, label: int = 1, seed: int = 0, size: tuple[int, int] = (200, 160)
) -> Path:
    """Saves a synthetic film (see `synthetic_xray`) as `path`, format from its extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_xray(np.random.default_rng(seed), label, size)).save(path)
    return path


def shipped_copy(folder: Path) -> Path:
    """A copy of the shipped binary family (`saved_models/pneumocnn*` and its card), to edit."""
    folder.mkdir()
    for path in SHIPPED.glob("pneumocnn*"):
        if path.is_file() and not path.name.startswith("pneumocnn_subtype"):
            shutil.copy(path, folder / path.name)
    shutil.copy(SHIPPED / "MODEL_CARD.md", folder / "MODEL_CARD.md")
    return folder


def site_folder(root: Path, per_class: int) -> Path:
    """A labelled site folder: `per_class` synthetic films in each of NORMAL/ and PNEUMONIA/."""
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for index in range(per_class):
            film_file(root / name / f"person{index}_{name.lower()}.png", label, index)
    return root


def dead_process_id() -> int:
    """The id of a process that has ended: what a killed writer leaves in its scratch folder."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(finished.stdout)
