"""The input guard: refusals with reasons, an out-of-distribution score calibrated on films."""

import json

import numpy as np
import pytest
from PIL import Image

from pneumocnn.core.metadata import INT8_FILE, METADATA_FILE
from pneumocnn.data.images import colourfulness, read_grayscale, to_model_input
from pneumocnn.runtime import guard
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.testing import synthetic_xray


def _chest(rng, size=32):
    """A chest-like layout: two dark lungs, jittered, in a brighter body, with noise."""
    yy, xx = np.mgrid[:size, :size] / size
    image = np.full((size, size), 170.0) + rng.normal(0, 8, (size, size))
    for centre in (0.3, 0.7):
        x, y = centre + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.03)
        lung = ((xx - x) / 0.15) ** 2 + ((yy - y) / 0.3) ** 2 < 1
        image[lung] -= rng.uniform(90, 120)
    return np.clip(image, 0, 255).astype(np.uint8)


def _films(count, seed, size=32):
    rng = np.random.default_rng(seed)
    return np.stack([_chest(rng, size)[..., np.newaxis] for _ in range(count)])


def _saved(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return read_grayscale(path)


def test_a_gray_film_passes_every_refusal_check(tmp_path):
    film = synthetic_xray(np.random.default_rng(0), 1, (120, 100))
    assert guard.refusal(_saved(tmp_path, "film.png", Image.fromarray(film))) == []
    # The data set's films are RGB JPEGs with three equal channels: still gray.
    rgb = Image.fromarray(film).convert("RGB")
    assert guard.refusal(_saved(tmp_path, "film.jpeg", rgb)) == []


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_constant_image_is_refused_as_near_constant(tmp_path, value):
    gray = _saved(tmp_path, "blank.png", Image.new("L", (200, 200), value))
    (reason,) = guard.refusal(gray)
    assert reason.startswith("near-constant image")


def test_a_colour_photo_is_refused_before_its_colour_is_lost(tmp_path):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((320, 240))
    gray = _saved(tmp_path, "photo.jpeg", photo)
    assert gray.mode == "L" and colourfulness(photo) > guard.DEFAULT_LIMITS["max_colourfulness"]
    assert any(reason.startswith("strongly coloured") for reason in guard.refusal(gray))


def test_too_small_and_extreme_aspect_ratio_are_refused_with_their_sizes(tmp_path):
    pixels = synthetic_xray(np.random.default_rng(0), 1, (20, 20))
    (small,) = guard.refusal(_saved(tmp_path, "icon.png", Image.fromarray(pixels)))
    assert small.startswith("too small (20x20 px")
    strip = synthetic_xray(np.random.default_rng(0), 1, (600, 100))
    (wide,) = guard.refusal(_saved(tmp_path, "strip.png", Image.fromarray(strip)))
    assert wide.startswith("extreme aspect ratio (6.0:1")


def test_limits_from_the_metadata_override_the_defaults(tmp_path):
    gray = _saved(
        tmp_path,
        "film.png",
        Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (100, 100))),
    )
    assert guard.refusal(gray, limits={"min_side": 101})[0].startswith("too small")


def test_the_threshold_flags_at_most_the_chosen_share_of_validation_films():
    calibration = guard.fit(_films(80, 0), _films(50, 1), components=8, quantile=0.9)
    scores = calibration.scores(_films(50, 1))
    assert np.mean(scores > 1.0) <= 0.1
    assert calibration.fitted_on["val_flagged"] == pytest.approx(np.mean(scores > 1.0))


def test_images_unlike_the_films_score_far_above_them():
    calibration = guard.fit(_films(80, 0), _films(40, 1), components=8)
    yy, xx = np.mgrid[:32, :32]
    checkerboard = (((yy // 4) + (xx // 4)) % 2 * 200 + 20).astype(np.uint8)[..., np.newaxis]
    stripes = ((yy % 8 < 4) * 200 + 20).astype(np.uint8)[..., np.newaxis]
    held_out = calibration.scores(_films(20, 2))
    strange = calibration.scores(np.stack([checkerboard, stripes]))
    assert strange.min() > 1.0 and strange.min() > held_out.max()


def test_the_score_ignores_exposure():
    calibration = guard.fit(_films(60, 0), _films(30, 1), components=8)
    film = _films(1, 2)
    darker = (film.astype(np.float64) * 0.5).round().astype(np.uint8)
    assert calibration.scores(darker)[0] == pytest.approx(calibration.scores(film)[0], rel=0.05)


def test_the_calibration_survives_the_metadata_round_trip():
    calibration = guard.fit(_films(60, 0), _films(30, 1), components=8)
    entry = json.loads(json.dumps(calibration.to_dict()))
    again = guard.calibration_of({"guard": entry})
    films = _films(10, 3)
    assert np.allclose(again.scores(films), calibration.scores(films), rtol=1e-4)
    assert guard.calibration_of({}) is None


def test_a_malformed_calibration_names_the_fix():
    entry = guard.fit(_films(60, 0), _films(30, 1), components=8).to_dict()
    entry["components"]["shape"] = [7, 256]  # 8 components' values, said to be 7
    with pytest.raises(ValueError, match="Re-export the model"):
        guard.calibration_of({"guard": entry})


def test_judge_refuses_without_a_score_and_flags_low_resolution(tmp_path):
    calibration = guard.fit(_films(60, 0), _films(30, 1), components=8)
    blank = _saved(tmp_path, "blank.png", Image.new("L", (64, 64), 0))
    refused = guard.judge(blank, to_model_input(blank, 32), calibration, 32)
    assert (refused.status, refused.score) == (guard.REFUSED, None)
    film = _saved(
        tmp_path, "film.png", Image.fromarray(synthetic_xray(np.random.default_rng(5), 0, (40, 40)))
    )
    flagged = guard.judge(film, to_model_input(film, 32), calibration, 64)
    assert flagged.status == guard.FLAGGED and "low resolution" in flagged.reason
    assert flagged.score is not None


def test_the_export_writes_a_calibration_that_lite_model_reads(exported_model):
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    assert metadata["guard"]["fitted_on"]["val_images"] > 0
    model = LiteModel(exported_model / INT8_FILE)
    assert isinstance(model.guard, guard.GuardCalibration)
