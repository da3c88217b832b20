"""One frozen `Config` for every stage of a training run; its flags come from its fields.

Every knob of the pipeline is a field of `Config`, with its default and a one-line reason beside
it. `build_model(config)`, `make_datasets(config, ...)` and `train(config)` take it explicitly; no
module reads a global setting. The flags of `python -m pneumocnn.train` are made from the fields
(see `pneumocnn.core.settings`), so adding a knob is one line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pneumocnn.core.settings import Settings, setting
from pneumocnn.core.task import TASKS

BALANCE_CHOICES = ("none", "class_weight", "oversample")
STRATEGY_CHOICES = ("default", "mirrored", "multiworker")
NORMALIZATION_CHOICES = ("none", "per_image")
AVERAGING_CHOICES = ("none", "ema")
SCHEDULE_CHOICES = ("plateau", "cosine", "restarts")
LOSS_CHOICES = ("crossentropy", "focal")


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    """Everything that defines a training run.

    Saved as `config.json` in the run folder, so a run describes itself and later stages
    (evaluate, export) rebuild what they need from it.

    Example:

    >>> config = Config(image_size=128, epochs=2)
    >>> config.image_size
    128
    """

    # Task and data.
    task: Literal[TASKS] = setting(
        "binary",
        "binary: NORMAL vs PNEUMONIA (sigmoid). subtype: NORMAL vs BACTERIAL vs VIRAL (softmax), "
        "the pneumonia subtype read from the file names (person<ID>_bacteria_/_virus_).",
    )
    train_on_subtypes: bool = setting(
        False,
        "binary task: train a three-class head (NORMAL / BACTERIAL / VIRAL, from the file names, "
        "as --task subtype) and output its P(pneumonia) = 1 - P(NORMAL), so the saved model "
        "still has one output. Off: in the shift study it did not beat framing (row "
        "framing_3class). A subtype model trains on the three classes anyway.",
    )
    data_dir: str | None = setting(
        None,
        "Kaggle-style chest_xray folder. Default: $PNEUMOCNN_DATA_DIR, else a kagglehub download.",
    )
    output_dir: str | None = setting(None, "Run folder to write. Default: runs/<timestamp>.")
    val_fraction: float = setting(
        0.2, "Share of patients held out for validation (grouped by patient, by class)."
    )
    limit_per_class: int = setting(
        0, "Use at most this many images per class (0 = all); for quick runs."
    )
    seed: int = setting(42, "Seeds the split, the shuffles, augmentation and initial weights.")
    split_seed: int | None = setting(
        None,
        "Seeds the train/validation split (and the --limit-per-class sample) instead of --seed, "
        "so runs of several seeds share one split: seeds compared on the same validation films, "
        "or the members of an ensemble. None: --seed.",
    )
    deterministic: bool = setting(
        False, "TensorFlow op determinism: the same seed gives the same weights; slower."
    )
    strategy: Literal["default", "mirrored", "multiworker"] = setting(
        "default", "tf.distribute: one device, all local GPUs (mirrored), or $TF_CONFIG workers."
    )

    # Input pipeline.
    image_size: int = setting(
        128,
        "Side of the square grayscale input; 128 scored as well as 160 on the shifted test "
        "films in the shift study at two thirds of the cost.",
    )
    batch_size: int = setting(32, "Images per step; small batches regularise a small dataset.")
    balance: Literal["none", "class_weight", "oversample"] = setting(
        "class_weight",
        "Class imbalance (PNEUMONIA is ~3x NORMAL): none, class_weight or oversample.",
    )
    augment_strength: float = setting(
        1.0, "Scales rotation, shift, zoom and contrast augmentation; 0 turns it off."
    )
    intensity_strength: float = setting(
        1.0,
        "Scales brightness, blur and noise augmentation (exposure and detector changes); the "
        "test films come from another batch, so robustness to them is chosen over validation.",
    )
    normal_augment_strength: float = setting(
        0.0, "If above 0, NORMAL films get this augment_strength instead (more minority variety)."
    )
    mixup_alpha: float = setting(
        0.3,
        "Mixup: blend pairs of training films with Beta(alpha, alpha) weights; 0 is off. "
        "A regulariser against memorising one hospital's films.",
    )
    distill_from: str = setting(
        "",
        "Distillation: comma-separated teacher .keras files (e.g. other seeds' best.keras, same "
        "task and image size); each training target becomes (1 - distill_weight) x label + "
        "distill_weight x the teachers' mean prediction on the augmented, mixed film. Empty is "
        "off.",
    )
    distill_weight: float = setting(
        0.5, "With distill_from: the teachers' share of each training target, in (0, 1]."
    )
    framing_strength: float = setting(
        1.0,
        "Random zoom-in crops (up to 25% x strength of the side) and shifts (8% x strength), "
        "for both classes: the test films are framed tighter, and framing must not be a cue.",
    )
    gamma_strength: float = setting(
        0.0,
        "Random gamma per film, in [1/(1+0.5s), 1+0.5s]: exposure curves differ between "
        "batches of films; 0 is off.",
    )
    label_smoothing: float = setting(
        0.0, "Pulls the 0/1 targets towards 0.5 by this much; discourages overconfidence."
    )
    loss: Literal["crossentropy", "focal"] = setting(
        "crossentropy",
        "focal: focal cross-entropy (gamma 2), which weighs down the films the model already "
        "gets right; label_smoothing applies to both.",
    )
    horizontal_flip: bool = setting(
        False, "Mirror training images; off because the heart sits on the left of a chest film."
    )

    # Model.
    base_filters: int = setting(16, "Filters of the stem; each block doubles them.")
    num_blocks: int = setting(
        5, "SeparableConv2D blocks, each halving the resolution; 5 keeps int8 under 200 KB."
    )
    dropout_rate: float = setting(0.3, "Dropout before the head; the dataset is small.")
    input_normalization: Literal["none", "per_image"] = setting(
        "none",
        "per_image: each film is standardised to zero mean and unit variance inside the model "
        "(LayerNormalization over the image), so overall exposure cannot be a cue.",
    )
    normalization_clip: float = setting(
        0.0,
        "With per_image: clips the standardised film to [-c, c] standard deviations, so its int8 "
        "quantization spends its 256 levels on that range; 0 is off.",
    )

    # Optimisation.
    epochs: int = setting(
        15, "Upper bound; the shift study's schedule (early stopping usually ends it sooner)."
    )
    learning_rate: float = setting(1e-3, "Adam's initial learning rate.")
    early_stopping_patience: int = setting(
        4, "Epochs without a better val_auc before training stops (the shift study's)."
    )
    early_stopping_min_delta: float = setting(
        5e-4, "Smallest val_auc gain that counts; smaller gains are noise on ~1,000 images."
    )
    reduce_lr_patience: int = setting(
        2, "Epochs without a lower val_loss before the learning rate is cut (the study's)."
    )
    reduce_lr_factor: float = setting(0.3, "Multiplies the learning rate at each plateau.")
    lr_schedule: Literal["plateau", "cosine", "restarts"] = setting(
        "plateau",
        "plateau: cut the rate when val_loss stalls; cosine: decay to 1% over `epochs`; "
        "restarts: cosine decay to 1% over `restart_epochs`, then back to the full rate "
        "(warm restarts, SGDR), over and over.",
    )
    restart_epochs: int = setting(
        5,
        "With lr_schedule=restarts: epochs of each cosine cycle; keep early_stopping_patience "
        "longer than a cycle, or a restart's dip ends the run.",
    )
    weight_averaging: Literal["none", "ema"] = setting(
        "none",
        "ema: validate, checkpoint and ship an exponential moving average of the weights "
        "(momentum 0.99), which is smoother than the last step's weights.",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.image_size >= 32, "image_size", "an integer of at least 32"),
            (self.batch_size >= 1, "batch_size", "a positive integer"),
            (self.epochs >= 1, "epochs", "a positive integer"),
            (self.learning_rate > 0, "learning_rate", "a positive number"),
            (0 < self.val_fraction < 1, "val_fraction", "a number between 0 and 1"),
            (self.limit_per_class >= 0, "limit_per_class", "0 (all images) or a positive integer"),
            (self.balance in BALANCE_CHOICES, "balance", f"one of {BALANCE_CHOICES}"),
            (self.task in TASKS, "task", f"one of {TASKS}"),
            (self.strategy in STRATEGY_CHOICES, "strategy", f"one of {STRATEGY_CHOICES}"),
            (self.augment_strength >= 0, "augment_strength", "a number of at least 0"),
            (self.intensity_strength >= 0, "intensity_strength", "a number of at least 0"),
            (self.normal_augment_strength >= 0, "normal_augment_strength", "at least 0"),
            (self.mixup_alpha >= 0, "mixup_alpha", "a number of at least 0"),
            (0 < self.distill_weight <= 1, "distill_weight", "a number in (0, 1]"),
            (self.framing_strength >= 0, "framing_strength", "a number of at least 0"),
            (self.gamma_strength >= 0, "gamma_strength", "a number of at least 0"),
            (self.normalization_clip >= 0, "normalization_clip", "a number of at least 0"),
            (
                self.input_normalization in NORMALIZATION_CHOICES,
                "input_normalization",
                f"one of {NORMALIZATION_CHOICES}",
            ),
            (self.lr_schedule in SCHEDULE_CHOICES, "lr_schedule", f"one of {SCHEDULE_CHOICES}"),
            (self.restart_epochs >= 1, "restart_epochs", "a positive integer"),
            (self.loss in LOSS_CHOICES, "loss", f"one of {LOSS_CHOICES}"),
            (
                self.weight_averaging in AVERAGING_CHOICES,
                "weight_averaging",
                f"one of {AVERAGING_CHOICES}",
            ),
            (0 <= self.label_smoothing < 1, "label_smoothing", "a number in [0, 1)"),
            (self.base_filters >= 1, "base_filters", "a positive integer"),
            (self.num_blocks >= 1, "num_blocks", "a positive integer"),
            (0 <= self.dropout_rate < 1, "dropout_rate", "a number in [0, 1)"),
            (self.early_stopping_patience >= 1, "early_stopping_patience", "a positive integer"),
            (self.early_stopping_min_delta >= 0, "early_stopping_min_delta", "at least 0"),
            (self.reduce_lr_patience >= 1, "reduce_lr_patience", "a positive integer"),
            (0 < self.reduce_lr_factor < 1, "reduce_lr_factor", "a number between 0 and 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(
                    f"Config field `{name}` must be {expected}. "
                    f"Received: {name}={getattr(self, name)!r}"
                )

    @property
    def split_seed_used(self) -> int:
        """The seed of the train/validation split: `split_seed`, else `seed`."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def binary_from_subtypes(self) -> bool:
        """Whether a binary model trains on the three classes (`train_on_subtypes`)."""
        return self.task == "binary" and self.train_on_subtypes

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Builds a config from a dict, refusing keys that are not fields (see
        `Settings.from_dict`).

        A field left out takes its default, except `train_on_subtypes` in a dict of every other
        field (a run's `config.json` from before that field): False, as that run trained.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        if known - set(values) == {"train_on_subtypes"}:
            # A run's config.json holds every field; one that lacks only this one was written
            # before it existed, by a version that trained a plain sigmoid head.
            values = {**values, "train_on_subtypes": False}
        return super().from_dict(values)
