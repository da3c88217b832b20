import re

import numpy as np
import pytest
from PIL import Image

from pneumocnn.data.images import load_image, load_images, read_grayscale
from pneumocnn.data.pixels import ImageLoadError


def test_grayscale_jpeg_gives_square_uint8_single_channel(tmp_path):
    path = tmp_path / "a.jpeg"
    Image.fromarray(np.full((50, 80), 200, np.uint8)).save(path)
    image = load_image(path, 32)
    assert image.shape == (32, 32, 1)
    assert image.dtype == np.uint8
    assert 190 <= image.mean() <= 210  # raw pixels, not normalised


def test_rgb_png_of_odd_size_is_converted_to_luminance(tmp_path):
    path = tmp_path / "b.png"
    rgb = np.zeros((37, 91, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: luminance 0.587 * 255 = 150
    Image.fromarray(rgb).save(path)
    image = load_image(path, 16)
    assert image.shape == (16, 16, 1)
    assert abs(int(image[8, 8, 0]) - 150) <= 1


def test_16_bit_png_is_stretched_to_full_8_bit_range(tmp_path):
    path = tmp_path / "c.png"
    pixels = np.tile(np.linspace(1000, 4000, 64).astype(np.uint16), (64, 1))
    Image.fromarray(pixels).save(path)
    image = np.asarray(read_grayscale(path))
    assert image.min() == 0 and image.max() == 255


def test_corrupt_file_raises_load_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.jpeg"
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpeg"):
        load_image(path, 32)


def test_truncated_jpeg_raises_load_error(tmp_path):
    path = tmp_path / "cut.jpeg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cut.jpeg"):
        load_image(path, 32)


def test_load_images_skips_and_reports_unreadable_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    images, kept, skipped = load_images([good, bad, good], 8)
    assert images.shape == (2, 8, 8, 1)
    assert kept == [0, 2]
    assert [path for path, _ in skipped] == [str(bad)]


def test_dicom_file_is_read_with_pydicom_and_windowed_to_8_bits(tmp_path):
    examples = pytest.importorskip("pydicom.examples", reason="the app extra is not installed")
    source = examples.get_path("ct")  # a 128x128, 16-bit CT slice shipped with pydicom
    renamed = tmp_path / "scan.bin"  # no .dcm extension: found by its DICM preamble
    renamed.write_bytes(source.read_bytes())
    for path in (source, renamed):
        image = load_image(path, 64)
        assert image.shape == (64, 64, 1) and image.dtype == np.uint8
        assert image.min() < 30 and image.max() > 220  # the full 8-bit range is used


def test_upload_like_file_object_is_read_and_named_in_errors():
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30), 50, np.uint8)).save(buffer, format="PNG")
    buffer.seek(0)
    assert load_image(buffer, 8, name="upload.png").shape == (8, 8, 1)
    with pytest.raises(ImageLoadError, match="upload.jpeg"):
        load_image(io.BytesIO(b"junk"), 8, name="upload.jpeg")


def test_error_names_the_whole_path_not_just_the_file_name(tmp_path):
    path = tmp_path / "sub" / "broken.png"
    path.parent.mkdir()
    path.write_bytes(b"nope")
    with pytest.raises(ImageLoadError, match=re.escape(str(path))):
        load_image(path, 8)
