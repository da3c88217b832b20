"""The input guard: is this a chest film like the ones the model learnt from?

It runs in every client of the model, before the label is trusted: here in Python (`predict`,
the app, `LiteModel` on an edge device; numpy and Pillow only), in the web page
(`web/input_guard.js`, the same checks and score, reading the same metadata), and inside the
RGB variant for stock image classifiers (its second output, `pneumocnn.edge.guard_head`: the
score and the checks that the model's input allows; not the size and aspect-ratio ones). Two
stages:

1. **Refusal** of clearly invalid inputs, from the decoded image alone (see `refusal`): too
   small, an extreme aspect ratio, near-constant (a blank, black or white image), or strongly
   coloured (a photograph; X-rays are gray). A refused input is not classified.
2. **Out-of-distribution score** of the rest (see `GuardCalibration`): how far the film's
   coarse layout lies from the training films'. The model's input is shrunk to a 16x16
   thumbnail, standardised (so exposure alone does not count), and measured with a Mahalanobis
   distance under a probabilistic PCA fitted on the training films (the distance within the
   leading components plus the residual off them). The score is that distance divided by its
   threshold, the 99th percentile of the validation films' distances: above 1 the input is
   *flagged*, still classified, with the score shown next to the label. The calibration is
   written into the model's metadata (`"guard"`) by the export, so the int8 model on a device
   carries it; a model without one gets the refusal checks only.

A distance on the image rather than in the network's feature space keeps the int8 `.tflite`
unchanged (it has one output), costs microseconds, and is small enough arithmetic to port.

Example:


>>> verdict = Verdict("flagged", ("unlike the training films (OOD score 1.80 > 1)",), 1.8)
>>> str(verdict)
'flagged: unlike the training films (OOD score 1.80 > 1)'
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from pneumocnn.data.pixels import COLOURFULNESS_KEY, FRAMES_KEY

OK, FLAGGED, REFUSED = "ok", "flagged", "refused"
GUARD_VERSION = 1
# Refusal limits, each with its reason. Sites can override them in the metadata's
# guard["limits"].
DEFAULT_LIMITS = {
    # Fewer pixels than this on a side: an icon or a thumbnail, not a film.
    "min_side": 32,
    # Long side over short side. Chest films are 0.6-1.7; a panoramic dental film is about 2.
    "max_aspect_ratio": 2.5,
    # Standard deviation of the gray levels (0-255) below this: blank, black or white.
    "min_std": 4.0,
    # Hasler and Suesstrunk's colourfulness (0 for gray, ~15 "slightly", ~33 "moderately"
    # colourful): X-rays are gray, and a tinted scan of one stays well below this.
    "max_colourfulness": 20.0,
}
# Side of the thumbnail the out-of-distribution score is computed from.
THUMBNAIL_SIZE = 16
# Leading principal components kept; the rest count as one residual term.
COMPONENTS = 16
# The validation films' distance quantile that becomes score 1.0.
QUANTILE = 0.99


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The guard's verdict on one input.

    Args:
        status: "ok", "flagged" (classified, but unlike the training films) or "refused"
            (not classified).
        reasons: why it was flagged or refused (empty when ok).
        score: the out-of-distribution score, 1.0 at the validation films' 99th percentile;
            `None` when refused before scoring, or when the model carries no calibration.
    """

    status: str
    reasons: tuple[str, ...] = ()
    score: float | None = None

    @property
    def reason(self) -> str:
        """The reasons as one string ("" when ok)."""
        return "; ".join(self.reasons)

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}" if self.reasons else self.status


def colourfulness_of(gray: Image.Image) -> float:
    """The colourfulness the loader recorded for a decoded image (0 when it recorded none, as
    for DICOM or an array; see `pneumocnn.data.images.colourfulness`)."""

    return float(gray.info.get(COLOURFULNESS_KEY, 0.0))


