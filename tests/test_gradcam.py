import numpy as np
import pytest

from pneumocnn.core.config import Config
from pneumocnn.core.task import Task
from pneumocnn.network.model import LAST_CONV_LAYER, OUTPUT_LAYER, build_model, load_model
from pneumocnn.runtime import gradcam


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


def _brightness_model(size=32):
    """A hand-set model whose score rises with the mean brightness of its `last_conv` features,
    which copy the image: Grad-CAM must then follow the bright pixels, by construction (a
    trained toy model's features are whatever its few epochs made them)."""
    import keras

    inputs = keras.Input((size, size, 1))
    features = keras.layers.Conv2D(1, 1, kernel_initializer="ones", name=LAST_CONV_LAYER)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.Constant(0.01),
        bias_initializer=keras.initializers.Constant(-1.0),
        name=OUTPUT_LAYER,
    )(pooled)
    return keras.Model(inputs, outputs)


def test_heatmap_peak_follows_a_bright_blob():
    cam = gradcam.GradCam(_brightness_model())
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


def test_the_shipped_architecture_is_explained_on_at_least_10x10_cells():
    model = build_model(Config(image_size=160, num_blocks=5))  # the shipped recipe's shape
    cam = gradcam.GradCam(model)
    assert min(cam.cells) >= 10 and cam.layer_name != "last_conv_relu"
    assert int(model.get_layer("last_conv_relu").output.shape[1]) < 10  # the old, 5x5 map


def test_the_evidence_never_exceeds_the_probability_the_user_is_shown(trained_run):
    cam = gradcam.GradCam(load_model(trained_run / "best.keras"))
    image = _blob_image(32, (16, 16))
    for shown in (0.05, 0.6):
        result = gradcam.explain_image(
            cam,
            image,
            0.5,
            Task.of("binary"),
            label="PNEUMONIA" if shown >= 0.5 else "NORMAL",
            probabilities={"NORMAL": 1 - shown, "PNEUMONIA": shown},
        )
        assert result.probability == shown  # the given (int8) probability, not the float one
        assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= shown + 1e-6
        assert result.label == ("PNEUMONIA" if shown >= 0.5 else "NORMAL")


def test_the_overlay_is_one_film_with_a_fixed_scale_and_a_title_that_fits():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    image = _blob_image(32, (16, 16))
    figure = gradcam.overlay_figure(
        image,
        np.full((32, 32), 0.2, np.float32),
        0.2,
        0.27,
        "a-very-long-file-name-from-a-hospital-archive-0001.jpeg",
        label="NORMAL",
        note="flagged: unlike the training films",
    )
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    film, bar = figure.axes  # one film, and its colour bar
    assert len(film.images) == 2  # the film and the evidence over it, once
    assert bar.get_ylim() == (0.0, 1.0)  # fixed scale, whatever the map's own maximum
    title = film.title.get_window_extent(canvas.get_renderer())
    assert 0 <= title.x0 and title.x1 <= figure.bbox.width
    assert "NORMAL" in film.get_title() and "0.200" in film.get_title()
