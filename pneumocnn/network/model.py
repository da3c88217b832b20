"""The network: a grayscale CNN of Conv2D and SeparableConv2D blocks, built from a `Config`.

`Rescaling` sits inside the model, so every saved form takes raw 0-255 pixels. `build_model`
makes it, `load_model` reads a `.keras` file in Keras's safe mode; the layer names here
(`LAST_CONV_LAYER`, `OUTPUT_LAYER`) are what Grad-CAM and the export look for.
"""

from __future__ import annotations

import json
import math
import random
import zipfile
from pathlib import Path

import keras
import numpy as np

try:  # Keras's private global state: see _uninitialized_variables
    from keras.src.backend.common import global_state as _keras_state
except ImportError:
    _keras_state = None

from pneumocnn.core.budget import MAX_DECODED_BYTES, MAX_METADATA_BYTES
from pneumocnn.core.config import Config
from pneumocnn.core.files import display_name
from pneumocnn.core.task import Task

# Grad-CAM and the export look layers up by these names, never by index.
LAST_CONV_LAYER = "last_conv"
OUTPUT_LAYER = "predictions"
# With `Config.train_on_subtypes`, the three-class softmax that trains, before the fixed head.
SUBTYPE_HEAD_LAYER = "subtypes"


def num_classes_of(config: Config) -> int:
    """Classes of the task (see `pneumocnn.core.task.Task`): two share one sigmoid unit;
    "subtype" has three."""
    return len(Task.of(config.task).class_names)


def training_classes_of(config: Config) -> int:
    """Classes the network trains on: the task's, or three for `train_on_subtypes`."""
    return len(Task.of("subtype" if config.binary_from_subtypes else config.task).class_names)


# Keras's default BatchNormalization momentum (0.99) needs ~500 steps to forget the initial
# moving variance of 1; with ~130 steps an epoch, early validation then saw nearly constant
# outputs (val AUC 0.5 for the first epochs, measured). 0.9 forgets it within one epoch.
BATCHNORM_MOMENTUM = 0.9


