"""The checks an export must pass before anything is written.

`check_parity`: the int8 model's decisions agree with the float model's on at least 99% of
validation films, and its ROC AUC is within 0.005. `rgb_parity`: the RGB variant names the int8
model's class on every film. `guard_head_agreement`: the RGB variant's guard head against
`pneumocnn.runtime.guard` on the same model inputs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pneumocnn.core.errors import CheckFailedError
from pneumocnn.core.task import Task, class_probabilities, decide, pneumonia_probability
from pneumocnn.data.images import to_model_input
from pneumocnn.edge.rgb import operating_scores
from pneumocnn.evaluation.metrics import parity as measure_parity
from pneumocnn.runtime.guard import DEFAULT_LIMITS

if TYPE_CHECKING:
    from pneumocnn.runtime.guard import GuardCalibration
    from pneumocnn.runtime.lite import LiteModel

logger = logging.getLogger(__name__)


def check_rgb_parity(
    gray_probabilities: np.ndarray,
    rgb_scores: np.ndarray,
    threshold: float,
    class_names: list[str],
    step: float = 1 / 256,
) -> dict[str, float]:
    """How often the rgb variant's argmax names the class the grayscale model's decision names.

    A film whose grayscale output lies within one output step of a decision boundary (P(pneumonia)
    within `step` of the threshold, or, for a subtype call, the two subtypes within `step` of
    each other) is a near-tie, where any other rounding of the output would matter; the agreement
    on the other films is reported apart. (`rgb_variant` computes the grayscale model's output
    exactly, so it agrees on near-ties too.)

    Args:
        gray_probabilities: the grayscale int8 model's outputs on some films.
        rgb_scores: the rgb variant's scores on the same films (as RGB).
        threshold: the operating threshold.
        class_names: index = label.
        step: the int8 output's quantization step. Defaults to 1/256.

    Returns:
        `images`, `agreement` (share of identical labels), `near_ties` (films within a step of a
        boundary), `agreement_beyond_ties` (on the others), and `max_abs_difference` between the
        rgb scores and `operating_scores` of the grayscale outputs.
    """
    rows = class_probabilities(np.asarray(gray_probabilities, np.float64))
    gray_labels = np.array(decide(rows, threshold, class_names))
    rgb_labels = np.array([class_names[int(index)] for index in np.argmax(rgb_scores, axis=1)])
    near = np.abs(pneumonia_probability(rows) - threshold) <= step
    if rows.shape[1] > 2:  # a subtype call: the two likeliest subtypes within a step
        subtypes = np.sort(rows[:, 1:], axis=1)
        near |= subtypes[:, -1] - subtypes[:, -2] <= step
    same = gray_labels == rgb_labels
    expected = operating_scores(rows, threshold)
    return {
        "images": int(len(same)),
        "agreement": float(np.mean(same)),
        "near_ties": int(np.sum(near)),
        "agreement_beyond_ties": float(np.mean(same[~near])) if np.any(~near) else 1.0,
        "max_abs_difference": float(np.max(np.abs(expected - rgb_scores))),
    }


MIN_AGREEMENT = 0.99
# The RGB variant runs the int8 file's own graph (grafted, `pneumocnn.edge.graft`), with its luma
# and head in float32: it must name the int8 model's class on every film, with scores within this of
# `pneumocnn.edge.rgb.operating_scores` of the int8 model's output.
RGB_SCORE_TOLERANCE = 1e-4
MAX_AUC_DROP = 0.005


class ParityError(CheckFailedError):
    """Raised when the int8 model strays too far from the float model."""


def check_parity(
    labels: np.ndarray,
    float_probabilities: np.ndarray,
    int8_probabilities: np.ndarray,
    threshold: float,
    class_names: list[str],
    strict: bool = True,
) -> dict[str, Any]:
    """Compares int8 and float predictions on validation images (see
    `pneumocnn.evaluation.metrics.parity`).

    Args:
        labels: true labels.
        float_probabilities: the float model's per-class probabilities.
        int8_probabilities: the int8 model's, same shape.
        threshold: the decision threshold on P(pneumonia).
        class_names: index = label.
        strict: raise when the check fails. Defaults to True.

    Returns:
        `images`, `agreement` (share of identical decisions), `auc_float`, `auc_int8`,
        `auc_drop`, `max_abs_difference` of the probabilities, the bars (`min_agreement`,
        `max_auc_drop`), `passed`, and, when it failed, `message`.

    Raises:
        ParityError: if agreement is below 99% or the AUC drops by more than 0.005, and
            `strict` (the default) is True.
    """

    parity = measure_parity(labels, float_probabilities, int8_probabilities, threshold, class_names)
    parity["min_agreement"], parity["max_auc_drop"] = MIN_AGREEMENT, MAX_AUC_DROP
    parity["passed"] = parity["agreement"] >= MIN_AGREEMENT and parity["auc_drop"] <= MAX_AUC_DROP
    if not parity["passed"]:
        subtype = Task.of_classes(class_names).subtype
        calls = (
            f"; its pneumonia-vs-NORMAL calls alone on {parity['pneumonia_agreement']:.2%}"
            if subtype
            else ""
        )
        # For a three-class model the calibration draw moves the agreement about a point either
        # way (docs/research/int8.md): retrying draws until one passes would be luck.
        advice = (
            "A three-class model's misses here are bacterial-vs-viral near-ties, which another "
            "calibration draw does not reliably keep (docs/research/int8.md)."
            if subtype
            else "Try more --calibration-images."
        )
        parity["message"] = (
            f"The int8 model strays too far from the float model on {parity['images']} "
            f"validation images: decisions agree on {parity['agreement']:.2%} (need >= "
            f"{MIN_AGREEMENT:.0%}{calls}), AUC {parity['auc_int8']:.4f} vs "
            f"{parity['auc_float']:.4f} "
            f"(drop {parity['auc_drop']:.4f}, allowed {MAX_AUC_DROP}). Nothing was written. "
            f"{advice}"
        )
        if strict:
            raise ParityError(parity["message"])
    return parity


def variant_inputs(rgb: LiteModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What to feed the RGB variant for grayscale model inputs, and the model inputs that stand
    for them.

    A variant that takes the model's side gets the images themselves. One that takes
    the films' size (`pneumocnn.core.metadata.FILM_SIZE`, resized inside, see
    `pneumocnn.edge.rgb.with_film_input`) gets each image brought to that size by Pillow, and
    stands for Pillow's resize of that back to the model's side, which is what it computes
    inside: the int8 model is then compared on exactly the pixels the variant's int8 graph sees.

    Args:
        rgb: the RGB variant.
        images: raw 0-255 grayscale model inputs `(n, H, W, 1)`.

    Returns:
        A tuple `(films, model_inputs)`: uint8 gray `(n, S, S, 1)` with `S` the variant's side
        (feed each as gray RGB, see `as_rgb`; kept gray and uint8, since a thousand 224 px
        float32 RGB films take 600 MB), and uint8 `(n, H, W, 1)`.
    """
    side, size = int(rgb.input["shape"][1]), int(images.shape[1])
    if side == size:
        return images, images
    films = np.stack([to_model_input(Image.fromarray(image[..., 0]), side) for image in images])
    inputs = np.stack([to_model_input(Image.fromarray(film[..., 0]), size) for film in films])
    return films, inputs


