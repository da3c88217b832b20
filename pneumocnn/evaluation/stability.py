"""How much one grey level of pixel noise moves a model's P(pneumonia): what another JPEG
decoder or resizer does to a film; and those clients' perturbations of a film."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from pneumocnn.core.task import (
    class_probabilities,
    pneumonia_probability,
)
from pneumocnn.data.images import read_grayscale, to_model_input


def grey_level_noise(images: np.ndarray, draws: int, seed: int):
    """Yields `draws` seeded copies of raw 0-255 `images` with -1, 0 or +1 grey level added to
    every pixel independently, clipped to 0-255, in the images' dtype."""
    images = np.asarray(images)
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        noisy = np.clip(images.astype(np.int16) + rng.integers(-1, 2, images.shape), 0, 255)
        yield noisy.astype(images.dtype)


def pixel_noise_sensitivity(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    draws: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """How far P(pneumonia) moves when every pixel moves by at most one grey level.

    Another JPEG decoder or resizer (a browser canvas, MediaPipe, Android's bitmap scaling)
    hands the model pixels a grey level or so away from pneumocnn's loader. This runs the model
    on `draws` seeded copies of `images` with independent -1, 0 or +1 grey levels per pixel
    (clipped to 0-255) and reports the change of P(pneumonia) against the images as given.
    A call whose P(pneumonia) lies closer to the threshold than `p99_change` may change with
    such a client.

    Args:
        predict_proba: the model, raw 0-255 images `(n, H, W, 1)` -> probabilities.
        images: raw 0-255 images.
        draws: noisy copies per image. Defaults to 5.
        seed: seeds the noise. Defaults to 0.

    Returns:
        `films`, `draws`, and the `mean_change`, `p99_change` (99th percentile over films and
        draws) and `max_change` of P(pneumonia).

    Example:

    >>> steady = lambda x: np.full(len(x), 0.3)
    >>> pixel_noise_sensitivity(steady, np.zeros((2, 4, 4, 1)))["max_change"]
    0.0
    """
    images = np.asarray(images)
    base = pneumonia_probability(class_probabilities(predict_proba(images)))
    changes = []
    for noisy in grey_level_noise(images, draws, seed):
        moved = pneumonia_probability(class_probabilities(predict_proba(noisy)))
        changes.append(np.abs(moved - base))
    changes = np.concatenate(changes)
    return {
        "films": int(len(images)),
        "draws": int(draws),
        "mean_change": round(float(changes.mean()), 4),
        "p99_change": round(float(np.percentile(changes, 99)), 4),
        "max_change": round(float(changes.max()), 4),
    }


def resize_without_antialiasing(gray: np.ndarray, side: int) -> np.ndarray:
    """Bilinear sampling of a 2-D uint8 image at `side` x `side` output pixel centres (no
    widening of the filter when shrinking), rounded to uint8: `(side, side, 1)`. What
    MediaPipe's and most GPU resizers do, where `pneumocnn.data.images.to_model_input` widens
    Pillow's filter; written out because neither Pillow nor OpenCV is asked for it here.

    Example:

    >>> resize_without_antialiasing(np.arange(16, dtype=np.uint8).reshape(4, 4), 2)[..., 0]
    array([[ 2,  4],
           [10, 12]], dtype=uint8)
    """
    height, width = gray.shape

    def grid(size):
        position = np.clip((np.arange(side) + 0.5) * size / side - 0.5, 0, size - 1)
        low = np.floor(position).astype(int)
        return low, np.minimum(low + 1, size - 1), position - low

    y0, y1, fy = grid(height)
    x0, x1, fx = grid(width)
    image = gray.astype(np.float64)
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    rows = top * (1 - fy[:, None]) + bottom * fy[:, None]
    return np.clip(np.rint(rows), 0, 255).astype(np.uint8)[..., None]


def jpeg_again(gray: Image.Image, quality: int, side: int) -> np.ndarray:
    """The film re-encoded as a JPEG at `quality`, then read as `pneumocnn.predict` reads it."""
    buffer = io.BytesIO()
    gray.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return to_model_input(read_grayscale(buffer, "re-encoded"), side)
