"""Regressions of the issue "Hostile inputs and faults, round two", what goes in: files that
took memory past the budget (a PNG text chunk, JPEG APP segments, TIFF tags, a DICOM frame
claiming another size, a `.keras` member), metadata that is no JSON, other formats named like
films, files of several frames, DICOM windows that cannot be shown, a damaged JPEG 2000 frame.
Each test is named for the bug it pins."""

import io
import random
import re
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumocnn.benchmark.hostile_inputs import (
    dicom_with_frame,
    j2k_claiming,
    jpeg_claiming,
    jpeg_with_app_segments,
    keras_declaring,
    png_with_text_chunk,
    tiff_with_large_tag,
)
from pneumocnn.core.locations import default_model
from pneumocnn.core.metadata import MetadataError, load_metadata
from pneumocnn.data.images import load_image, read_grayscale
from pneumocnn.data.pixels import MAX_METADATA_BYTES, ImageLoadError
from pneumocnn.testing import synthetic_xray

# ---------------------------------------------------------------------------------------------
# Memory past the budget


def _refused_within(path: Path, limit: int = 20_000_000) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError) as error:
            load_image(path, 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak:,} bytes allocated to refuse it"
    return str(error.value)


def test_png_with_a_600_mb_text_chunk_is_refused_before_pillow_reads_it(tmp_path):
    # The bug: 1.28 GB before it was refused.
    path = png_with_text_chunk(tmp_path / "text.png", 600_000_000)
    assert path.stat().st_blocks * 512 < 1_000_000  # sparse
    assert "a 'tEXt' chunk of 600,000,000 bytes" in _refused_within(path)


def test_jpeg_with_more_app_segments_than_the_budget_is_refused_before_pillow_reads_them(tmp_path):
    path = jpeg_with_app_segments(tmp_path / "app.jpeg", 320)
    assert f"above the limit of {MAX_METADATA_BYTES:,}" in _refused_within(path)


def test_tiff_with_a_600_mb_tag_is_refused_before_pillow_reads_it(tmp_path):
    path = tiff_with_large_tag(tmp_path / "tag.tiff", 600_000_000)
    assert "TIFF tags of 600,000,000 bytes" in _refused_within(path)


def test_small_metadata_of_a_png_jpeg_or_tiff_does_not_stop_thefilm_file(tmp_path):
    for path in (
        jpeg_with_app_segments(tmp_path / "app.jpeg", 8),
        tiff_with_large_tag(tmp_path / "tag.tiff", 1000),
    ):
        assert load_image(path, 32).shape == (32, 32, 1)


@pytest.mark.parametrize("codec", ["jpeg-gray", "jpeg-colour", "jpeg2000"])
def test_dicom_whose_compressed_frame_claims_more_than_its_header_is_refused_undecoded(
    tmp_path, codec
):
    # The bug: a 224 x 224 header holding a 12000 x 12000 JPEG was decoded whole (1.48 GB in
    # colour, 492 MB gray) before the mismatch was noticed.
    pytest.importorskip("pydicom")
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    frame, syntax, samples = {
        "jpeg-gray": (jpeg_claiming(12000, 12000), JPEGBaseline8Bit, 1),
        "jpeg-colour": (jpeg_claiming(12000, 12000, 3), JPEGBaseline8Bit, 3),
        "jpeg2000": (j2k_claiming(12000, 12000), JPEG2000Lossless, 1),
    }[codec]
    path = dicom_with_frame(tmp_path / "bomb.dcm", 224, 224, frame, syntax, samples)
    assert "12000x12000 px" in _refused_within(path, 5_000_000)


