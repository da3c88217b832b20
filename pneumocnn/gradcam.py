"""Grad-CAM: where the model looked (the command is `python -m pneumocnn.explain`).

Grad-CAM (Selvaraju et al., 2017) weights the last convolutional block's feature maps by the
gradient of a class score and keeps the positive part: bright regions raised the score. A binary
model explains its PNEUMONIA score; a subtype model explains the class it decided (NORMAL,
BACTERIAL or VIRAL), or the one asked for.
It runs on the float `.keras` model (an int8 `.tflite` has no gradients); the block is found by
its name, `last_conv`, never by index.

Example:

>>> cam = GradCam(load_model("saved_models/pneumocnn.keras"))  # doctest: +SKIP
>>> explain_image(cam, load_image("chest.jpeg", cam.image_size), 0.27).label  # doctest: +SKIP
'PNEUMONIA'
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from pneumocnn.model import LAST_CONV_LAYER, OUTPUT_LAYER
from pneumocnn.task import BINARY_CLASS_NAMES, PNEUMONIA, SUBTYPE_CLASS_NAMES, decide


def _last_conv_output(model: keras.Model) -> keras.KerasTensor:
    """The activated output of the last convolutional block, found by name."""
    for name in (f"{LAST_CONV_LAYER}_relu", LAST_CONV_LAYER):
        try:
            return model.get_layer(name).output
        except ValueError:
            continue
    raise ValueError(
        f"Model '{model.name}' has no layer named '{LAST_CONV_LAYER}_relu' or "
        f"'{LAST_CONV_LAYER}'. Received layers: {[layer.name for layer in model.layers]}. "
        "Grad-CAM needs a model built by pneumocnn.model.build_model."
    )


class GradCam:
    """Grad-CAM heatmaps for a pneumocnn `.keras` model.

    Args:
        model: a float Keras model from `build_model` (or `load_model`).

    Example:

    >>> cam = GradCam(load_model("saved_models/pneumocnn.keras"))  # doctest: +SKIP
    >>> heatmap, probability = cam.heatmap(load_image("chest.jpeg", 160))  # doctest: +SKIP
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.image_size = int(model.input_shape[1])
        self._model = keras.Model(
            model.inputs, [_last_conv_output(model), model.get_layer(OUTPUT_LAYER).output]
        )

    @property
    def num_outputs(self) -> int:
        """1 for a binary (sigmoid) model, the number of classes for a subtype model."""
        return int(self.model.output_shape[-1])

    def heatmap(
        self, image: np.ndarray, class_index: int | None = None
    ) -> tuple[np.ndarray, float]:
        """Computes the Grad-CAM heatmap of one image.

        Args:
            image: raw 0-255 pixels, `(image_size, image_size, 1)`, as `load_image` returns.
            class_index: for a subtype model, the class to explain. Defaults to `None`: the
                likeliest class. Ignored by a binary model, which explains PNEUMONIA.

        Returns:
            `(heatmap, probability)`: a float32 array `(image_size, image_size)` in [0, 1]
            (all zeros when nothing raised the score), and the probability of the explained
            class (P(PNEUMONIA) for a binary model).
        """
        batch = tf.convert_to_tensor(np.asarray(image, np.float32)[np.newaxis])
        with tf.GradientTape() as tape:
            features, outputs = self._model(batch, training=False)
            if self.num_outputs == 1:
                probability = outputs[:, 0]
            else:
                if class_index is None:
                    class_index = int(tf.argmax(outputs[0]))
                probability = outputs[:, class_index]
            # The (one-vs-rest) logit's gradient does not vanish where the output saturates.
            score = tf.math.log(probability + 1e-7) - tf.math.log(1 - probability + 1e-7)
        gradients = tape.gradient(score, features)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0]
        cam = tf.image.resize(cam[..., tf.newaxis], (self.image_size, self.image_size))[..., 0]
        cam = cam.numpy()
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else np.zeros_like(cam)
        return np.clip(cam, 0.0, 1.0).astype(np.float32), float(probability.numpy().reshape(-1)[0])


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Grad-CAM of one image, for one class.

    Args:
        heatmap: float32 `(image_size, image_size)` in [0, 1].
        probability: the explained class's probability.
        explained: the explained class's name.
        label: the model's decision (see `pneumocnn.metadata.decide`), or `None` without a
            threshold.
    """

    heatmap: np.ndarray
    probability: float
    explained: str
    label: str | None


def explain_image(
    cam: GradCam,
    image: np.ndarray,
    threshold: float | None = None,
    class_names: list[str] | None = None,
    label: str | None = None,
) -> Explanation:
    """Explains the class the model decides for one image.

    A binary model explains PNEUMONIA (whatever the decision: the map shows what raised its
    score). A subtype model explains the class it decided with `threshold` (or, without one,
    its likeliest class), or `label` when the decision was already made elsewhere.

    Args:
        cam: the Grad-CAM of the model.
        image: raw pixels `(image_size, image_size, 1)`.
        threshold: the decision threshold from the metadata. Defaults to `None`.
        class_names: index = label. Defaults to `None`: NORMAL / PNEUMONIA, or NORMAL /
            BACTERIAL / VIRAL for a three-class model.
        label: the decision to explain, when it was made by another model the user sees (the
            app shows the int8 model's label; Grad-CAM needs the float one, which can decide a
            near-tie the other way). Defaults to `None`: this model's own decision.
    """
    if class_names is None:
        class_names = list(BINARY_CLASS_NAMES if cam.num_outputs == 1 else SUBTYPE_CLASS_NAMES)
    # A sigmoid head explains its positive class, whatever the decision.
    index = 1 if cam.num_outputs == 1 else None
    if index is None:
        if label is None:
            outputs = cam.model(np.asarray(image, np.float32)[np.newaxis], training=False)
            outputs = np.asarray(outputs)
            if threshold is not None:
                label = decide(outputs, threshold, class_names)[0]
        index = class_names.index(label) if label is not None else int(np.argmax(outputs[0]))
    heatmap, probability = cam.heatmap(image, index)
    if label is None and threshold is not None:
        label = decide([probability], threshold, class_names)[0]
    return Explanation(heatmap, probability, class_names[index], label)


def overlay_figure(
    image: np.ndarray,
    heatmap: np.ndarray,
    probability: float,
    threshold: float | None,
    title: str,
    explained: str = PNEUMONIA,
    label: str | None = None,
) -> Figure:
    """The X-ray in gray beside the same X-ray with the heatmap in colour and a colour bar.

    Args:
        image: raw pixels `(size, size, 1)`.
        heatmap: from `GradCam.heatmap`.
        probability: the explained class's probability.
        threshold: the decision threshold, shown with the verdict; `None` shows no verdict.
        title: the figure's title (e.g. the file name).
        explained: the class the heatmap explains. Defaults to "PNEUMONIA".
        label: the verdict to show. Defaults to `None`: from `probability` and `threshold`
            (binary models).
    """
    figure = Figure(figsize=(8, 4.3))
    left, right = figure.subplots(1, 2)
    pixels = np.asarray(image).squeeze()
    left.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    left.set_title("X-ray")
    right.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    shown = right.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    verdict = ""
    if threshold is not None:
        if label is None:
            label = decide([probability], threshold, BINARY_CLASS_NAMES)[0]
        verdict = f" -> {label} (threshold {threshold:.2f})"
    right.set_title(f"Grad-CAM: P({explained}) = {probability:.3f}{verdict}", fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    figure.colorbar(shown, ax=right, fraction=0.046, pad=0.04, label=f"contribution to {explained}")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure
