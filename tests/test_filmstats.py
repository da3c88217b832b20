import numpy as np
import pytest

from pneumocnn.data.filmstats import film_statistics


def _film(border: int, body: float = 0.5) -> np.ndarray:
    """A 100x100 film: a bright body filling `body` of the width, on a `border` background."""
    film = np.full((100, 100), border, np.uint8)
    half = int(50 * body)
    film[10:90, 50 - half : 50 + half] = 200
    return film


def test_a_brighter_border_raises_border_mean_and_ratio():
    dark, bright = film_statistics(_film(10)), film_statistics(_film(90))
    assert bright["border_mean"] > dark["border_mean"]
    assert bright["border_ratio"] > dark["border_ratio"]


def test_a_tighter_frame_fills_more_of_the_width():
    loose, tight = film_statistics(_film(10, body=0.4)), film_statistics(_film(10, body=0.9))
    assert tight["body_width"] > loose["body_width"]
    assert tight["body_width"] == pytest.approx(0.9, abs=0.02)


def test_blur_lowers_sharpness():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (64, 64)).astype(np.float64)
    blurred = (sharp + np.roll(sharp, 1, 0) + np.roll(sharp, 1, 1) + np.roll(sharp, 1, (0, 1))) / 4
    assert film_statistics(blurred)["sharpness"] < film_statistics(sharp)["sharpness"]


def test_a_colour_array_is_refused_with_its_shape():
    with pytest.raises(ValueError, match=r"shape=\(8, 8, 3\)"):
        film_statistics(np.zeros((8, 8, 3)))


def test_tissue_at_the_edges_raises_the_side_mean():
    loose, tight = film_statistics(_film(10, body=0.5)), film_statistics(_film(10, body=1.0))
    assert tight["side_mean"] > loose["side_mean"]