def as_rgb(films: np.ndarray) -> np.ndarray:
    """Gray films `(n, S, S, 1)` as the RGB variant's float32 input `(n, S, S, 3)`."""
    return np.repeat(films, 3, axis=-1).astype(np.float32)


def rgb_parity(
    rgb: LiteModel,
    int8: LiteModel,
    images: np.ndarray,
    threshold: float,
    class_names: list[str],
    require_parity: bool,
    films: str = "validation",
) -> dict[str, Any]:
    """Runs the RGB variant on grayscale films (as gray RGB, see `variant_inputs`) and checks that
    its highest score names the int8 model's decision at `threshold` on every film, and that its
    scores are `pneumocnn.edge.rgb.operating_scores` of the int8 model's output on the same pixels
    within `RGB_SCORE_TOLERANCE` (see `pneumocnn.edge.parity.check_rgb_parity`).

    Args:
        rgb: the RGB variant.
        int8: the grayscale int8 model of the same family.
        images: raw 0-255 grayscale films at the model's side `(n, H, W, 1)`.
        threshold: the operating threshold baked into `rgb`.
        class_names: index = label.
        require_parity: raise when the check fails.
        films: what the films are, for the messages. Defaults to "validation".

    Returns:
        The parity figures, with `passed`.

    Raises:
        ParityError: if the check fails and `require_parity` is True.
    """

    gray_films, model_inputs = variant_inputs(rgb, images)
    scores = np.concatenate(
        [rgb.predict_proba(as_rgb(gray_films[i : i + 64])) for i in range(0, len(images), 64)]
    )
    parity = check_rgb_parity(int8.predict_proba(model_inputs), scores, threshold, class_names)
    parity["passed"] = (
        parity["agreement"] == 1.0 and parity["max_abs_difference"] <= RGB_SCORE_TOLERANCE
    )
    logger.info("RGB variant against the int8 model on %s films: %s", films, parity)
    if not parity["passed"] and require_parity:
        raise ParityError(
            f"The RGB variant names the int8 model's class on {parity['agreement']:.2%} of the "
            f"{parity['images']} {films} films (need all), and its scores differ from the int8 "
            f"model's operating scores by up to {parity['max_abs_difference']:.2g} (need <= "
            f"{RGB_SCORE_TOLERANCE:g}). Nothing was written."
        )
    return parity