def _conv_bn_relu(x, layer, name: str, synchronized: bool = False):
    x = layer(x)
    x = keras.layers.BatchNormalization(
        momentum=BATCHNORM_MOMENTUM, synchronized=synchronized, name=f"{name}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_model(config: Config) -> keras.Model:
    """Builds the uncompiled classifier.

    Input `(image_size, image_size, 1)` float32 raw 0-255 pixels -> `Rescaling` to [-1, 1] ->
    Conv2D stem (stride 2) -> `num_blocks` blocks of two SeparableConv2D (the first block keeps
    the stem's width, each later block doubles it) with max-pooling between blocks -> global
    average pooling -> Dropout -> the head named "predictions": one sigmoid unit
    (P(PNEUMONIA)) for `task="binary"`, a softmax over NORMAL / BACTERIAL / VIRAL for
    `task="subtype"`. With `train_on_subtypes`, a softmax over the three classes named
    "subtypes" and then a fixed head "predictions" that outputs 1 - P(NORMAL).

    With a distributed `strategy`, BatchNormalization uses the statistics of the global batch
    (`synchronized=True`), so every replica updates its moving statistics alike and every
    worker ends with the same weights; otherwise each would keep its own (measured: trainable
    weights identical, moving statistics apart by up to 0.01 after three epochs).

    Args:
        config: uses `task`, `train_on_subtypes`, `image_size`, `base_filters`, `num_blocks`,
            `dropout_rate`, `input_normalization`, `normalization_clip` and `strategy`.

    Returns:
        A `keras.Model` named "pneumocnn".

    Example:

    >>> model = build_model(Config(image_size=64))
    >>> model.output_shape
    (None, 1)
    """
    size, width = config.image_size, config.base_filters
    synchronized = config.strategy != "default"
    inputs = keras.Input(shape=(size, size, 1), name="image")
    # To [-1, 1]: zero-centred inputs give the stem's BatchNormalization statistics near its
    # initial ones, so early validation (inference mode) is already meaningful.
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(inputs)
    if config.input_normalization == "per_image":
        x = _standardize(x, config.normalization_clip)
    x = _conv_bn_relu(
        x,
        keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem"),
        "stem",
        synchronized,
    )
    for block in range(1, config.num_blocks + 1):
        filters = width * 2 ** (block - 1)
        if block > 1:
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        for conv in (1, 2):
            is_last = block == config.num_blocks and conv == 2
            name = LAST_CONV_LAYER if is_last else f"block{block}_conv{conv}"
            layer = keras.layers.SeparableConv2D(
                filters, 3, padding="same", use_bias=False, name=name
            )
            x = _conv_bn_relu(x, layer, name, synchronized)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout")(x)
    return _with_head(inputs, x, config)


def _standardize(x, clip: float):
    """Each film to zero mean and unit variance over its own pixels (LayerNormalization over
    height, width and channel, with no learnt scale or shift), so the overall exposure of a
    batch of films cannot be a cue; converts to int8 TFLite ops. With `clip`, clipped to
    [-c, c] (shifted to [0, 2c]) with built-in layers, so the saved model loads in plain Keras:
    the int8 range of this tensor is then fixed by design, not stretched by a film's few
    extreme pixels."""
    x = keras.layers.LayerNormalization(
        axis=(1, 2, 3), center=False, scale=False, epsilon=1e-3, name="standardize"
    )(x)
    if clip > 0:
        x = keras.layers.Rescaling(1.0, offset=clip, name="standardize_shift")(x)
        x = keras.layers.ReLU(max_value=2 * clip, name="standardize_clip")(x)
    return x


def _with_head(inputs, x, config: Config) -> keras.Model:
    """The model with its head named "predictions" on the pooled features `x` (see
    `build_model`)."""
    if config.binary_from_subtypes:
        # P(pneumonia) = P(BACTERIAL) + P(VIRAL) = 1 - P(NORMAL): a fixed, non-trainable Dense
        # (weights 0, 1, 1), which every runtime (int8 TFLite included) runs as it is.
        x = keras.layers.Dense(3, activation="softmax", name=SUBTYPE_HEAD_LAYER)(x)
        head = keras.layers.Dense(1, use_bias=False, trainable=False, name=OUTPUT_LAYER)
        model = keras.Model(inputs, head(x), name="pneumocnn")
        head.set_weights([np.array([[0.0], [1.0], [1.0]], dtype="float32")])
        return model
    task = Task.of(config.task)
    activation = "softmax" if task.subtype else "sigmoid"
    outputs = keras.layers.Dense(task.head_units, activation=activation, name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="pneumocnn")


def fitting_model(model: keras.Model) -> keras.Model:
    """The model that trains: `model` itself, or for `train_on_subtypes` its three-class
    softmax (the same layers and weights, without the fixed pneumonia head).

    Example:

    >>> model = build_model(Config(image_size=64, train_on_subtypes=True))
    >>> model.output_shape, fitting_model(model).output_shape
    ((None, 1), (None, 3))
    """
    if SUBTYPE_HEAD_LAYER not in [layer.name for layer in model.layers]:
        return model
    return keras.Model(
        model.inputs, model.get_layer(SUBTYPE_HEAD_LAYER).output, name="pneumocnn_subtypes"
    )


def with_pneumonia_head(trained: keras.Model, config: Config) -> keras.Model:
    """The shipped form of a `train_on_subtypes` run: `build_model(config)` holding the weights
    of `trained` (its `fitting_model`, e.g. the checkpoint), so its one output is
    1 - P(NORMAL).

    Args:
        trained: the three-class model that trained.
        config: the run's config (`train_on_subtypes=True`).

    Returns:
        The binary model.
    """
    model = build_model(config)
    for layer in trained.layers:
        model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


# A `.keras` zip holds config.json, metadata.json and model.weights.h5 (and maybe assets/).
_MAX_KERAS_MEMBERS = 64
# What Keras parses as JSON, and the weights it reads: what the zip says each will inflate to
# (Python's zipfile never gives more than that) must fit the budget.
_KERAS_JSON_MEMBERS = ("config.json", "metadata.json")
# Of a library's error text, this much goes into the message (it may quote a whole config).
_ERROR_TEXT_CHARS = 500


def check_keras_archive(path: str | Path) -> None:
    """Checks a `.keras` zip against the memory budget before Keras opens it.

    Keras reads `config.json` whole and parses it, and the weights through h5py; a 5 MB file can
    hold a 1 GB `config.json`. The sizes the zip's directory records are what Python's zipfile
    will inflate each member to at most, so they are checked: the JSON members against
    `MAX_METADATA_BYTES`, every member and their sum against `MAX_DECODED_BYTES` (the weights
    of this package's models take under 10 MB).

    Raises:
        ValueError: if the file is not a zip, holds too many members, or one is too large.
    """
    shown = display_name(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ValueError(
            f"Cannot load '{shown}' as a .keras model: it is not a readable zip "
            f"({type(error).__name__}: {str(error)[:_ERROR_TEXT_CHARS]}). Use a model written by "
            "`python -m pneumocnn.train` or the export."
        ) from error
    largest = max(members, key=lambda member: member.file_size, default=None)
    total = sum(member.file_size for member in members)
    oversized = [
        member
        for member in members
        if member.file_size
        > (MAX_METADATA_BYTES if member.filename in _KERAS_JSON_MEMBERS else MAX_DECODED_BYTES)
    ]
    if len(members) > _MAX_KERAS_MEMBERS or oversized or total > MAX_DECODED_BYTES:
        what = oversized[0] if oversized else largest
        raise ValueError(
            f"Cannot load '{shown}' as a .keras model: it holds {len(members)} members inflating "
            f"to {total:,} bytes, '{display_name(what.filename) if what else '-'}' alone to "
            f"{what.file_size if what else 0:,}; the limits are {_MAX_KERAS_MEMBERS} members, "
            f"{MAX_METADATA_BYTES:,} bytes for config.json and metadata.json and "
            f"{MAX_DECODED_BYTES:,} in all. Received: model='{shown}'. Use a model written by "
            "`python -m pneumocnn.train` or the export."
        )


def check_declared_weights(path: str | Path) -> int:
    """Checks the weights a `.keras` file's `config.json` declares against the memory budget,
    before Keras allocates them.

    Keras builds the model from its config, allocating every weight, before it reads the weights
    file: a 1 KB config declaring a Dense layer of 10^5 x 10^5 units takes 40 GB, whatever the
    zip holds. Here the model is rebuilt inside a `keras.StatelessScope` that leaves new
    variables uninitialized (Keras defers their values there), so their shapes can be counted
    with nothing allocated. (No Keras function counts a config's weights without building it.)

    Returns:
        The declared weights' size in bytes.

    Raises:
        ValueError: if the config cannot be rebuilt, or declares more than `MAX_DECODED_BYTES`.
    """
    shown = display_name(path)
    pending = _uninitialized_variables()
    # Building layers draws their default seeds from Python's and NumPy's generators: put them
    # back, so that checking a model does not change what a seeded fine-tuning of it learns.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        # The model is loaded uncompiled: its optimizer's variables are never made.
        config.pop("compile_config", None)
        with keras.StatelessScope(initialize_variables=False):
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        declared = sum(
            math.prod(int(d) for d in weight.shape) * np.dtype(weight.dtype).itemsize
            for weight in model.weights
        )
    # Keras signals a config it cannot rebuild with many types: all mean "not loadable".
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"Cannot load '{shown}' as a pneumocnn .keras model: its config.json does not "
            f"rebuild ({type(error).__name__}: {' '.join(str(error)[:_ERROR_TEXT_CHARS].split())})"
            ". Use a model written by `python -m pneumocnn.train` or the export."
        ) from error
    finally:
        _set_uninitialized_variables(pending)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    if declared > MAX_DECODED_BYTES:
        raise ValueError(
            f"Cannot load '{shown}' as a .keras model: its config.json declares {declared:,} "
            f"bytes of weights, past the limit of {MAX_DECODED_BYTES:,} (this package's models "
            f"declare under 10 MB). Received: model='{shown}'. Use a model written by `python -m "
            "pneumocnn.train` or the export."
        )
    return declared


# Keras keeps the variables a stateless scope left uninitialized in a list in its private global
# state, and the next scope to exit initializing (allocating) them; there is no public call to
# read or reset it. `check_declared_weights` puts back the list it found, so that its own
# variables are never allocated; on another Keras layout the check stays correct and they linger.
def _uninitialized_variables() -> list | None:
    if _keras_state is None:
        return None
    return list(_keras_state.get_global_attribute("uninitialized_variables") or [])


def _set_uninitialized_variables(variables: list | None) -> None:
    if variables is not None and _keras_state is not None:
        _keras_state.set_global_attribute("uninitialized_variables", variables)


def load_model(path: str | Path) -> keras.Model:
    """Loads a `.keras` model for inference, in Keras's safe mode (no arbitrary code), after
    checking the archive and the weights its config declares against the memory budget (see
    `check_keras_archive` and `check_declared_weights`).

    Args:
        path: a `.keras` file written by training or export.

    Returns:
        The model, uncompiled.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a loadable `.keras` model, or is over the budget.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Model file not found. Received: model='{path}'. Pass a run's best.keras or "
            "saved_models/pneumocnn.keras."
        )
    check_keras_archive(path)
    check_declared_weights(path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    # Keras signals a file it cannot rebuild with many types (a KeyError for a missing field, a
    # zipfile error for a damaged member, ...): all mean "not a loadable model".
    except Exception as error:  # noqa: BLE001
        raw = str(error)  # cut before anything else: it may quote a whole config
        text = " ".join(raw[:_ERROR_TEXT_CHARS].split())
        if len(raw) > _ERROR_TEXT_CHARS:
            text += f"... ({len(raw) - _ERROR_TEXT_CHARS:,} more characters)"
        raise ValueError(
            f"Cannot load '{display_name(path)}' as a pneumocnn .keras model "
            f"({type(error).__name__}: {text}). Use a model written by `python -m "
            "pneumocnn.train` or the export."
        ) from error
