"""How much one grey level of pixel noise moves a model's P(pneumonia): what another JPEG
decoder or resizer does to a film."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pneumocnn.core.task import (
    class_probabilities,
    pneumonia_probability,
)


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
