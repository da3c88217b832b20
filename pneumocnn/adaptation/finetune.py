"""Fine-tuning a trained model on a site's films, with labelled training films mixed in.

`fine_tune` loads the trained float model, freezes what the recipe keeps (BatchNormalization,
the early blocks), and trains it on the site's films plus a class-balanced sample of the
training split (`training_mix`), through the same `tf.data` pipeline as training
(`pneumocnn.data.pipeline.make_datasets`; its augmentation scaled by `recipe.augment_scale`, off
by default) and the same loss (`compile_model`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pneumocnn.adaptation.site import SiteFilms
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.config import Config
from pneumocnn.core.task import pneumonia_labels
from pneumocnn.data.folders import label_for_task
from pneumocnn.data.pipeline import make_datasets
from pneumocnn.data.split import LoadedSplit, limit_per_class, load_split
from pneumocnn.network.model import (
    fitting_model,
    load_model,
    training_classes_of,
    with_pneumonia_head,
)
from pneumocnn.training.compile import compile_model

logger = logging.getLogger(__name__)


def training_mix(
    config: Config, split: pd.DataFrame, root, films: int, seed: int
) -> LoadedSplit:
    """A seeded sample of `films` training-split films, an equal share per class, decoded.

    Args:
        config: the trained model's config (image size, task).
        split: the model's train/validation split (`split.csv`, or rebuilt from its config).
        root: the data folder the split's paths are relative to.
        films: how many (0 gives none).
        seed: seeds the sample.
    """
    if films <= 0:
        empty = np.zeros((0, config.image_size, config.image_size, 1), np.uint8)
        return LoadedSplit(empty, np.zeros(0, np.int32), [], [])
    train = split[split["subset"] == "train"]
    sample = limit_per_class(train, max(1, films // train["label"].nunique()), seed)
    return load_split(sample, "train", config.image_size, root)


def _fitting_labels(
    config: Config, labels: np.ndarray, paths: list[str], task_classes
) -> np.ndarray:
    """The labels the network trains on: the task's, or for a `train_on_subtypes` binary model
    the subtypes read from the names (as training does)."""
    if not config.binary_from_subtypes:
        return labels
    table = pd.DataFrame({"path": paths, "label": pneumonia_labels(labels)})
    return label_for_task(table, task_classes, "subtype")["label"].to_numpy().astype(np.int32)


def freeze(model: keras.Model, recipe: AdaptConfig, config: Config) -> dict[str, bool]:
    """Marks what the recipe keeps as trained: BatchNormalization (which then also runs on its
    stored statistics) and, for `trainable="late"`, every layer before the last two blocks.

    Returns:
        Each layer's `trainable` flag before, to restore once the fine-tuning is done.
    """
    before = {layer.name: layer.trainable for layer in model.layers}
    first_late = f"block{max(1, config.num_blocks - 1)}_"
    late = recipe.trainable == "all"
    for layer in model.layers:
        late = late or layer.name.startswith(first_late)
        layer.trainable = late and layer.trainable
        if recipe.freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return before


def fine_tune(
    model_path,
    config: Config,
    recipe: AdaptConfig,
    site: SiteFilms,
    mix: LoadedSplit,
    seed: int,
) -> keras.Model:
    """Fine-tunes the trained model at `model_path` on `site`'s films and the training `mix`.

    Args:
        model_path: the trained float `.keras` model.
        config: its config: image size, task, and the augmentation the fine-tuning reuses
            (scaled by `recipe.augment_scale`).
        recipe: the adaptation recipe.
        site: the site's films to learn from.
        mix: labelled training films mixed in (see `training_mix`).
        seed: seeds the shuffles, the augmentation and the mixing.

    Returns:
        The fine-tuned model, in the trained model's form (one output for a binary model).
    """
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    model = load_model(model_path)
    fitting = fitting_model(model)
    trainable = freeze(fitting, recipe, config)
    settings = dataclasses.replace(
        config,
        seed=seed,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        epochs=recipe.epochs,
        mixup_alpha=recipe.mixup_alpha,
        augment_strength=config.augment_strength * recipe.augment_scale,
        intensity_strength=config.intensity_strength * recipe.augment_scale,
        framing_strength=config.framing_strength * recipe.augment_scale,
        gamma_strength=config.gamma_strength * recipe.augment_scale,
        normal_augment_strength=0.0,
        balance="class_weight",
        lr_schedule="plateau",
        weight_averaging="none",
        distill_from="",
    )
    classes = ("NORMAL", "PNEUMONIA")
    films = LoadedSplit(
        np.concatenate([site.images, mix.images]),
        np.concatenate(
            [
                _fitting_labels(config, site.labels, site.paths, classes),
                _fitting_labels(config, mix.labels, mix.paths, classes),
            ]
        ).astype(np.int32),
        site.paths + mix.paths,
        [],
    )
    train_ds, _, steps = make_datasets(settings, films, films, training_classes_of(settings))
    compile_model(fitting, settings, steps)
    started = time.perf_counter()
    fitting.fit(train_ds, epochs=recipe.epochs, steps_per_epoch=steps, shuffle=False, verbose=0)
    logger.info(
        "Fine-tuned on %d site and %d training films, %d epochs, in %.0f s",
        len(site.labels),
        len(mix.labels),
        recipe.epochs,
        time.perf_counter() - started,
    )
    for layer in fitting.layers:  # saved as trained: the flags only steered this fine-tuning
        layer.trainable = trainable[layer.name]
    return with_pneumonia_head(fitting, config) if config.binary_from_subtypes else model
