"""Image statistics that tell one batch of films from another: exposure, framing, sharpness.

The official test films come from another batch of patients than the training films, and the
model's errors follow how they differ (issue #15's findings): the test NORMAL films are framed
tighter and brighter at the borders. These few numbers measure that on raw 0-255 grayscale
arrays, with numpy alone, so the findings notebook and the reports can show where a batch of
films sits against the training films.

Example:


>>> import numpy as np
>>> film = np.zeros((64, 64), np.uint8); film[16:48, 16:48] = 200
>>> stats = film_statistics(film)
>>> round(stats["border_mean"]), round(stats["centre_mean"])
(0, 200)
"""

from __future__ import annotations

import numpy as np

# Share of the side that counts as the border band (each side).
BORDER = 0.1
# Share of the width that counts as the left and right edges: in a loosely framed film they
# are air beside the chest (dark); a tightly framed or hazy film has tissue there (brighter).
SIDES = 0.05
# A row or column "holds the body" where its mean is above this share of the film's maximum.
BODY_LEVEL = 0.35


def _as_2d(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(
            "Expected one grayscale film as a (height, width) or (height, width, 1) array. "
            f"Received: shape={np.shape(image)}."
        )
    return array


def film_statistics(image: np.ndarray) -> dict[str, float]:
    """Exposure, framing and sharpness figures of one grayscale film (raw 0-255 pixels).

    Args:
        image: a `(height, width)` or `(height, width, 1)` array.

    Returns:
        A dict: `mean` and `std` (overall exposure and contrast), `border_mean` (mean of the
        outer 10% band on every side), `centre_mean` (mean of the central half),
        `border_ratio` (border over centre), `side_mean` (mean of the outer 5% of columns
        on the left and right: air beside a loosely framed chest is dark), `body_width` and
        `body_height` (share of columns and rows whose mean is above 35% of the brightest one:
        how much of the frame the body fills, larger is tighter), `sharpness` (mean absolute
        Laplacian, a focus measure), `dark_share` and `bright_share` (pixels below 20 and
        above 235: clipping).

    Raises:
        ValueError: if `image` is not one grayscale film.
    """
    film = _as_2d(image)
    height, width = film.shape
    band_h, band_w = max(1, int(height * BORDER)), max(1, int(width * BORDER))
    border = np.ones_like(film, dtype=bool)
    border[band_h : height - band_h, band_w : width - band_w] = False
    centre = film[height // 4 : height - height // 4, width // 4 : width - width // 4]
    columns, rows = film.mean(axis=0), film.mean(axis=1)
    peak = max(float(film.max()), 1.0)
    laplacian = (
        -4 * film[1:-1, 1:-1] + film[:-2, 1:-1] + film[2:, 1:-1] + film[1:-1, :-2] + film[1:-1, 2:]
    )
    border_mean, centre_mean = float(film[border].mean()), float(centre.mean())
    side = max(1, int(width * SIDES))
    side_mean = float(np.concatenate([film[:, :side], film[:, width - side :]], axis=1).mean())
    return {
        "mean": float(film.mean()),
        "std": float(film.std()),
        "border_mean": border_mean,
        "centre_mean": centre_mean,
        "border_ratio": border_mean / max(centre_mean, 1.0),
        "side_mean": side_mean,
        "body_width": float(np.mean(columns > BODY_LEVEL * peak)),
        "body_height": float(np.mean(rows > BODY_LEVEL * peak)),
        "sharpness": float(np.abs(laplacian).mean()),
        "dark_share": float(np.mean(film < 20)),
        "bright_share": float(np.mean(film > 235)),
    }


def statistics_table(images: np.ndarray) -> list[dict[str, float]]:
    """`film_statistics` of each film of a `(n, height, width[, 1])` batch."""
    return [film_statistics(image) for image in images]
