"""The usual models of this job (ResNet-50, DenseNet-121, MobileNetV2 and a tutorial CNN),
built as their public projects do and exported to int8 the same way as ours, for the bench."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from pneumocnn.edge.convert import convert

REFERENCE_MODELS = ("ResNet50", "DenseNet121", "MobileNetV2", "tutorial_cnn")


# --------------------------------------------------------------------------------------------
# The models people use instead.


def tutorial_cnn(image_size: int = 180):
    """The keras.io pneumonia tutorial's from-scratch CNN, rebuilt from its description.

    Two Conv2D(16), then SeparableConv2D blocks of 32, 64, 128 and 256 filters (two convs,
    BatchNormalization, max-pooling; dropout after the last two), then dense blocks of 512, 128
    and 64 units with dropout, and one sigmoid unit, on 180x180x3 inputs.
    """

    def conv_block(x, filters):
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.BatchNormalization()(x)
        return layers.MaxPooling2D()(x)

    def dense_block(x, units, rate):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.BatchNormalization()(x)
        return layers.Dropout(rate)(x)

    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = layers.MaxPooling2D()(x)
    x = conv_block(x, 32)
    x = conv_block(x, 64)
    x = conv_block(x, 128)
    x = layers.Dropout(0.2)(x)
    x = conv_block(x, 256)
    x = layers.Dropout(0.2)(x)
    x = layers.Flatten()(x)
    x = dense_block(x, 512, 0.7)
    x = dense_block(x, 128, 0.5)
    x = dense_block(x, 64, 0.3)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="tutorial_cnn")


def reference_model(name: str, image_size: int | None = None):
    """A reference architecture with random weights and a one-unit sigmoid head."""

    if name == "tutorial_cnn":
        return tutorial_cnn(image_size or 180)
    size = image_size or 224
    application = getattr(keras.applications, name)
    base = application(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
    outputs = keras.layers.Dense(1, activation="sigmoid", name="predictions")(base.output)
    return keras.Model(base.input, outputs, name=name)


def export_reference(
    name: str, work_dir: Path, calibration_count: int, image_size: int | None = None
) -> tuple[Path, int]:
    """Builds a reference model and exports it to int8 `.tflite` like pneumocnn's export.

    Calibration uses random 0-255 images: with random weights, the ranges are what matters.

    Returns:
        `(tflite_path, parameters)`.
    """

    model = reference_model(name, image_size)
    saved_model = work_dir / f"{name}_saved_model"
    model.export(str(saved_model), format="tf_saved_model", verbose=False)
    shape = model.input_shape[1:]
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (calibration_count, *shape)).astype(np.uint8)
    path = work_dir / f"{name}_int8.tflite"
    path.write_bytes(convert(saved_model, calibration))
    return path, int(model.count_params())
