"""Converting a Keras model to TFLite: full-integer int8 (uint8 in and out) or float16.

`fixed_batch_saved_model` writes the SavedModel the converter reads, with a batch of exactly 1
(LiteRT.js and MediaPipe refuse a dynamic batch); `convert` runs the converter;
`representative_images` draws the calibration films.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from pneumocnn.data.split import training_samples

if TYPE_CHECKING:
    import pandas as pd


BATCH_SIZE = 1


def fixed_batch_saved_model(keras_model, path: str | Path) -> Path:
    """Exports a Keras model as a SavedModel whose input has a batch of exactly 1.

    The TFLite converter keeps the signature's shape, so the `.tflite` it makes reads
    `[1, H, W, C]` rather than `[-1, H, W, C]`: LiteRT.js and MediaPipe refuse a dynamic batch,
    and LiteRT (Python) runs one film at a time either way.

    Args:
        keras_model: a model with one image input.
        path: the SavedModel folder to write.

    Returns:
        `path`.
    """

    shape = (BATCH_SIZE, *keras_model.input_shape[1:])
    signature = [tf.TensorSpec(shape, tf.float32, name="image")]
    keras_model.export(str(path), format="tf_saved_model", input_signature=signature, verbose=False)
    return Path(path)


def representative_images(
    split: pd.DataFrame, root: Path, image_size: int, count: int, seed: int
) -> np.ndarray:
    """A seeded, class-stratified sample of `count` training images (raw 0-255; an equal share
    per class of the split, so three classes of a subtype run share `count` too) for
    calibration."""

    films = training_samples(split, root, image_size, {"calibration": count}, seed)
    return pin_input_range(films["calibration"])


def pin_input_range(images: np.ndarray) -> np.ndarray:
    """A copy of calibration images whose observed range is exactly 0-255 (two pixels of the
    first image set to 0 and 255), so the uint8 input gets scale 1 and zero point 0: an app
    feeds raw pixels unchanged."""

    images = np.array(images, copy=True)
    images[0, 0, 0, 0], images[0, 0, 1, 0] = 0, 255
    return images


def convert(
    saved_model: Path, calibration: np.ndarray | None, float_layers: Sequence[str] = ()
) -> bytes:
    """Converts a SavedModel (from Keras's `model.export`) to a TFLite flatbuffer.

    Keras 3's own SavedModel export is the path the TFLite converter reads reliably.

    Args:
        saved_model: the SavedModel folder.
        calibration: raw-pixel images for full-integer int8 quantization; `None` gives a
            float16 model instead.
        float_layers: names of Keras layers whose ops stay float32 (TFLite's selective
            quantization, `tf.lite.experimental.QuantizationDebugger`); the rest is int8 as
            without them, and the model's input and output are float32 (raw 0-255 pixels in).
            Defaults to `()`: uint8 in, uint8 out, all int8.

    Returns:
        The `.tflite` flatbuffer.
    """

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if calibration is None:
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()

    def representative_dataset():
        for image in calibration:
            yield [image[np.newaxis].astype(np.float32)]

    converter.representative_dataset = representative_dataset
    if float_layers:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=_layer_tensors(saved_model, float_layers)
        )
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # Pixels are 0-255 integers: uint8 input holds them exactly (scale 1, zero point 0).
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()


def convert_float32(saved_model: Path) -> bytes:
    """Converts a SavedModel to a float32 TFLite flatbuffer, no quantization at all (for the
    RGB variant's float guard head, `pneumocnn.edge.guard_head`)."""

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()


def _layer_tensors(saved_model: Path, layers: Sequence[str]) -> list[str]:
    """The TFLite tensor names of Keras layers' ops (and of the model's output, which the last
    op writes under the signature's name), read from a float conversion of the same
    SavedModel: the names selective quantization takes."""

    interpreter = tf.lite.Interpreter(model_content=convert_float32(saved_model))
    names = [tensor["name"] for tensor in interpreter.get_tensor_details()]
    found = []
    for layer in layers:
        mine = [name for name in names if f"/{layer}_" in name or f"/{layer}/" in name]
        if not mine:
            raise ValueError(
                f"No tensor of the layer {layer!r} in {saved_model}: name layers of the model. "
                f"Received: float_layers={list(layers)!r}."
            )
        found += mine
    return found + [detail["name"] for detail in interpreter.get_output_details()]