def guard_head_agreement(
    rgb: LiteModel, images: np.ndarray, calibration: GuardCalibration, films: str = "validation"
) -> dict[str, Any]:
    """How often the RGB variant's guard head (its second output, see
    `pneumocnn.edge.guard_head.guard_head_op`) says what `pneumocnn.runtime.guard` says on the same
    model inputs: unlike a chest film where the OOD score is above 1 or the input is
    near-constant (the head's other check, colourfulness, is 0 on gray films).

    Args:
        rgb: the RGB variant, with a guard head.
        images: raw 0-255 grayscale model inputs `(n, H, W, 1)`; fed as gray RGB (see
            `variant_inputs`).
        calibration: the guard's calibration the head was made from.
        films: what the films are, for the record. Defaults to "validation".

    Returns:
        `{"films", "images", "agreement", "flagged_by_head", "flagged_by_python"}`.
    """
    interpreter, head = rgb.interpreter, rgb.interpreter.get_output_details()[1]["index"]
    gray_films, images = variant_inputs(rgb, images)
    flagged = []
    for film in gray_films:
        interpreter.set_tensor(rgb.input["index"], as_rgb(film[np.newaxis]))
        interpreter.invoke()
        flagged.append(int(np.argmax(interpreter.get_tensor(head)[0])) == 1)
    limits = {**DEFAULT_LIMITS, **(calibration.limits or {})}
    spreads = images.reshape(len(images), -1).astype(np.float64).std(axis=1)
    expected = (calibration.scores(images) > 1.0) | (spreads < limits["min_std"])
    flagged = np.asarray(flagged)
    record = {
        "films": films,
        "images": len(images),
        "agreement": round(float(np.mean(flagged == expected)), 4),
        "flagged_by_head": int(flagged.sum()),
        "flagged_by_python": int(expected.sum()),
    }
    logger.info("RGB variant's guard head against the input guard on %s films: %s", films, record)
    return record