def refusal(
    gray: Image.Image, colourfulness: float | None = None, limits: dict[str, float] | None = None
) -> list[str]:
    """The reasons to refuse an image outright (an empty list: none).

    Args:
        gray: the decoded grayscale image at its own size (see
            `pneumocnn.data.images.read_grayscale`).
        colourfulness: of the image before the grayscale conversion. Defaults to `None`: the
            value the loader recorded in `gray.info` (see `colourfulness_of`).
        limits: overrides of `DEFAULT_LIMITS`. Defaults to `None`.

    Returns:
        One sentence per failed check, each naming the measured value and the limit.
    """
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    if colourfulness is None:
        colourfulness = colourfulness_of(gray)
    width, height = gray.size
    reasons = []
    if min(width, height) < limits["min_side"]:
        reasons.append(
            f"too small ({width}x{height} px; a film has at least {limits['min_side']:g} px a side)"
        )
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > limits["max_aspect_ratio"]:
        reasons.append(
            f"extreme aspect ratio ({ratio:.1f}:1; a chest film is at most "
            f"{limits['max_aspect_ratio']:g}:1)"
        )
    # A reduced copy is enough for a spread of gray levels, and keeps a large film cheap.
    factor = max(1, max(width, height) // 256)
    spread = float(np.asarray(gray.reduce(factor) if factor > 1 else gray, np.float64).std())
    if spread < limits["min_std"]:
        reasons.append(
            f"near-constant image (gray-level spread {spread:.1f}, below {limits['min_std']:g}): "
            "blank, black or white"
        )
    if colourfulness > limits["max_colourfulness"]:
        reasons.append(
            f"strongly coloured (colourfulness {colourfulness:.0f}, above "
            f"{limits['max_colourfulness']:g}): a photograph, not an X-ray"
        )
    return reasons


def thumbnails(images: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Standardised `size` x `size` thumbnails of model inputs, one flat row per image.

    Each image is box-averaged to the thumbnail, then shifted and scaled to zero mean and unit
    spread (a spread below one gray level counts as one), so the score sees the layout of the
    film and not its exposure.

    Args:
        images: raw 0-255 model inputs `(n, side, side[, 1])`.
        size: the thumbnail's side. Defaults to `THUMBNAIL_SIZE` (16).

    Returns:
        float64 `(n, size * size)`.
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    rows = np.empty((len(images), size * size))
    for index, image in enumerate(images):
        small = Image.fromarray(np.asarray(image, np.uint8)).resize(
            (size, size), Image.Resampling.BOX
        )
        row = np.asarray(small, np.float64).ravel()
        rows[index] = (row - row.mean()) / max(row.std(), 1.0)
    return rows


def _encode(values: np.ndarray) -> dict[str, Any]:
    """An array as JSON: little-endian float32 in base64, one line in the metadata (thousands
    of numbers, one a line, would bury the rest of it)."""
    array = np.ascontiguousarray(values, dtype="<f4")
    return {
        "dtype": "float32",
        "shape": list(array.shape),
        "base64": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode(entry: dict[str, Any]) -> np.ndarray:
    """The array `_encode` wrote (a plain list is read too)."""
    if isinstance(entry, list):
        return np.asarray(entry, np.float64)
    raw = np.frombuffer(base64.b64decode(entry["base64"], validate=True), dtype="<f4")
    return raw.reshape([int(side) for side in entry["shape"]]).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class GuardCalibration:
    """The out-of-distribution score of one model: a probabilistic PCA of training thumbnails,
    and the threshold from validation.

    Args:
        mean: the training thumbnails' mean, `(d,)`.
        components: the leading principal directions, `(k, d)`, orthonormal rows.
        variances: the variance along each, `(k,)`.
        residual_variance: the mean variance of the remaining directions.
        distance_threshold: the validation films' distance at `quantile`; score 1.0.
        thumbnail_size: the thumbnail's side. Defaults to 16.
        quantile: the validation quantile of the threshold. Defaults to 0.99.
        limits: the refusal limits (see `DEFAULT_LIMITS`). Defaults to `None`: the defaults.
        fitted_on: counts and shares recorded at calibration. Defaults to `None`.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    distance_threshold: float
    thumbnail_size: int = THUMBNAIL_SIZE
    quantile: float = QUANTILE
    limits: dict[str, float] | None = None
    fitted_on: dict[str, Any] | None = None

    def distances(self, images: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance of each model input under the fitted probabilistic PCA:
        within the components (each by its variance) and off them (by the residual one)."""
        centred = thumbnails(images, self.thumbnail_size) - self.mean
        projected = centred @ self.components.T
        residual = np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0)
        return np.sqrt(
            (projected**2 / self.variances).sum(axis=1) + residual / self.residual_variance
        )

    def scores(self, images: np.ndarray) -> np.ndarray:
        """The out-of-distribution score of each model input: 1.0 at the validation quantile,
        higher is less like the training films."""
        return self.distances(images) / self.distance_threshold

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored as the metadata's `"guard"` entry."""
        return {
            "version": GUARD_VERSION,
            "method": (
                f"Mahalanobis distance of the standardised {self.thumbnail_size}x"
                f"{self.thumbnail_size} thumbnail of the model input under a probabilistic "
                f"PCA ({len(self.variances)} components) of the training films; score = "
                f"distance / its {self.quantile:.0%} quantile on the validation films; "
                "flagged above 1"
            ),
            "thumbnail_size": self.thumbnail_size,
            "quantile": self.quantile,
            "distance_threshold": float(f"{self.distance_threshold:.6g}"),
            "residual_variance": float(f"{self.residual_variance:.6g}"),
            "variances": [float(f"{value:.6g}") for value in self.variances],
            "mean": _encode(self.mean),
            "components": _encode(self.components),
            "limits": {**DEFAULT_LIMITS, **(self.limits or {})},
            "fitted_on": self.fitted_on or {},
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> GuardCalibration:
        """Reads the metadata's `"guard"` entry.

        Raises:
            ValueError: if it is malformed (names the field and how to fix it).
        """
        try:
            if int(entry["version"]) > GUARD_VERSION:
                raise ValueError(f"version {entry['version']} is newer than {GUARD_VERSION}")
            size = int(entry["thumbnail_size"])
            mean = _decode(entry["mean"])
            components = _decode(entry["components"])
            variances = np.asarray(entry["variances"], np.float64)
            calibration = cls(
                mean,
                components.reshape(len(variances), size * size),
                variances,
                float(entry["residual_variance"]),
                float(entry["distance_threshold"]),
                size,
                float(entry.get("quantile", QUANTILE)),
                checked_limits(entry.get("limits") or {}),
                dict(entry.get("fitted_on") or {}),
            )
            if mean.shape != (size * size,) or not (
                (variances > 0).all()
                and calibration.residual_variance > 0
                and calibration.distance_threshold > 0
            ):
                raise ValueError("shapes or variances do not fit")
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            keys = sorted(entry) if isinstance(entry, dict) else entry
            raise ValueError(
                f"The metadata's input-guard calibration is malformed ({type(error).__name__}: "
                f"{error}). Received: guard={keys!r}. "
                "Re-export the model with `python -m pneumocnn.export`, or delete the `guard` "
                "entry to run with the refusal checks only."
            ) from error
        return calibration


def checked_limits(limits: Any) -> dict[str, float]:
    """The refusal limits of a model's metadata, each a known name with a finite number of at
    least 0 (see `DEFAULT_LIMITS`).

    Raises:
        ValueError: naming the first limit that is not one, and what was received.
    """
    if not isinstance(limits, dict):
        raise ValueError(f"limits must be an object of numbers, not {type(limits).__name__}")
    checked = {}
    for key, value in limits.items():
        if key not in DEFAULT_LIMITS:
            raise ValueError(
                f"unknown limit {str(key)[:60]!r}; the limits are {sorted(DEFAULT_LIMITS)}"
            )
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not np.isfinite(value) or value < 0:
            raise ValueError(
                f"limit {key!r} must be a finite number of at least 0, not {str(value)[:60]!r}"
            )
        checked[key] = float(value)
    return checked


def fit(
    train_images: np.ndarray,
    val_images: np.ndarray,
    components: int = COMPONENTS,
    quantile: float = QUANTILE,
    thumbnail_size: int = THUMBNAIL_SIZE,
) -> GuardCalibration:
    """Fits the out-of-distribution score on training films and sets its threshold on
    validation films.

    Args:
        train_images: raw 0-255 model inputs `(n, side, side, 1)` of training films.
        val_images: the same of validation films (other patients).
        components: leading principal components (fewer with fewer than 18 training films).
            Defaults to 16.
        quantile: the validation quantile that becomes score 1.0. Defaults to 0.99.
        thumbnail_size: the thumbnail's side. Defaults to 16.

    Returns:
        The calibration (see `GuardCalibration.to_dict` for its metadata form).

    Raises:
        ValueError: with fewer than three training films, or no validation film.
    """
    rows = thumbnails(train_images, thumbnail_size)
    # A small training set keeps fewer components (each needs films to estimate it).
    components = min(components, rows.shape[1] - 1, len(rows) - 2)
    if components < 1 or len(val_images) == 0:
        raise ValueError(
            "The input guard needs at least three training films and one validation film. "
            f"Received: {len(rows)} training and {len(val_images)} validation films. Train "
            "on more films."
        )
    mean = rows.mean(axis=0)
    _, singular, directions = np.linalg.svd(rows - mean, full_matrices=False)
    variances = singular**2 / (len(rows) - 1)
    floor = max(float(variances[0]) * 1e-6, 1e-9)  # a degenerate direction must not divide by 0
    variances = np.maximum(variances, floor)
    residual = variances[components:]
    calibration = GuardCalibration(
        mean,
        directions[:components],
        variances[:components],
        float(residual.mean()) if len(residual) else floor,
        1.0,
        thumbnail_size,
        quantile,
    )
    val_distances = calibration.distances(val_images)
    threshold = float(np.quantile(val_distances, quantile))
    train_distances = calibration.distances(train_images)
    return dataclasses.replace(
        calibration,
        distance_threshold=threshold,
        fitted_on={
            "train_images": len(rows),
            "val_images": len(val_images),
            "train_flagged": round(float(np.mean(train_distances > threshold)), 4),
            "val_flagged": round(float(np.mean(val_distances > threshold)), 4),
        },
    )


def calibration_of(metadata: dict[str, Any] | None) -> GuardCalibration | None:
    """The calibration in a model's metadata, or `None` when it carries none."""
    entry = (metadata or {}).get("guard")
    return GuardCalibration.from_dict(entry) if entry else None


def judge(
    gray: Image.Image,
    model_input: np.ndarray | None,
    calibration: GuardCalibration | None,
    image_size: int | None = None,
    colourfulness: float | None = None,
) -> Verdict:
    """The guard's verdict on one decoded image.

    Args:
        gray: the decoded grayscale image at its own size.
        model_input: its model input `(side, side, 1)`, or `None` to check only the refusals.
        calibration: the model's (see `calibration_of`), or `None` for refusals only.
        image_size: the model's input side: an image smaller than it is flagged (the model
            sees it upscaled). Defaults to `None`: no such check.
        colourfulness: before the grayscale conversion. Defaults to `None`: as recorded by
            the loader.

    Returns:
        A `Verdict`: refused, flagged (also when the image is the first frame of several, see
        `pneumocnn.data.pixels.FRAMES_KEY`), or ok.
    """
    limits = calibration.limits if calibration is not None else None
    reasons = refusal(gray, colourfulness, limits)
    # Of a file of several frames (an APNG, a multi-page TIFF or DICOM) the first was read:
    # said with the verdict, since a later frame may be the film.
    frames = int(gray.info.get(FRAMES_KEY, 1))
    several = (
        [f"frame 1 of {frames} read (keep the film alone in a file of its own)"]
        if frames > 1
        else []
    )
    if reasons:
        return Verdict(REFUSED, tuple(reasons + several))
    flags = list(several)
    if image_size is not None and min(gray.size) < image_size:
        flags.append(
            f"low resolution ({gray.width}x{gray.height} px, upscaled to the model's "
            f"{image_size} px)"
        )
    score = None
    if calibration is not None and model_input is not None:
        score = float(calibration.scores(np.asarray(model_input)[np.newaxis])[0])
        if score > 1.0:
            flags.append(f"unlike the training films (OOD score {score:.2f} > 1)")
    return Verdict(FLAGGED if flags else OK, tuple(flags), score)
