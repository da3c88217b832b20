"""The `tf.data` input pipeline: cache, shuffle, batch, augment the training split only.

`build_augmentation` holds the Keras augmentation layers (framing, exposure, noise; no flips, since
the heart sits on the left), `make_datasets` the pipeline with mixup, distillation targets and
class balancing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from pneumocnn.core.config import Config

if TYPE_CHECKING:
    from pneumocnn.data.split import LoadedSplit

AUTOTUNE = tf.data.AUTOTUNE


def build_augmentation(
    config: Config, strength: float | None = None, name: str = "augmentation"
) -> keras.Sequential:
    """Augmentation for training batches, as Keras preprocessing layers on raw 0-255 pixels.

    Small rotations, shifts and zooms mimic how a child is positioned on the film; contrast
    mimics exposure differences between machines; brightness, blur and noise
    (`intensity_strength`; the noise is added in `make_datasets`, as Keras's GaussianNoise
    takes no pixel-scale deviation) mimic detectors and hospitals. Horizontal flips are off by
    default: a chest film is not mirror-symmetric (the heart sits on the left, and films carry
    side markers), so a flipped film is not a realistic input.

    Args:
        config: uses `augment_strength`, `intensity_strength`, `framing_strength`,
            `horizontal_flip` and `seed`.
        strength: overrides `config.augment_strength`. Defaults to `None`.
        name: the model's name. Defaults to "augmentation".

    Returns:
        A `keras.Sequential` (empty when every strength is 0 and flips are off).
    """
    strength = config.augment_strength if strength is None else strength
    intensity, seed, framing = config.intensity_strength, config.seed, config.framing_strength
    layers = []
    if framing > 0:
        # The test films are framed tighter than the training films, and a model that learnt
        # "tight frame = pneumonia" calls tightly framed NORMAL films PNEUMONIA. Zooming in on
        # films of both classes (negative factors zoom in) takes that cue away; "nearest" fills
        # the edge a shift uncovers with the film's own border rather than a black band.
        layers += [
            keras.layers.RandomZoom(
                (-min(0.6, 0.25 * framing), 0.0), fill_mode="nearest", seed=seed + 8
            ),
            keras.layers.RandomTranslation(
                0.08 * framing, 0.08 * framing, fill_mode="nearest", seed=seed + 9
            ),
        ]
    if strength > 0:
        layers += [
            keras.layers.RandomRotation(0.02 * strength, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(
                0.05 * strength, 0.05 * strength, fill_mode="constant", seed=seed + 1
            ),
            keras.layers.RandomZoom(0.1 * strength, fill_mode="constant", seed=seed + 2),
            keras.layers.RandomContrast(min(0.9, 0.2 * strength), seed=seed + 3),
        ]
    if intensity > 0:
        layers += [
            keras.layers.RandomBrightness(min(0.9, 0.1 * intensity), seed=seed + 5),
            keras.layers.RandomGaussianBlur(
                factor=min(1.0, 0.5 * intensity), sigma=min(1.0, 0.7 * intensity), seed=seed + 6
            ),
        ]
    if config.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(layers, name=name)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights (n_samples / (n_classes * count)) from the training labels."""
    classes = np.arange(num_classes)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def _to_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), labels


def _mixup(alpha: float, seed: int):
    """Returns a batch map that blends each film with another of the batch (Zhang et al., 2018):
    x = l*x1 + (1-l)*x2, likewise labels and sample weights, l ~ Beta(alpha, alpha) per film."""

    def mix(images, labels, weights):
        batch = tf.shape(images)[0]
        first = tf.random.gamma([batch], alpha, seed=seed)
        second = tf.random.gamma([batch], alpha, seed=seed + 1)
        share = first / (first + second + 1e-12)
        partner = tf.random.shuffle(tf.range(batch), seed=seed + 2)
        blend = share[:, tf.newaxis]
        images = blend[:, :, tf.newaxis, tf.newaxis] * images + (
            1 - blend[:, :, tf.newaxis, tf.newaxis]
        ) * tf.gather(images, partner)
        labels = blend * labels + (1 - blend) * tf.gather(labels, partner)
        weights = share * weights + (1 - share) * tf.gather(weights, partner)
        return images, labels, weights

    return mix


def _distill(teachers: list, weight: float):
    """Returns a batch map that moves each target towards the teachers' mean prediction on the
    very film the student sees (augmented and mixed): y = (1 - w) y + w mean_k teacher_k(x)."""

    def blend(images, labels, weights):
        predictions = tf.add_n([teacher(images, training=False) for teacher in teachers])
        soft = tf.cast(predictions, labels.dtype) / len(teachers)
        return images, (1.0 - weight) * labels + weight * soft, weights

    return blend