def test_dicom_whose_compressed_frame_is_another_size_than_its_header_is_refused(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.uid import JPEGBaseline8Bit

    path = dicom_with_frame(
        tmp_path / "odd.dcm", 224, 224, jpeg_claiming(300, 200), JPEGBaseline8Bit
    )
    message = _refused_within(path)
    assert "224x224" in message and "300x200" in message and "contradicts itself" in message


def _keras_claiming(path: Path, member: str, size: int) -> Path:
    """A zip whose directory says `member` inflates to `size` bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, b"{}")
        archive.writestr("model.weights.h5", b"")
    content = bytearray(path.read_bytes())
    at = content.find(b"PK\x01\x02")  # the first central directory entry: `member`
    content[at + 24 : at + 28] = size.to_bytes(4, "little")  # its uncompressed size
    path.write_bytes(bytes(content))
    return path


def test_keras_file_whose_config_inflates_past_the_budget_is_refused_before_keras_opens_it(
    tmp_path,
):
    # The bug: a 5.2 MB .keras holding a 1 GiB config.json took 40 s and 7 GB, and its error
    # carried 1,073,743,168 bytes of Keras's text.
    from pneumocnn.network.model import check_keras_archive

    path = _keras_claiming(tmp_path / "huge.keras", "config.json", 1 << 30)
    with pytest.raises(ValueError, match="1,073,741,824") as error:
        check_keras_archive(path)
    assert len(str(error.value)) < 1000


def test_keras_file_whose_config_really_inflates_past_the_budget_is_refused(tmp_path):
    from pneumocnn.network.model import load_model

    path = tmp_path / "big.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b"{" + b" " * (MAX_METADATA_BYTES + 1) + b"}")
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match="config.json"):
        load_model(path)


def test_keras_file_whose_small_config_declares_huge_weights_is_refused_without_allocating(
    tmp_path,
):
    # The bug: the shipped .keras with its last layer's units edited to 8,000,000 in config.json
    # (8 GB of float32 weights) was built, weights allocated and initialized, before Keras read
    # the weights file. A fresh interpreter measures its own peak memory around the check.
    path = keras_declaring(tmp_path / "declares.keras", default_model("keras"), 8_000_000)
    assert path.stat().st_size < 2 * default_model("keras").stat().st_size
    script = (
        "import sys\n"
        "from pneumocnn.benchmark.timing import peak_memory_mb\n"
        "from pneumocnn.network.model import load_model\n"
        "try:\n"
        "    load_model(sys.argv[1])\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        "print(int(peak_memory_mb()))\n"  # VmHWM: ru_maxrss would carry pytest's peak over
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    message, peak_mib = done.stdout.strip().rsplit("\n", 1)
    declared = int(re.search(r"declares ([\d,]+) bytes of weights", message)[1].replace(",", ""))
    assert declared > 8_192_000_000 and "declares.keras" in message, message
    assert int(peak_mib) < 2000, f"peak {peak_mib} MiB: the weights were allocated"


def test_the_declared_weights_check_passes_the_shipped_model_and_leaves_no_pending_variables():
    from pneumocnn.network.model import _uninitialized_variables, check_declared_weights

    before = _uninitialized_variables()
    declared = check_declared_weights(default_model("keras"))
    assert 50_000 < declared < 10_000_000
    assert _uninitialized_variables() == before


def test_the_declared_weights_check_leaves_the_seeded_generators_as_they_were():
    # Building the layers draws default seeds; a seeded fine-tuning that loads its model after
    # seeding (pneumocnn.adaptation.finetune) must learn what it learnt before the check existed.
    from pneumocnn.network.model import check_declared_weights

    random.seed(3)
    np.random.seed(3)
    expected = (random.random(), np.random.rand())
    random.seed(3)
    np.random.seed(3)
    check_declared_weights(default_model("keras"))
    assert (random.random(), np.random.rand()) == expected


# ---------------------------------------------------------------------------------------------
# Metadata that is no JSON


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"format_version": 1, "name": "\xff"}', "not UTF-8 text: byte 0xff"),
        (b"{" + b" " * (MAX_METADATA_BYTES + 1) + b"}", "larger than"),
    ],
    ids=["nested-100000-deep", "not-utf8", "too-large"],
)
def test_metadata_that_cannot_be_read_is_a_usage_error_naming_the_file(tmp_path, content, reason):
    # The bug: 100,000 levels of nesting ended in a RecursionError traceback; bytes that are not
    # UTF-8 gave "'utf-8' codec can't decode byte 0xff" naming no file.
    path = tmp_path / "pneumocnn.json"
    path.write_bytes(content)
    with pytest.raises(MetadataError) as error:
        load_metadata(path)
    assert reason in str(error.value) and str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# Formats: only films, and which frame was read


def _encoded(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind, name",
    [
        ("GIF", "x.png"),
        ("WEBP", "x.jpeg"),
        ("BMP", "x.png"),
        ("TGA", "x.png"),
        ("ICO", "x.png"),
        ("PPM", "x.jpeg"),
        ("JPEG2000", "x.jpeg"),
    ],
)
def test_an_image_in_another_format_named_like_a_film_is_refused_naming_its_format(
    tmp_path, kind, name
):
    # The bug: classified on its first frame without a word.
    film = Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (64, 64)))
    (tmp_path / name).write_bytes(_encoded(film, kind))
    with pytest.raises(ImageLoadError, match=f"in the {kind} format"):
        load_image(tmp_path / name, 32)


def test_an_eps_named_jpeg_never_reaches_ghostscript(tmp_path, monkeypatch):
    import PIL.EpsImagePlugin

    monkeypatch.setattr(
        PIL.EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript ran")
    )
    (tmp_path / "x.jpeg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n")
    with pytest.raises(ImageLoadError, match="in the EPS format"):
        load_image(tmp_path / "x.jpeg", 32)


@pytest.mark.parametrize("kind", ["APNG", "TIFF"])
def test_a_file_of_several_frames_whose_first_is_blank_is_refused_saying_which_frame(
    tmp_path, kind
):
    # The bug: refused as blank, without a word that a later frame is the film.
    from pneumocnn.runtime import guard

    film = Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (200, 160)))
    blank = Image.new("L", film.size, 0)
    path = tmp_path / ("x.png" if kind == "APNG" else "x.tiff")
    if kind == "APNG":
        blank.save(path, save_all=True, append_images=[film])
    else:
        blank.save(path, save_all=True, append_images=[film.copy(), film.copy()])
    gray = read_grayscale(path)
    verdict = guard.judge(gray, None, None)
    frames = 2 if kind == "APNG" else 3
    assert verdict.status == guard.REFUSED and f"frame 1 of {frames} read" in verdict.reason
    film_first = tmp_path / ("y.png" if kind == "APNG" else "y.tiff")
    film.save(film_first, save_all=True, append_images=[blank])
    verdict = guard.judge(read_grayscale(film_first), None, None)
    assert verdict.status == guard.FLAGGED and "frame 1 of 2 read" in verdict.reason


# ---------------------------------------------------------------------------------------------
# DICOM windows, and a damaged JPEG 2000 frame


def _windowed_dicom(path: Path, center: str, width: str) -> Path:
    from pneumocnn.testing import write_dicom

    film = synthetic_xray(np.random.default_rng(0), 1, (64, 64)).astype(np.uint16) * 16
    write_dicom(path, film, "MONOCHROME2", 12, window=(1111, 2222))
    raw = path.read_bytes()
    for old, new in ((b"1111.0", center), (b"2222.0", width)):  # the same length, as written
        raw = raw.replace(old, new.encode().ljust(len(old)), 1)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize(
    "center, width, expected",
    [
        ("nan", "100", "WindowCenter that is not a finite number"),
        ("inf", "100", "WindowCenter that is not a finite number"),
        ("2048", "1e30", "window that shows every value the file can hold"),
        ("1e30", "100", "window that shows every value the file can hold"),
        ("abcd", "100", "WindowCenter that is not a finite number"),
        ("2048", "0", "window width below 1"),
    ],
    ids=["nan", "infinite", "1e30-wide", "1e30-centre", "text", "zero-wide"],
)
def test_a_dicom_window_that_cannot_be_shown_is_named_as_the_problem(
    tmp_path, center, width, expected
):
    # The bug: NaN, infinite and 1e30 windows were refused as a "near-constant image"; a text
    # window gave a TypeError.
    pytest.importorskip("pydicom")
    path = _windowed_dicom(tmp_path / "w.dcm", center, width)
    with pytest.raises(ImageLoadError, match=expected):
        load_image(path, 32)


def test_a_damaged_jpeg_2000_dicom_is_refused_without_a_logged_traceback(tmp_path, caplog):
    # The bug: pydicom logged the decoder's traceback before the error.
    pytest.importorskip("pydicom")
    from pydicom.uid import JPEG2000Lossless

    film = Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (64, 64)))
    frame = bytearray(_encoded(film, "JPEG2000", no_jp2=True))
    frame[60:300] = bytes(240)  # the tiles, damaged; the size header intact
    path = dicom_with_frame(tmp_path / "broken.dcm", 64, 64, bytes(frame), JPEG2000Lossless)
    with caplog.at_level("DEBUG"), pytest.raises(ImageLoadError, match="cannot be decoded"):
        load_image(path, 32)
    assert not [record for record in caplog.records if record.exc_info], caplog.text
