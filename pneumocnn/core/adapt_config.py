"""One frozen `AdaptConfig`: how a trained model learns from a site's own labelled films.

Every knob of `python -m pneumocnn.adapt` is a field here, with its default and the reason for
it; the flags are generated from the fields (see `pneumocnn.core.settings`). The defaults are
the recipe chosen by patient-grouped cross-validation within the development half of the test
split (`experiments/adaptation/`, whose README gives the table). A training run's `Config` is a
different object: it describes the network and how it was trained from scratch, and stays the
adapted model's own (its image size, task and augmentation).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pneumocnn.core.settings import Settings, setting

TRAINABLE_CHOICES = ("all", "late")


@dataclasses.dataclass(frozen=True)
class AdaptConfig(Settings):
    """Everything that defines an adaptation to a site.

    Saved as `adaptation.json` in the adapted run folder and recorded in the exported family's
    metadata, so the card can say what was done.

    Example:

    >>> AdaptConfig(epochs=4).learning_rate
    0.0003
    """

    # The fine-tuning.
    epochs: int = setting(
        12, "Passes over the site's films and the training films mixed in with them."
    )
    learning_rate: float = setting(
        3e-4, "Adam's rate: a third of training's, so the trained features move, not restart."
    )
    batch_size: int = setting(32, "Films per step, as in training.")
    training_films: int = setting(
        400,
        "Labelled training films mixed in (an equal share per class), so the model keeps what "
        "it learnt while it learns the site; 0 fine-tunes on the site's films alone.",
    )
    freeze_batchnorm: bool = setting(
        True,
        "Keep BatchNormalization's statistics and scales as trained: a few hundred films "
        "estimate them worse than the training films did.",
    )
    trainable: Literal["all", "late"] = setting(
        "all",
        "Which layers learn: all, or late (the last two blocks and the head; the stem and "
        "early blocks stay as trained).",
    )
    augment_scale: float = setting(
        0.0,
        "Scales the trained recipe's augmentation (framing, rotation, contrast, exposure) for "
        "the fine-tuning; 0 (the default: the adaptation study's ten seeds each gave a higher "
        "specificity at the bound without it) turns it off, 1 repeats the training recipe's.",
    )
    mixup_alpha: float = setting(
        0.3,
        "Mixup during fine-tuning (0 is off). Without augmentation and without mixup the "
        "fine-tuned model puts most training-batch films' P(pneumonia) within 1/512 of 0 or 1, "
        "where the int8 output's steps tie them and the export's parity check refuses the "
        "model; mixup keeps the outputs off the ends (chosen over augmentation by the "
        "adaptation study, experiments/adaptation).",
    )
    seed: int = setting(0, "Seeds the folds, the training-film sample and the fine-tuning.")
    deterministic: bool = setting(
        False,
        "TensorFlow op determinism: the same seed gives the same adapted model and threshold "
        "(without it two runs differ about as much as two seeds); slower.",
    )

    # The operating point.
    folds: int = setting(
        5,
        "Patient folds for the out-of-fold predictions that choose the threshold: each film is "
        "scored by a model fine-tuned without its patient.",
    )
    target_sensitivity: float = setting(
        0.96, "The sensitivity the threshold must reach on new patients of the site."
    )
    confidence: float = setting(
        0.95,
        "How sure the threshold's sensitivity guarantee is (Neyman-Pearson order statistic "
        "on the out-of-fold scores); 0 gives the plain point estimate instead.",
    )
    site_films: int = setting(
        0,
        "Learn from at most this many of the site's films (0 = all), whole patients at a "
        "time; every film is still scored out of fold. For learning curves.",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "a positive integer"),
            (self.learning_rate > 0, "learning_rate", "a positive number"),
            (self.batch_size >= 1, "batch_size", "a positive integer"),
            (self.training_films >= 0, "training_films", "0 or a positive integer"),
            (self.trainable in TRAINABLE_CHOICES, "trainable", f"one of {TRAINABLE_CHOICES}"),
            (self.augment_scale >= 0, "augment_scale", "a number of at least 0"),
            (self.mixup_alpha >= 0, "mixup_alpha", "a number of at least 0"),
            (self.folds >= 2, "folds", "an integer of at least 2"),
            (0 < self.target_sensitivity < 1, "target_sensitivity", "a number in (0, 1)"),
            (0 <= self.confidence < 1, "confidence", "0 (point estimate) or a number in (0, 1)"),
            (self.site_films >= 0, "site_films", "0 (all) or a positive integer"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(
                    f"AdaptConfig field `{name}` must be {expected}. "
                    f"Received: {name}={getattr(self, name)!r}"
                )