def _targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Training targets: P(positive) `(n, 1)` for two classes, else one-hot `(n, classes)`."""
    if num_classes > 2:
        return np.eye(num_classes, dtype=np.float32)[labels]
    return labels.astype(np.float32)[:, np.newaxis]


def _class_index(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """The class of each target that `_targets` made."""
    if num_classes > 2:
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    return tf.cast(tf.round(labels[:, 0]), tf.int32)


def _labelled(images: np.ndarray, labels: np.ndarray, num_classes: int) -> tf.data.Dataset:
    """Cached `(image, target)` pairs; cached as uint8 (a quarter of the memory)."""
    targets = _targets(labels, num_classes)
    return tf.data.Dataset.from_tensor_slices((images, targets)).cache()


def _training_stream(config: Config, train: LoadedSplit, num_classes: int) -> tf.data.Dataset:
    """The training films, shuffled each epoch, or with `balance="oversample"` each class
    repeated and sampled equally, in float32 batches."""
    if config.balance == "oversample":
        per_class = [
            _labelled(train.images[train.labels == c], train.labels[train.labels == c], num_classes)
            .shuffle(int(np.sum(train.labels == c)), seed=config.seed + c)
            .repeat()
            for c in range(num_classes)
            if np.any(train.labels == c)
        ]
        stream = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[1.0 / len(per_class)] * len(per_class), seed=config.seed
        )
    else:
        stream = _labelled(train.images, train.labels, num_classes).shuffle(
            len(train.labels), seed=config.seed, reshuffle_each_iteration=True
        )
    return stream.batch(config.batch_size).map(_to_float, num_parallel_calls=AUTOTUNE)


def _augmenter(config: Config, num_classes: int):
    """The batch map that augments training films (`None` when nothing would change them):
    the augmentation layers, NORMAL films' own strength, the exposure curve and detector
    noise."""
    augmentation = build_augmentation(config)
    normal_augmentation = (
        build_augmentation(config, config.normal_augment_strength, "normal_augmentation")
        if config.normal_augment_strength > 0
        else None
    )
    if not (
        augmentation.layers
        or normal_augmentation is not None
        or config.intensity_strength > 0
        or config.gamma_strength > 0
    ):
        return None

    def augment(images, labels):
        augmented = augmentation(images, training=True) if augmentation.layers else images
        if normal_augmentation is not None:
            is_normal = tf.reshape(_class_index(labels, num_classes) == 0, [-1, 1, 1, 1])
            augmented = tf.where(is_normal, normal_augmentation(images, training=True), augmented)
        if config.gamma_strength > 0:  # exposure curve: 255 * (x / 255) ** gamma, per film
            spread = float(np.log1p(0.5 * config.gamma_strength))
            gamma = tf.exp(
                tf.random.uniform(
                    [tf.shape(augmented)[0], 1, 1, 1], -spread, spread, seed=config.seed + 12
                )
            )
            augmented = 255.0 * tf.pow(tf.clip_by_value(augmented / 255.0, 0.0, 1.0), gamma)
        if config.intensity_strength > 0:  # detector noise, in pixel units
            noise = tf.random.normal(
                tf.shape(augmented), stddev=3.0 * config.intensity_strength, seed=config.seed + 7
            )
            augmented = tf.clip_by_value(augmented + noise, 0.0, 255.0)
        return augmented, labels

    return augment


def make_datasets(
    config: Config,
    train: LoadedSplit,
    val: LoadedSplit,
    num_classes: int = 2,
    teachers: list | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """Builds the training and validation `tf.data` pipelines from decoded images.

    Training: cache -> shuffle (each epoch) -> batch -> augment -> (mixup) -> (distill) ->
    prefetch, yielding `(images, labels, sample_weights)`. With `balance="class_weight"` the
    sample weights are the class weights of the training split (as weights they survive mixup,
    which Keras's `class_weight` would not); with `"oversample"` each class is repeated and
    sampled equally, so batches are balanced. With `normal_augment_strength`, NORMAL films
    (label 0) get their own augmentation strength. Validation: cache -> batch -> prefetch, never
    augmented. Three classes (`--task subtype`) get one-hot labels, so mixup and label
    smoothing apply as well.

    Args:
        config: uses `batch_size`, `balance`, `seed`, `mixup_alpha` and the augmentation fields.
        train: decoded training images.
        val: decoded validation images.
        num_classes: number of classes. Defaults to 2.
        teachers: Keras models whose mean prediction on each training film is blended into its
            target with `config.distill_weight` (knowledge distillation; see
            `pneumocnn.training.distill.load_teachers`). Defaults to `None`: none.

    Returns:
        `(train_ds, val_ds, steps_per_epoch)`. Images are float32 raw pixels; labels float32 of
        shape `(batch, 1)` for two classes (P(positive)), else one-hot `(batch, num_classes)`.
    """
    steps = max(1, int(np.ceil(len(train.labels) / config.batch_size)))
    train_ds = _training_stream(config, train, num_classes)
    augment = _augmenter(config, num_classes)
    if augment is not None:
        train_ds = train_ds.map(augment, num_parallel_calls=AUTOTUNE)
    table = (
        class_weights(train.labels, num_classes)
        if config.balance == "class_weight"
        else dict.fromkeys(range(num_classes), 1.0)
    )
    weight_of = tf.constant([table[c] for c in range(num_classes)], tf.float32)
    train_ds = train_ds.map(
        lambda x, y: (x, y, tf.gather(weight_of, _class_index(y, num_classes))),
        num_parallel_calls=AUTOTUNE,
    )
    if config.mixup_alpha > 0:
        train_ds = train_ds.map(_mixup(config.mixup_alpha, config.seed + 11))
    if teachers:
        train_ds = train_ds.map(_distill(teachers, config.distill_weight))
    val_ds = _labelled(val.images, val.labels, num_classes).batch(config.batch_size).map(_to_float)
    return train_ds.prefetch(AUTOTUNE), val_ds.prefetch(AUTOTUNE), steps
