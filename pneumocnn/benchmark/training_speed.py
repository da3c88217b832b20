"""Training throughput: images per second of the training step and of the input pipeline."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from pneumocnn.data.pipeline import build_augmentation, make_datasets
from pneumocnn.data.split import LoadedSplit
from pneumocnn.network.model import build_model

# --------------------------------------------------------------------------------------------
# Training speed.


def training_speed(
    model, batch_size: int, steps: int, repeats: int, jit_compile: bool = False
) -> float:
    """Median images per second of `train_on_batch` over `repeats` timings of `steps` steps.

    Args:
        model: an uncompiled Keras model.
        batch_size: images per step.
        steps: steps per timing.
        repeats: timings; the median is returned.
        jit_compile: compile the step with XLA. Defaults to False.
    """

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=jit_compile
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, *model.input_shape[1:])).astype(np.float32)
    labels = rng.integers(0, 2, (batch_size, 1)).astype(np.float32)
    for _ in range(3):
        model.train_on_batch(images, labels)
    speeds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        speeds.append(steps * batch_size / (time.perf_counter() - started))
    return float(statistics.median(speeds))


def bfloat16_training_speed(config, batch_size: int, steps: int, repeats: int) -> float:
    """`training_speed` of pneumocnn under Keras's mixed_bfloat16 policy (restored after)."""

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        return training_speed(build_model(config), batch_size, steps, repeats)
    finally:
        keras.config.set_dtype_policy(previous)


def pipeline_speed(config, batches: int, repeats: int) -> float:
    """Median images per second of the training input pipeline alone (cached, augmented)."""

    rng = np.random.default_rng(0)
    count = config.batch_size * 8
    images = rng.integers(0, 256, (count, config.image_size, config.image_size, 1)).astype(np.uint8)
    labels = rng.integers(0, 2, count).astype(np.int32)
    loaded = LoadedSplit(images, labels, [], [])
    train_ds, _, _ = make_datasets(config, loaded, loaded)
    return _batches_per_second(iter(train_ds.repeat()), batches, repeats) * config.batch_size


def _batches_per_second(iterator, batches: int, repeats: int) -> float:
    """Median batches per second of drawing `batches` batches, over `repeats` timings, after
    three warm-up batches."""
    for _ in range(3):
        next(iterator)
    speeds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        speeds.append(batches / (time.perf_counter() - started))
    return float(statistics.median(speeds))


def decode_each_epoch_speed(config, batches: int, repeats: int, parallel: bool) -> float:
    """Median images per second of a pipeline that decodes JPEG files every epoch, as
    `image_dataset_from_directory` pipelines do: read, decode, resize, batch, augment; with
    `parallel`, the maps run in parallel and batches are prefetched. The "before" of the cached
    pipeline that `pneumocnn.data.pipeline.make_datasets` builds (`pipeline_speed`).

    The files are 224x224 JPEGs like the training data's, written to a temporary folder.
    """

    rng = np.random.default_rng(0)
    calls = tf.data.AUTOTUNE if parallel else None
    augmentation = build_augmentation(config)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(config.batch_size * 8):
            path = Path(folder) / f"{index}.jpeg"
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))

        def decode(path):
            image = tf.io.decode_jpeg(tf.io.read_file(path), channels=1)
            return tf.image.resize(image, (config.image_size, config.image_size))

        dataset = (
            tf.data.Dataset.from_tensor_slices(paths)
            .repeat()
            .map(decode, num_parallel_calls=calls)
            .batch(config.batch_size)
            .map(lambda images: augmentation(images, training=True), num_parallel_calls=calls)
        )
        if parallel:
            dataset = dataset.prefetch(tf.data.AUTOTUNE)
        return _batches_per_second(iter(dataset), batches, repeats) * config.batch_size
