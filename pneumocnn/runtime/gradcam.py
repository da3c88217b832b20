"""Grad-CAM: where the model looked (the command is `python -m pneumocnn.explain`).

Grad-CAM (Selvaraju et al., 2017) weights a convolutional layer's feature maps by the gradient of
a class score and keeps the positive part: bright regions raised the score. A binary model
explains its PNEUMONIA score; a subtype model explains the pneumonia subtype it decided (or, for
a NORMAL call, the likelier subtype), or the class asked for.

- **Fine enough to read:** the map comes from the deepest block whose output has at least
  `MIN_CELLS` (10) cells a side (16x16 for the shipped 128-px model, whose deeper blocks have
  8x8 and 4x4), found by layer name, never by index.
- **A fixed colour scale:** the map shown is the *evidence*, 0 to 1: the Grad-CAM map relative
  to its strongest cell, times the probability the user is shown. So the strongest cell of a
  film called NORMAL with P(pneumonia) = 0.05 is coloured 0.05, nearly transparent, and never
  looks like a lesion; only a confident pneumonia call reaches the top of the scale.
- **The probability that made the label:** Grad-CAM needs the float `.keras` model (an int8
  `.tflite` has no gradients), but the label and probability the user sees come from whichever
  model made them (the int8 one in the app): `explain_image` takes them as arguments.

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
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from pneumocnn.core.task import PNEUMONIA, Task
from pneumocnn.network.model import LAST_CONV_LAYER, OUTPUT_LAYER

# The coarsest map worth showing: a 5x5 map paints a lung with two cells.
MIN_CELLS = 10
COLOUR_MAP = "inferno"


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
        "Grad-CAM needs a model built by pneumocnn.network.model.build_model."
    )


def explained_layer(model: keras.Model, min_cells: int = MIN_CELLS) -> keras.layers.Layer:
    """The layer Grad-CAM reads: the deepest activated convolution (`*_relu`, as named by
    `pneumocnn.network.model.build_model`) whose output has at least `min_cells` cells a side, else
    the last convolutional block.

    Raises:
        ValueError: if the model has no layer named `last_conv` (or `last_conv_relu`).
    """
    last = _last_conv_output(model)
    chosen = None
    for layer in model.layers:
        shape = getattr(layer.output, "shape", None)
        if not layer.name.endswith("_relu") or shape is None or len(shape) != 4:
            continue
        if shape[1] is not None and min(shape[1], shape[2]) >= min_cells:
            chosen = layer
    if chosen is None:  # no block is fine enough: the last one
        return next(layer for layer in model.layers if layer.output is last)
    return chosen


class GradCam:
    """Grad-CAM heatmaps for a pneumocnn `.keras` model.

    Args:
        model: a float Keras model from `build_model` (or `load_model`).
        min_cells: the map's least number of cells a side (see `explained_layer`). Defaults
            to `MIN_CELLS` (10).

    Example:

    >>> cam = GradCam(load_model("saved_models/pneumocnn.keras"))  # doctest: +SKIP
    >>> heatmap, probability = cam.heatmap(load_image("chest.jpeg", 160))  # doctest: +SKIP
    >>> cam.cells  # doctest: +SKIP
    (10, 10)
    """

    def __init__(self, model: keras.Model, min_cells: int = MIN_CELLS):
        self.model = model
        self.image_size = int(model.input_shape[1])
        layer = explained_layer(model, min_cells)
        self.layer_name = layer.name
        self.cells = (int(layer.output.shape[1]), int(layer.output.shape[2]))
        self._model = keras.Model(
            model.inputs, [layer.output, model.get_layer(OUTPUT_LAYER).output]
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
            `(heatmap, probability)`: a float32 array `(image_size, image_size)` in [0, 1],
            relative to its strongest cell (all zeros when nothing raised the score; see
            `explain_image` for the evidence on a fixed scale), and this float model's
            probability of the explained class (P(PNEUMONIA) for a binary model).
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
    """Grad-CAM of one image, for one class, on the fixed evidence scale.

    Args:
        heatmap: float32 `(image_size, image_size)`, the evidence in [0, 1]: the Grad-CAM map
            relative to its strongest cell, times `probability` (so it never exceeds it).
        probability: the explained class's probability, from the model that made the label.
        explained: the explained class's name.
        label: the decision shown to the user, or `None` without a threshold.
        layer: the layer the map comes from, with its cells, e.g. "block4_conv2_relu, 10x10".
    """

    heatmap: np.ndarray
    probability: float
    explained: str
    label: str | None
    layer: str = ""


def explain_image(
    cam: GradCam,
    image: np.ndarray,
    threshold: float | None,
    task: Task,
    label: str | None = None,
    probabilities: dict[str, float] | None = None,
) -> Explanation:
    """Explains the decision shown to the user for one image.

    A binary model explains PNEUMONIA (whatever the decision: the map shows what raised its
    score, and a NORMAL call's low probability keeps it faint). A subtype model explains the
    pneumonia subtype it decided or, for a NORMAL call, the likelier subtype (see
    `pneumocnn.core.task.Task.explained_index`).

    Args:
        cam: the Grad-CAM of the float model.
        image: raw pixels `(image_size, image_size, 1)`.
        threshold: the decision threshold, or `None`.
        task: the model's task, with its class names.
        label: the decision shown to the user, when another model made it (the app and
            `explain` given a `.tflite` show the int8 model's). Defaults to `None`: the float
            model's own decision.
        probabilities: P(class) from the model that made `label` (e.g.
            `Prediction.probabilities`): the map's scale and the probability shown come from
            it. Defaults to `None`: the float model's.

    Returns:
        An `Explanation`.
    """
    class_names = list(task.class_names)
    if probabilities is None:
        outputs = np.asarray(cam.model(np.asarray(image, np.float32)[np.newaxis], training=False))
        row = task.probabilities(outputs.reshape(1, -1))[0]
        probabilities = dict(zip(class_names, map(float, row), strict=True))
    row = [probabilities[name] for name in class_names]
    if label is None and threshold is not None:
        label = task.decide([row], threshold)[0]
    index = task.explained_index(row, label)
    relative, _ = cam.heatmap(image, index if task.subtype else None)
    probability = float(row[index])
    evidence = np.clip(relative * probability, 0.0, 1.0).astype(np.float32)
    layer = f"{cam.layer_name}, {cam.cells[0]}x{cam.cells[1]}"
    return Explanation(evidence, probability, class_names[index], label, layer)


def overlay_figure(
    image: np.ndarray,
    heatmap: np.ndarray,
    probability: float,
    threshold: float | None,
    title: str,
    explained: str = PNEUMONIA,
    label: str | None = None,
    note: str = "",
) -> Figure:
    """One film with its evidence map over it, a colour bar on the fixed 0-1 scale, and a title
    that fits.

    The evidence (see `explain_image`) is drawn with an opacity that grows with it, so a faint
    map leaves the film visible and a film called NORMAL stays nearly clear.

    Args:
        image: raw pixels `(size, size, 1)`.
        heatmap: the evidence in [0, 1] (`Explanation.heatmap`).
        probability: the explained class's probability, from the model that made the label.
        threshold: the decision threshold, shown with the verdict; `None` shows no verdict.
        title: a name for the film (e.g. the file name; shortened to fit).
        explained: the class the heatmap explains. Defaults to "PNEUMONIA".
        label: the verdict to show. Defaults to `None`: from `probability` and `threshold`
            (binary models).
        note: a last line under the title (e.g. the input guard's verdict). Defaults to "".
    """

    figure = Figure(figsize=(5.4, 5.2), layout="constrained")
    ax = figure.subplots()
    pixels = np.asarray(image).squeeze()
    ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    evidence = np.clip(np.asarray(heatmap, np.float64), 0.0, 1.0)
    colours = colormaps[COLOUR_MAP](evidence)
    colours[..., 3] = 0.75 * evidence  # opacity follows the evidence: none shows the film
    ax.imshow(colours)
    ax.axis("off")
    if threshold is not None and label is None:
        label = Task.of("binary").decide([probability], threshold)[0]
    name = title if len(title) <= 40 else f"{title[:18]}...{title[-19:]}"
    lines = [
        f"{label}: P({explained}) = {probability:.3f}"
        if label
        else f"P({explained}) = {probability:.3f}"
    ]
    if threshold is not None:
        lines[0] += f", threshold {threshold:.2f}"
    lines.append(name + (f" ({note})" if note else ""))
    ax.set_title("\n".join(lines), fontsize=10, loc="center", wrap=True)
    scale = ScalarMappable(Normalize(0, 1), colormaps[COLOUR_MAP])
    bar = figure.colorbar(scale, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(f"evidence for {explained} (0-1: Grad-CAM x P)", fontsize=9)
    return figure
