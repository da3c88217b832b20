"""DICOM radiographs, built with pydicom from shared films: each must give the model exactly the
pixels the same film gives as a PNG, whatever its depth, photometric interpretation, window or
compression, and nothing about the patient may come out."""

import io
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import real_films, requires_real_data
from pneumocnn.data.images import load_image, read_grayscale
from pneumocnn.data.pixels import FRAMES_KEY, MAX_DECODED_BYTES, NOTES_KEY, ImageLoadError
from pneumocnn.testing import write_dicom

pydicom = pytest.importorskip("pydicom", reason="the lite extra (pydicom) is not installed")
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    RLELossless,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_INT8 = ROOT / "saved_models" / "pneumocnn_int8.tflite"
pytestmark = requires_real_data


@pytest.fixture(scope="module")
def films():
    return real_films(3)


def _lut_12_to_16_bits() -> tuple[list[int], np.ndarray]:
    """A VOI LUT taking 12-bit stored values 16 * p (p in 0-255) to 257 * p (full 16 bits)."""
    entries = np.minimum(65535, np.rint(np.arange(4096) * 65535 / 4080)).astype(np.int64)
    return [4096, 0, 16], entries


# name -> (stored values from the 8-bit film p, photometric, bits stored, write_dicom options)
CASES = {
    "8-bit MONOCHROME2": (lambda p: p, "MONOCHROME2", 8, {}),
    "8-bit MONOCHROME1": (lambda p: 255 - p, "MONOCHROME1", 8, {}),
    "16-bit MONOCHROME2 with a window": (
        lambda p: p.astype(np.uint16) * 257,
        "MONOCHROME2",
        16,
        {"window": (32768, 65536)},
    ),
    "16-bit MONOCHROME1 with a window": (
        lambda p: 65535 - p.astype(np.uint16) * 257,
        "MONOCHROME1",
        16,
        {"window": (32768, 65536)},
    ),
    "12-bit without a window (auto window)": (
        lambda p: p.astype(np.uint16) * 16,
        "MONOCHROME2",
        12,
        {},
    ),
    "12-bit MONOCHROME1 without a window": (
        lambda p: 4080 - p.astype(np.uint16) * 16,
        "MONOCHROME1",
        12,
        {},
    ),
    "signed 16-bit with a rescale and a window": (
        lambda p: (p.astype(np.int32) * 257 - 32768).astype(np.int16),
        "MONOCHROME2",
        16,
        {"window": (32768, 65536), "rescale": (1, 32768)},
    ),
    "12-bit with a VOI LUT sequence": (
        lambda p: p.astype(np.uint16) * 16,
        "MONOCHROME2",
        12,
        {"voi_lut": _lut_12_to_16_bits()},
    ),
    "12-bit deflated": (
        lambda p: p.astype(np.uint16) * 16,
        "MONOCHROME2",
        12,
        {"compress": DeflatedExplicitVRLittleEndian},
    ),
    "16-bit RLE Lossless compressed": (
        lambda p: p.astype(np.uint16) * 257,
        "MONOCHROME2",
        16,
        {"window": (32768, 65536), "compress": RLELossless},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dicom_gives_the_same_pixels_as_the_same_film_as_png(tmp_path, films, case):
    stored, photometric, bits, options = CASES[case]
    for index, film in enumerate(films):
        png = tmp_path / f"film{index}.png"
        Image.fromarray(film).save(png)
        dicom = tmp_path / f"film{index}.dcm"
        write_dicom(dicom, stored(film), photometric, bits, **options)
        np.testing.assert_array_equal(np.asarray(read_grayscale(dicom)), film, err_msg=case)
        np.testing.assert_array_equal(load_image(dicom, 64), load_image(png, 64), err_msg=case)


def test_dicom_prediction_matches_the_png_prediction(tmp_path, films):
    pytest.importorskip("ai_edge_litert", reason="the lite extra is not installed")
    from pneumocnn.runtime.lite import LiteModel

    model = LiteModel(SHIPPED_INT8)
    for index, film in enumerate(films):
        png = tmp_path / f"film{index}.png"
        Image.fromarray(film).save(png)
        for name, (stored, photometric, bits, options) in CASES.items():
            dicom = write_dicom(tmp_path / "x.dcm", stored(film), photometric, bits, **options)
            from_dicom, from_png = model.predict_file(dicom), model.predict_file(png)
            assert from_dicom.label == from_png.label, name
            assert from_dicom.probability == from_png.probability, name


def test_jpeg_compressed_dicom_decodes_through_pydicoms_pillow_plugin(tmp_path, films):
    film = films[0]
    buffer = io.BytesIO()
    Image.fromarray(film).save(buffer, format="JPEG", quality=90)
    (tmp_path / "film.jpeg").write_bytes(buffer.getvalue())
    dicom = write_dicom(tmp_path / "film.dcm", film, "MONOCHROME2", 8)
    dataset = pydicom.dcmread(dicom)
    dataset.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.LossyImageCompression = "01"
    dataset.save_as(dicom, enforce_file_format=True)
    np.testing.assert_array_equal(load_image(dicom, 64), load_image(tmp_path / "film.jpeg", 64))


def test_compressed_dicom_without_its_plugin_is_refused_naming_the_plugin(tmp_path, films):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLossless).is_available:
        pytest.skip("a JPEG Lossless plugin (pylibjpeg or gdcm) is installed")
    dicom = write_dicom(tmp_path / "lossless.dcm", films[0], "MONOCHROME2", 8)
    dataset = pydicom.dcmread(dicom)
    dataset.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + b"\0" * 64 + b"\xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGLossless
    dataset.save_as(dicom, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match="JPEG Lossless.*pylibjpeg") as error:
        load_image(dicom, 32)
    assert "lossless.dcm" in str(error.value)


def test_multi_frame_dicom_uses_the_first_frame_and_says_so(tmp_path, films):
    dicom = write_dicom(tmp_path / "frames.dcm", np.stack(films[:2]), "MONOCHROME2", 8)
    gray = read_grayscale(dicom)
    np.testing.assert_array_equal(np.asarray(gray), films[0])
    assert any(note.startswith("frame 1 of 2 read") for note in gray.info[NOTES_KEY])
    assert gray.info[FRAMES_KEY] == 2  # the input guard flags it, saying so (see guard.judge)


def _deflated_multi_frame(path: Path, frames: int, rows: int, columns: int) -> Path:
    """A deflated DICOM of `frames` blank 16-bit frames, streamed so it is never held whole."""
    from pydicom import Dataset, FileMetaDataset
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = Dataset()
    header.SOPClassUID, header.SOPInstanceUID = SecondaryCaptureImageStorage, "1.2.3"
    header.Rows, header.Columns, header.NumberOfFrames = rows, columns, frames
    header.SamplesPerPixel, header.PhotometricInterpretation = 1, "MONOCHROME2"
    header.BitsAllocated, header.BitsStored, header.HighBit = 16, 16, 15
    header.PixelRepresentation = 0
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, header)
    length = frames * rows * columns * 2
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as handle:
        handle.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(handle, meta, enforce_standard=True)
        handle.write(deflater.compress(body.getvalue()))
        handle.write(deflater.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)))
        block = bytes(1 << 22)
        for _ in range(length // len(block)):
            handle.write(deflater.compress(block))
        handle.write(deflater.compress(bytes(length % len(block))) + deflater.flush())
    return path


def test_multi_frame_dicom_bypassing_the_pixel_limit_is_refused_before_decoding(tmp_path):
    # The bug: the check read Rows x Columns and ignored NumberOfFrames; a 389 KB deflated file
    # of 100 frames of 2000 x 2000 took 4.5 GB and 12 s, and was labelled PNEUMONIA.
    path = _deflated_multi_frame(tmp_path / "frames.dcm", 100, 2000, 2000)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageLoadError, match=f"{MAX_DECODED_BYTES:,}"):
            load_image(path, 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64_000_000, f"{peak:,} bytes allocated to refuse it"
    assert time.perf_counter() - started < 30


def test_multi_frame_dicom_header_over_the_budget_is_refused_from_the_header(tmp_path, films):
    dicom = write_dicom(tmp_path / "claims.dcm", films[0], "MONOCHROME2", 8)
    dataset = pydicom.dcmread(dicom)
    dataset.NumberOfFrames = 100_000  # 5 GB of frames claimed, 50 KB present
    dataset.save_as(dicom, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match="100,000 frames of 224x224"):
        load_image(dicom, 32)


def _run_predict(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumocnn.predict", *arguments, "--model", str(SHIPPED_INT8)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_patient_identifiers_in_dicom_are_never_printed(tmp_path, films):
    pytest.importorskip("ai_edge_litert", reason="the lite extra is not installed")
    name, patient_id = "Doe^Jane", "SECRET-4711"
    good = write_dicom(tmp_path / "good.dcm", films[0], patient=(name, patient_id))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(good.read_bytes()[:-5000])  # pixel data cut short
    for flag in ([], ["--json"]):
        completed = _run_predict(str(good), str(broken), *flag)
        output = completed.stdout + completed.stderr
        assert "good.dcm" in output and "broken.dcm" in output, output
        for secret in ("Doe", "Jane", patient_id):
            assert secret not in output


def test_a_folder_of_dicom_files_is_walked_by_predict(tmp_path, films):
    pytest.importorskip("ai_edge_litert", reason="the lite extra is not installed")
    write_dicom(tmp_path / "films" / "a.dcm", films[0])
    Image.fromarray(films[1]).save(tmp_path / "films" / "b.png")
    completed = _run_predict(str(tmp_path / "films"), "--json")
    assert completed.returncode == 0, completed.stderr
    rows = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [Path(row["path"]).name for row in rows] == ["a.dcm", "b.png"]
    assert all(row.get("label") for row in rows)


def _tinted(film: np.ndarray) -> np.ndarray:
    return np.stack([film, (film * 0.9).astype(np.uint8), film // 2], axis=-1)


def test_colour_dicom_is_read_as_luminance_like_a_colour_png(tmp_path, films):
    from pydicom.pixels import convert_color_space

    rgb = _tinted(films[0])
    Image.fromarray(rgb).save(tmp_path / "film.png")
    expected = load_image(tmp_path / "film.png", 64).astype(int)
    as_rgb = write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", 8)
    np.testing.assert_array_equal(load_image(as_rgb, 64), expected)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    as_ybr = write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", 8)
    assert np.abs(load_image(as_ybr, 64).astype(int) - expected).max() <= 1  # Y is the luma


def test_ybr_colour_dicom_at_the_budget_is_read_without_a_float_copy_of_every_sample(tmp_path):
    # Found by the fuzz test: pydicom's own YBR-to-RGB conversion works in float64, so a YBR
    # file within the 128 MB budget took about 1.3 GB.
    side = int((MAX_DECODED_BYTES // 3) ** 0.5)
    ybr = np.zeros((side, side, 3), np.uint8)
    ybr[..., 0] = np.linspace(0, 255, side, dtype=np.uint8)
    ybr[..., 1:] = 128
    path = write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", 8)
    del ybr
    script = (
        "from pneumocnn.benchmark.timing import peak_memory_mb\n"
        "from pneumocnn.data.images import load_image\n"
        f"load_image({str(path)!r}, 32)\n"
        "print(round(peak_memory_mb()))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert int(completed.stdout.split()[-1]) < 600  # MB: the file, the array, one luminance
