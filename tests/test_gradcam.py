import numpy as np
import pytest

from pneumocnn import gradcam
from pneumocnn.config import Config
from pneumocnn.model import build_model, load_model


def _blob_image(size, centre, background=90.0):
    yy, xx = np.mgrid[:size, :size]
    image = background + 140 * np.exp(
        -((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * (size / 8) ** 2)
    )
    return np.clip(image, 0, 255).astype(np.uint8)[..., np.newaxis]


def test_heatmap_has_the_image_shape_is_finite_and_in_unit_range(trained_run):
    cam = gradcam.GradCam(load_model(trained_run / "best.keras"))
    heatmap, probability = cam.heatmap(_blob_image(32, (10, 20)))
    assert heatmap.shape == (32, 32)
    assert np.isfinite(heatmap).all()
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert 0.0 <= probability <= 1.0


def test_heatmap_peak_follows_a_bright_blob(trained_run):
    cam = gradcam.GradCam(load_model(trained_run / "best.keras"))
    peaks = []
    for centre in ((8, 8), (24, 24)):
        heatmap, _ = cam.heatmap(_blob_image(32, centre))
        peaks.append(np.unravel_index(np.argmax(heatmap), heatmap.shape))
    (y1, x1), (y2, x2) = peaks
    assert y1 < 16 <= y2 and x1 < 16 <= x2, peaks


def test_model_without_last_conv_block_is_refused():
    import keras

    model = build_model(Config(image_size=32))
    plain = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid", name="predictions"),
        ]
    )
    gradcam.GradCam(model)  # a pneumocnn model works
    with pytest.raises(ValueError, match="last_conv"):
        gradcam.GradCam(plain)
