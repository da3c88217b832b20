"""Export: `python -m pneumocnn.export RUN_DIR` writes the model users embed.

From a run folder it writes, into `RUN_DIR/export/` by default: `pneumocnn_int8.tflite` (full
integer: uint8 input of raw pixels, int8 builtin ops only, uint8 output), `pneumocnn_fp16.tflite`,
`pneumocnn_rgb_int8.tflite` (for stock image classifiers: float32 RGB in, raw pixels; the same int8
network; one float32 score per class whose argmax is the decision at the threshold),
`pneumocnn.keras`, `pneumocnn_labels.txt`, the model card `MODEL_CARD.md` (see `pneumocnn.card`),
and the metadata `pneumocnn.json` (see `pneumocnn.metadata`, which also holds the input guard's
calibration, see `pneumocnn.guard`). A `--task subtype` run's files are named `pneumocnn_subtype*`
instead (its card `pneumocnn_subtype_MODEL_CARD.md`). Every `.tflite` has a fixed batch of 1 and
embedded TFLite metadata (see `pneumocnn.edge`). Replacing the shipped models is a choice made by
name: `--output-dir saved_models`.

The int8 model is checked against the float model on the run's validation split before anything is
written: its decisions must agree on at least 99% of images and its ROC AUC must be within 0.005;
the RGB variant must name the int8 model's class on every validation film. Each file is written
under a temporary name and renamed, so an interrupted export leaves no half-written file.

`export` is a list of named steps: `prepare` (the run, its validation split, the float model and
the threshold), `convert_family` (int8, float16, RGB int8, `.keras`, labels), `check_int8`
(parity), `check_rgb` (the RGB variant's parity), `describe` (the metadata) and `write_family`
(rename into place).

`recalibrate` gives an exported family a new threshold (a site calibration, see
`pneumocnn.evaluate.calibrate`) with the same pieces: `read_family`, `retarget_rgb`, `reembed`
(the embedded descriptions name the threshold), `check_recalibrated` and `write_family`.

Example:

    python -m pneumocnn.export runs/20261122-003321                  # runs/20261122-003321/export
    python -m pneumocnn.export runs/20261122-003321 --output-dir saved_models   # ship it
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumocnn import cli

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd

    from pneumocnn.config import Config
    from pneumocnn.data import LoadedSplit
    from pneumocnn.lite import LiteModel
    from pneumocnn.runs import Source

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
# The RGB variant runs the int8 model's network quantized the same way, with its luma and head in
# float32: it must name the int8 model's class on every film, with scores within this of
# `pneumocnn.edge.operating_scores` of the int8 model's output.
RGB_SCORE_TOLERANCE = 1e-4
# Training films the input guard's out-of-distribution score is fitted on (seeded, stratified
# by class): enough for a 256-dimensional thumbnail's leading components, and quick to decode.
GUARD_FIT_IMAGES = 2000
MAX_AUC_DROP = 0.005
# The model files of an export, by role (see `pneumocnn.metadata.model_files`).
MODEL_ROLES = ("int8", "fp16", "rgb_int8", "keras")


class ParityError(cli.CheckFailedError):
    """Raised when the int8 model strays too far from the float model."""


def representative_images(
    split: pd.DataFrame, root: Path, image_size: int, count: int, seed: int
) -> np.ndarray:
    """A seeded, class-stratified sample of `count` training images (raw 0-255; an equal share
    per class of the split, so three classes of a subtype run share `count` too) for
    calibration."""
    from pneumocnn import data

    train = split[split["subset"] == "train"]
    sample = data.limit_per_class(train, max(1, count // train["label"].nunique()), seed)
    return pin_input_range(data.load_split(sample, "train", image_size, root).images)


def pin_input_range(images: np.ndarray) -> np.ndarray:
    """A copy of calibration images whose observed range is exactly 0-255 (two pixels of the
    first image set to 0 and 255), so the uint8 input gets scale 1 and zero point 0: an app
    feeds raw pixels unchanged."""
    import numpy as np

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
    import numpy as np
    import tensorflow as tf

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


def _layer_tensors(saved_model: Path, layers: Sequence[str]) -> list[str]:
    """The TFLite tensor names of Keras layers' ops (and of the model's output, which the last
    op writes under the signature's name), read from a float conversion of the same
    SavedModel: the names selective quantization takes."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(
        model_content=tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
    )
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


def check_parity(
    labels: np.ndarray,
    float_probabilities: np.ndarray,
    int8_probabilities: np.ndarray,
    threshold: float,
    class_names: list[str],
    strict: bool = True,
) -> dict[str, Any]:
    """Compares int8 and float predictions on validation images (see `pneumocnn.metrics.parity`).

    Args:
        labels: true labels.
        float_probabilities: the float model's per-class probabilities.
        int8_probabilities: the int8 model's, same shape.
        threshold: the decision threshold on P(pneumonia).
        class_names: index = label.
        strict: raise when the check fails. Defaults to True.

    Returns:
        `images`, `agreement` (share of identical decisions), `auc_float`, `auc_int8`,
        `auc_drop`, `max_abs_difference` of the probabilities, the bars (`min_agreement`,
        `max_auc_drop`), `passed`, and, when it failed, `message`.

    Raises:
        ParityError: if agreement is below 99% or the AUC drops by more than 0.005, and
            `strict` (the default) is True.
    """
    from pneumocnn.metrics import parity as measure_parity

    parity = measure_parity(labels, float_probabilities, int8_probabilities, threshold, class_names)
    parity["min_agreement"], parity["max_auc_drop"] = MIN_AGREEMENT, MAX_AUC_DROP
    parity["passed"] = parity["agreement"] >= MIN_AGREEMENT and parity["auc_drop"] <= MAX_AUC_DROP
    if not parity["passed"]:
        calls = (
            f"; its pneumonia-vs-NORMAL calls alone on {parity['pneumonia_agreement']:.2%}"
            if len(class_names) > 2
            else ""
        )
        parity["message"] = (
            f"The int8 model strays too far from the float model on {parity['images']} "
            f"validation images: decisions agree on {parity['agreement']:.2%} (need >= "
            f"{MIN_AGREEMENT:.0%}{calls}), AUC {parity['auc_int8']:.4f} vs "
            f"{parity['auc_float']:.4f} "
            f"(drop {parity['auc_drop']:.4f}, allowed {MAX_AUC_DROP}). Nothing was written. "
            "Try more --calibration-images."
        )
        if strict:
            raise ParityError(parity["message"])
    return parity


def tensor_description(details: dict[str, Any]) -> dict[str, Any]:
    """The dtype, shape and quantization of one TFLite tensor, JSON-ready."""
    import numpy as np

    scale, zero_point = details["quantization"]
    return {
        "dtype": np.dtype(details["dtype"]).name,
        "shape": [int(v) for v in details["shape_signature"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


@dataclasses.dataclass
class Prepared:
    """What every export step needs from the run folder.

    Args:
        source: the run (see `pneumocnn.runs.resolve_source`).
        root: the data folder.
        split: the run's `split.csv`.
        val: the loaded validation split.
        keras_model: the float model.
        float_probabilities: its per-class probabilities on `val`.
        threshold: the decision threshold, chosen on validation.
        summary: the run's `summary.json`.
    """

    source: Source
    root: Path
    split: pd.DataFrame
    val: LoadedSplit
    keras_model: keras.Model
    float_probabilities: np.ndarray
    threshold: float
    summary: dict[str, Any]

    @property
    def config(self) -> Config:
        return self.source.config


def prepare(run_dir: str | Path, target_sensitivity: float | None = None) -> Prepared:
    """Step 1: reads the run folder, loads its validation split and float model, runs it, and
    reads (or chooses and stores) the threshold.

    Raises:
        ValueError: if `run_dir` is not a training run folder.
    """
    import pandas as pd

    from pneumocnn import data, runs
    from pneumocnn.model import load_model
    from pneumocnn.runners import keras_probabilities

    source = runs.resolve_source(run_dir)
    if source.run_dir is None:
        raise ValueError(
            f"Export needs a training run folder (with config.json and split.csv). "
            f"Received: run_dir='{run_dir}'. Pass the folder that `python -m pneumocnn.train` "
            "wrote (runs/<timestamp>)."
        )
    dataset = data.find_dataset(data.resolve_data_dir(source.config.data_dir))
    split = pd.read_csv(source.run_dir / runs.SPLIT_FILE)
    val = data.load_split(split, "val", source.config.image_size, dataset.root)
    keras_model = load_model(source.model_path)
    float_probabilities = keras_probabilities(keras_model, val.images)
    threshold = runs.ensure_threshold(source, target_sensitivity, (val.labels, float_probabilities))
    summary = json.loads((source.run_dir / runs.SUMMARY_FILE).read_text())
    return Prepared(
        source, dataset.root, split, val, keras_model, float_probabilities, threshold, summary
    )


def convert_family(
    prepared: Prepared,
    scratch: Path,
    files: dict[str, str],
    calibration_images: int,
    name: str,
    equalize: bool = True,
) -> dict[str, Any] | None:
    """Step 2: writes the int8, float16 and RGB int8 `.tflite` (a batch of 1, TFLite metadata
    embedded; see `pneumocnn.edge`), the `.keras` and the labels into `scratch`.

    With `equalize`, the `.tflite` files are converted from the activation-equalized form of
    the model (`pneumocnn.equalize`: the same float function, its channels stretched to share
    int8's range), which rounds less in int8; the `.keras` is the trained model as it is.

    Returns:
        The equalization's metadata record, or `None` without `equalize` (or when no layer
        could be equalized: a model that is not a chain of layers, such as an ensemble).
    """
    from pneumocnn import edge
    from pneumocnn.equalize import equalize_activations

    config = prepared.config
    calibration = representative_images(
        prepared.split, prepared.root, config.image_size, calibration_images, config.seed
    )
    model, record = prepared.keras_model, None
    if equalize:
        equalized = equalize_activations(model, calibration)
        if equalized.relu_layers or equalized.depthwise_layers:
            model, record = equalized.model, equalized.record()
        logger.info(
            "Equalized the int8 ranges of %d ReLU outputs and %d depthwise results (outputs "
            "change by %.1e at most)",
            len(equalized.relu_layers),
            len(equalized.depthwise_layers),
            equalized.max_output_change,
        )
    saved_model = edge.fixed_batch_saved_model(model, scratch / "saved_model")
    card = {
        "name": name,
        "task": config.task,
        "class_names": list(prepared.source.class_names),
        "threshold": prepared.threshold,
        "image_size": config.image_size,
    }
    logger.info("Converting to int8 with %d calibration images", len(calibration))
    int8 = convert(saved_model, calibration)
    (scratch / files["int8"]).write_bytes(edge.embed_pneumocnn_metadata(int8, card, channels=1))
    logger.info("Converting to float16")
    fp16 = convert(saved_model, None)
    (scratch / files["fp16"]).write_bytes(edge.embed_pneumocnn_metadata(fp16, card, channels=1))
    logger.info("Converting the RGB variant to int8")
    rgb = edge.rgb_variant(model, prepared.threshold, calibration, convert, scratch)
    (scratch / files["rgb_int8"]).write_bytes(edge.embed_pneumocnn_metadata(rgb, card, channels=3))
    # Saved uncompiled: loading it needs plain Keras only, not pneumocnn's training metrics.
    prepared.keras_model.save(scratch / files["keras"])
    (scratch / files["labels"]).write_text("\n".join(prepared.source.class_names) + "\n")
    return record


def _portable_config(config: Config) -> dict[str, Any]:
    """The config as recorded in shipped metadata: folders by their name only, so no path of
    the exporting machine travels with the model."""
    values = config.to_dict()
    for key in ("data_dir", "output_dir"):
        if values.get(key):
            values[key] = Path(values[key]).name
    return values


def file_metadata(
    prepared: Prepared, scratch: Path, files: dict[str, str], name: str
) -> dict[str, Any]:
    """Step 3: the metadata of the files in `scratch` (what `LiteModel` needs to verify and run
    them), before any check."""
    from pneumocnn import __version__
    from pneumocnn.metadata import FORMAT_VERSION, PREPROCESSING, sha256_of
    from pneumocnn.runs import THRESHOLD_FILE
    from pneumocnn.task import PNEUMONIA

    config, source = prepared.config, prepared.source
    model_names = [files[role] for role in MODEL_ROLES]
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "task": config.task,
        "name": name,
        "files": files,
        "image_size": config.image_size,
        "channels": 1,
        "class_names": list(source.class_names),
        "positive_class": PNEUMONIA if config.task == "subtype" else source.class_names[1],
        "threshold": prepared.threshold,
        **_threshold_record(source.run_dir / THRESHOLD_FILE),
        "preprocessing": PREPROCESSING,
        "sha256": {file: sha256_of(scratch / file) for file in model_names},
        "file_bytes": {file: (scratch / file).stat().st_size for file in model_names},
        "config": _portable_config(config),
    }


def _threshold_record(path: Path) -> dict[str, Any]:
    """The threshold's rule, and its site calibration record when it came from
    `python -m pneumocnn.evaluate RUN --calibrate-on DIR` (see `pneumocnn.evaluate.calibrate`)."""
    stored = json.loads(path.read_text())
    record = {"threshold_rule": stored["rule"]}
    if "calibration" in stored:
        record["calibration"] = stored["calibration"]
    return record


def guard_calibration(
    split: pd.DataFrame,
    root: Path,
    config: Config,
    val_images: np.ndarray,
    fit_images: int = GUARD_FIT_IMAGES,
) -> Any:
    """Fits the input guard's out-of-distribution score (see `pneumocnn.guard.fit`) on a seeded,
    class-stratified sample of up to `fit_images` training films, with its threshold on the
    validation films.

    Returns:
        A `pneumocnn.guard.GuardCalibration`.
    """
    from pneumocnn import data, guard

    train = split[split["subset"] == "train"]
    per_class = max(1, fit_images // max(1, train["label"].nunique()))
    sample = data.limit_per_class(train, per_class, config.seed)
    logger.info("Fitting the input guard on %d training films", len(sample))
    images = data.load_split(sample, "train", config.image_size, root).images
    return guard.fit(images, val_images)


def check_int8(
    prepared: Prepared, scratch: Path, files: dict[str, str], require_parity: bool
) -> tuple[dict[str, Any], np.ndarray]:
    """Step 4: runs the int8 model in `scratch` on the validation split and checks it against
    the float model (see `check_parity`).

    Returns:
        `(parity, int8_probabilities)`.

    Raises:
        ParityError: if the check fails and `require_parity` is True.
    """
    from pneumocnn.lite import LiteModel

    int8_probabilities = LiteModel(scratch / files["int8"]).predict_proba(prepared.val.images)
    parity = check_parity(
        prepared.val.labels,
        prepared.float_probabilities,
        int8_probabilities,
        prepared.threshold,
        list(prepared.source.class_names),
        strict=require_parity,
    )
    if not parity["passed"]:
        logger.warning("Writing despite failed parity (require_parity=False): %s", parity)
    logger.info("int8 parity on validation: %s", parity)
    return parity, int8_probabilities


def check_rgb(
    prepared: Prepared,
    scratch: Path,
    files: dict[str, str],
    int8_probabilities: np.ndarray,
    require_parity: bool,
) -> dict[str, Any]:
    """Step 5: runs the RGB variant on the validation split (as gray RGB) and checks that its
    highest score names the int8 model's decision on every film (see `rgb_parity`).

    Returns:
        The parity figures.

    Raises:
        ParityError: if the check fails and `require_parity` is True.
    """
    from pneumocnn.lite import LiteModel

    return rgb_parity(
        LiteModel(scratch / files["rgb_int8"]),
        prepared.val.images,
        int8_probabilities,
        prepared.threshold,
        list(prepared.source.class_names),
        require_parity,
    )


def rgb_parity(
    rgb: LiteModel,
    images: np.ndarray,
    int8_probabilities: np.ndarray,
    threshold: float,
    class_names: list[str],
    require_parity: bool,
    films: str = "validation",
) -> dict[str, Any]:
    """Runs the RGB variant on grayscale films (repeated to gray RGB) and checks that its highest
    score names the int8 model's decision at `threshold` on every film, and that its scores are
    `pneumocnn.edge.operating_scores` of the int8 model's output within `RGB_SCORE_TOLERANCE`
    (see `pneumocnn.edge.check_rgb_parity`).

    Args:
        rgb: the RGB variant.
        images: raw 0-255 grayscale films `(n, H, W, 1)`.
        int8_probabilities: the int8 model's probabilities on them.
        threshold: the operating threshold baked into `rgb`.
        class_names: index = label.
        require_parity: raise when the check fails.
        films: what the films are, for the messages. Defaults to "validation".

    Returns:
        The parity figures, with `passed`.

    Raises:
        ParityError: if the check fails and `require_parity` is True.
    """
    import numpy as np

    from pneumocnn.edge import check_rgb_parity

    scores = rgb.predict_proba(np.repeat(images, 3, axis=-1))
    parity = check_rgb_parity(int8_probabilities, scores, threshold, class_names)
    parity["passed"] = (
        parity["agreement"] == 1.0 and parity["max_abs_difference"] <= RGB_SCORE_TOLERANCE
    )
    logger.info("RGB variant against the int8 model on %s films: %s", films, parity)
    if not parity["passed"] and require_parity:
        raise ParityError(
            f"The RGB variant names the int8 model's class on {parity['agreement']:.2%} of the "
            f"{parity['images']} {films} films (need all), and its scores differ from the int8 "
            f"model's operating scores by up to {parity['max_abs_difference']:.2g} (need <= "
            f"{RGB_SCORE_TOLERANCE:g}). Nothing was written."
        )
    return parity


def describe(
    prepared: Prepared,
    scratch: Path,
    files: dict[str, str],
    metadata: dict[str, Any],
    parity: dict[str, Any],
    int8_probabilities: np.ndarray,
    rgb_parity: dict[str, Any],
) -> dict[str, Any]:
    """Step 6: completes the metadata: tensors, output contract, training data, validation
    metrics of the int8 and float models, the parity figures, the int8 model's stability under
    one grey level of pixel noise, the edge variants, the warning, training facts and the
    config."""
    from pneumocnn import edge
    from pneumocnn.lite import LiteModel
    from pneumocnn.metrics import compute_metrics, headline, pixel_noise_sensitivity

    config, source, val = prepared.config, prepared.source, prepared.val
    lite = {role: LiteModel(scratch / files[role]) for role in ("int8", "fp16", "rgb_int8")}
    summary = prepared.summary
    tensors = {
        files[role]: {
            "input": tensor_description(model.input),
            "output": tensor_description(model.output),
        }
        for role, model in lite.items()
    }
    tensors[files["keras"]] = {
        "input": {"dtype": "float32", "shape": [-1, config.image_size, config.image_size, 1]},
        "output": {"dtype": "float32", "shape": [-1, int(prepared.keras_model.output_shape[-1])]},
    }

    def figures(probabilities):
        return headline(
            compute_metrics(val.labels, probabilities, prepared.threshold, source.class_names)
        )

    return {
        **metadata,
        "tensors": tensors,
        "output": (
            "Softmax over class_names (NORMAL first). P(pneumonia) = 1 - P(NORMAL); "
            "decision: pneumonia when P(pneumonia) >= threshold, then the likelier of the "
            "other classes; else NORMAL."
            if config.task == "subtype"
            else "P(positive_class): a probability in [0, 1]; positive when >= threshold."
        ),
        "training_data": {
            "source": "Kaggle 'Chest X-Ray Images (Pneumonia)' (Kermany et al., 2018, "
            "CC BY 4.0), train/ split",
            "data_dir": Path(config.data_dir).name if config.data_dir else None,
            "split": f"patient-grouped, class-stratified, val_fraction={config.val_fraction}, "
            f"seed={config.split_seed_used}",
            "train_images": summary["train_images"],
            "val_images": summary["val_images"],
            "unreadable_files": summary["unreadable_files"],
        },
        "validation_metrics": {
            "int8": figures(int8_probabilities),
            "float": figures(prepared.float_probabilities),
        },
        "parity": parity,
        "stability": {
            **pixel_noise_sensitivity(lite["int8"].predict_proba, val.images),
            "films_used": "validation",
            "what": "change of the int8 model's P(pneumonia) when every pixel moves by -1, 0 "
            "or +1 grey level (another JPEG decoder or resizer does about that)",
        },
        "guard": guard_calibration(prepared.split, prepared.root, config, val.images).to_dict(),
        "warning": edge.WARNING,
        "edge": {
            "batch_size": edge.BATCH_SIZE,
            "embedded_metadata": "Every .tflite carries TFLite metadata (name, description, "
            "version, author, licence, input, labels), written with MediaPipe's writer.",
            "rgb_variant": {
                "file": files["rgb_int8"],
                "output": "One score per class, in class_names order; the highest names the "
                "decision at the threshold. For stock image classifiers (MediaPipe Tasks, "
                "Android).",
                "parity_with_int8": rgb_parity,
            },
        },
        "training": {
            key: summary[key]
            for key in ("best_epoch", "epochs_run", "parameters", "seconds_per_epoch")
        },
        "config": _portable_config(config),
    }


def write_family(
    scratch: Path,
    output_dir: Path,
    files: dict[str, str],
    metadata: dict[str, Any],
    roles: tuple[str, ...] = (*MODEL_ROLES, "labels"),
) -> None:
    """Step 7: writes the model card (see `pneumocnn.card`) and the metadata, and renames every
    file into `output_dir`: models first, metadata last, so the metadata never names a file
    that is not in place. A recalibration passes the `roles` it rewrote; a name no longer in
    `scratch` was moved already (by a run that was interrupted after writing the metadata, see
    `finish_recalibration`). The card is written every time, so it always tells what the
    metadata holds (a recalibrated threshold included)."""
    from pneumocnn.card import card_file, model_card
    from pneumocnn.metadata import write_json_atomically

    card = files.get("card") or card_file(Path(files["metadata"]).stem)
    (scratch / card).write_text(model_card(metadata))
    write_json_atomically(scratch / files["metadata"], metadata)
    for name in (*(files[role] for role in roles), card, files["metadata"]):
        if (scratch / name).exists():
            (scratch / name).replace(output_dir / name)


def export(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    calibration_images: int = 300,
    target_sensitivity: float | None = None,
    require_parity: bool = True,
    name: str | None = None,
    equalize: bool = True,
) -> dict[str, Any]:
    """Exports a run folder's best model as int8 and float16 TFLite, `.keras` and metadata.

    The files are named after the model (see `pneumocnn.metadata.model_files`):
    `pneumocnn_int8.tflite` and friends for a binary run, `pneumocnn_subtype_int8.tflite` and
    friends for a subtype run, so both can sit in one folder.

    Args:
        run_dir: a finished training run.
        output_dir: where to write; pass "saved_models" to replace the shipped models. Defaults
            to `None`: the run's own `export/` folder.
        calibration_images: training images for int8 calibration. Defaults to 300.
        target_sensitivity: choose the threshold for this sensitivity on validation instead of
            the stored one (or Youden's J when none is stored). Defaults to `None`.
        require_parity: refuse to write when the int8 model fails the parity check. Only a
            smoke run turns it off: the notebooks' quick mode and the test fixtures, whose toy
            models (32-64 px, a few epochs, a few dozen validation images) can hold a film
            within one quantization step of the threshold, so whether they pass is a near-tie
            that flips between machines. The parity figures are then still measured and
            recorded, with `parity["passed"]` telling whether they met the bars. Defaults to
            True.
        name: the model's name, the stem of its files. Defaults to `None`: "pneumocnn" for a
            binary run, "pneumocnn_subtype" for a subtype run.
        equalize: convert the activation-equalized form of the model (`pneumocnn.equalize`;
            the same float function, less int8 rounding). Defaults to True.

    Returns:
        The metadata written to `<name>.json`.

    Raises:
        ParityError: if the int8 model disagrees with the float model (nothing is written).
    """
    from pneumocnn.card import card_file
    from pneumocnn.metadata import DEFAULT_NAMES, model_files, write_json_atomically
    from pneumocnn.runs import EXPORT_DIR

    prepared = prepare(run_dir, target_sensitivity)
    name = name or DEFAULT_NAMES[prepared.config.task]
    files = {**model_files(name), "card": card_file(name)}
    output_dir = Path(output_dir) if output_dir else prepared.source.run_dir / EXPORT_DIR
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(output_dir)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=SCRATCH_PREFIX) as scratch:
        scratch = Path(scratch)
        (scratch / SCRATCH_OWNER).write_text(f"{os.getpid()}\n")
        equalization = convert_family(prepared, scratch, files, calibration_images, name, equalize)
        metadata = file_metadata(prepared, scratch, files, name)
        metadata["int8_conversion"] = {
            "calibration_images": calibration_images,
            "equalization": equalization,
        }
        # Provisional metadata, so LiteModel can verify and run the new files.
        write_json_atomically(scratch / files["metadata"], metadata)
        parity, int8_probabilities = check_int8(prepared, scratch, files, require_parity)
        rgb_parity = check_rgb(prepared, scratch, files, int8_probabilities, require_parity)
        metadata = describe(
            prepared, scratch, files, metadata, parity, int8_probabilities, rgb_parity
        )
        write_family(scratch, output_dir, files, metadata)
    return metadata


SCRATCH_PREFIX = ".export-"
# In each scratch folder: the process id of the export that owns it.
SCRATCH_OWNER = "owner.pid"


def remove_stale_scratch(output_dir: str | Path) -> list[Path]:
    """Removes the scratch folders (`.export-*`) that killed exports left in `output_dir`.

    An export works in a hidden scratch folder and renames the finished files into place; a
    kill (SIGKILL, power cut) leaves that folder behind. A scratch folder is stale when the
    process named in its `owner.pid` no longer runs (or, with no such file, after an hour), so
    a concurrent export's folder is never touched.

    Returns:
        The folders removed.
    """
    removed = []
    for folder in Path(output_dir).glob(SCRATCH_PREFIX + "*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            owner = int((folder / SCRATCH_OWNER).read_text().split()[0])
            alive = _process_exists(owner)
        except (OSError, ValueError, IndexError):
            alive = time.time() - folder.stat().st_mtime < 3600
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("Removed %s, left by an export that was killed", folder)
            removed.append(folder)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# Site recalibration of an exported model: a new threshold for a whole file family.

# The recalibration's scratch folder, beside the family: `.recalibrate-<name>`. A fixed name, so
# the next run finds one that a kill interrupted.
RECALIBRATION_PREFIX = ".recalibrate-"
_PROVISIONAL = "provisional.json"


@dataclasses.dataclass
class Family:
    """An exported model's files, as its metadata lists them.

    Args:
        folder: the folder holding them.
        metadata: the metadata `<name>.json`, verified.
    """

    folder: Path
    metadata: dict[str, Any]

    @property
    def files(self) -> dict[str, str]:
        return self.metadata["files"]

    @property
    def scratch(self) -> Path:
        return self.folder / f"{RECALIBRATION_PREFIX}{self.metadata['name']}"


def finish_recalibration(metadata_path: Path) -> bool:
    """Completes a recalibration of the family of `metadata_path` that a kill interrupted.

    Its scratch folder holds the new metadata only once every new file is written and checked
    (the commit point): then the files still there are moved into place, metadata last. Without
    the metadata, the run never committed and its scratch is removed: the family in place is
    the previous one, untouched.

    Returns:
        True if an interrupted recalibration was completed.
    """
    import shutil

    from pneumocnn.metadata import model_name

    scratch = metadata_path.parent / f"{RECALIBRATION_PREFIX}{model_name(metadata_path)}"
    if not scratch.is_dir():
        return False
    committed = scratch / metadata_path.name
    if not committed.is_file():
        shutil.rmtree(scratch)
        return False
    metadata = json.loads(committed.read_text())
    logger.warning("Completing the interrupted recalibration in '%s'", scratch)
    write_family(scratch, metadata_path.parent, metadata["files"], metadata)
    shutil.rmtree(scratch)
    return True


def read_family(model_path: str | Path) -> Family:
    """Recalibration step 1: finds the family of an exported model file, completes an
    interrupted recalibration of it (see `finish_recalibration`), and verifies it: every model
    file it lists matches its SHA-256.

    Args:
        model_path: any file of the family (`<name>_int8.tflite`, `<name>.keras`, ...).

    Raises:
        MetadataError: if the metadata is missing, or a file does not match it.
    """
    from pneumocnn.metadata import find_metadata, load_metadata

    metadata_path = find_metadata(model_path)
    finish_recalibration(metadata_path)
    metadata = load_metadata(metadata_path)
    files = metadata.get("files", {})
    for role in MODEL_ROLES:
        if role in files:
            load_metadata(metadata_path, metadata_path.parent / files[role])
    return Family(metadata_path.parent, metadata)


def retarget_rgb(family: Family, metadata: dict[str, Any]) -> list[str]:
    """Recalibration step 2: writes the family's RGB variant with the new threshold into the
    scratch folder (see `pneumocnn.edge.retarget_rgb_variant`: only the head's threshold
    constant changes, so the int8 network stays the grayscale model's), with TFLite metadata
    embedded again.

    Returns:
        The roles written: `["rgb_int8"]`, or `[]` for a family exported without one.

    Raises:
        UsageError: if the RGB variant was not made by this version's export.
    """
    from pneumocnn import edge

    if "rgb_int8" not in family.files:
        return []
    path = family.folder / family.files["rgb_int8"]
    try:
        rgb = edge.retarget_rgb_variant(
            path.read_bytes(), family.metadata["threshold"], metadata["threshold"]
        )
    except ValueError as error:
        raise cli.UsageError(f"Cannot recalibrate '{path}': {error}") from error
    (family.scratch / family.files["rgb_int8"]).write_bytes(
        edge.embed_pneumocnn_metadata(rgb, metadata, channels=3)
    )
    return ["rgb_int8"]


def reembed(family: Family, metadata: dict[str, Any]) -> list[str]:
    """Recalibration step 3: embeds the TFLite metadata again, with the new threshold in its
    description, into each grayscale `.tflite` that carries embedded metadata (see
    `pneumocnn.edge.embed_pneumocnn_metadata`); a file whose bytes would not change, or that
    was exported without embedded metadata, is left alone.

    Returns:
        The roles written into the scratch folder.
    """
    from pneumocnn import edge

    written = []
    for role in ("int8", "fp16"):
        if role not in family.files:
            continue
        content = (family.folder / family.files[role]).read_bytes()
        if edge.read_embedded_metadata(content) is None:
            continue
        embedded = edge.embed_pneumocnn_metadata(content, metadata, channels=1)
        if embedded != content:
            (family.scratch / family.files[role]).write_bytes(embedded)
            written.append(role)
    return written


def check_recalibrated(
    family: Family,
    metadata: dict[str, Any],
    roles: list[str],
    images: np.ndarray,
    int8_probabilities: np.ndarray | None,
    films: str,
) -> dict[str, Any]:
    """Recalibration step 4: records the new files' SHA-256, sizes and tensors, and checks the
    retargeted RGB variant against the int8 model on the site's films (see `rgb_parity`).

    Returns:
        The new metadata.

    Raises:
        ParityError: if the RGB variant fails the check (nothing is written).
    """
    from pneumocnn.lite import LiteModel
    from pneumocnn.metadata import sha256_of, write_json_atomically

    scratch, files = family.scratch, family.files
    metadata = json.loads(json.dumps(metadata))  # a deep copy: the family's stays as read
    for role in roles:
        metadata["sha256"][files[role]] = sha256_of(scratch / files[role])
        metadata["file_bytes"][files[role]] = (scratch / files[role]).stat().st_size
    if "rgb_int8" not in roles:
        return metadata
    # Provisional metadata under another name: the metadata's own name is the commit mark.
    write_json_atomically(scratch / _PROVISIONAL, metadata)
    rgb = LiteModel(scratch / files["rgb_int8"], scratch / _PROVISIONAL)
    if int8_probabilities is None:
        int8_probabilities = LiteModel(family.folder / files["int8"]).predict_proba(images)
    parity = rgb_parity(
        rgb,
        images,
        int8_probabilities,
        metadata["threshold"],
        list(metadata["class_names"]),
        require_parity=True,
        films=films,
    )
    (scratch / _PROVISIONAL).unlink()
    metadata.setdefault("tensors", {})[files["rgb_int8"]] = {
        "input": tensor_description(rgb.input),
        "output": tensor_description(rgb.output),
    }
    edge_record = metadata.setdefault("edge", {}).setdefault("rgb_variant", {})
    edge_record["parity_with_int8"] = {**parity, "films": films}
    return metadata


def recalibrate(
    family: Family,
    updates: dict[str, Any],
    images: np.ndarray,
    int8_probabilities: np.ndarray | None = None,
    films: str = "calibration",
) -> dict[str, Any]:
    """Gives an exported family a new threshold, keeping every file consistent with it.

    The steps: `read_family` (the caller's, before long work), `retarget_rgb` (the RGB variant
    bakes the threshold into its scores), `reembed` (the grayscale models' embedded
    descriptions name it), `check_recalibrated` (checksums, and the RGB variant against the
    int8 model on the site's films), then `write_family` with the changed files only. Every
    new file is written into the scratch folder `.recalibrate-<name>` beside the family; the
    new metadata is written there last (the commit point), then the files are renamed into
    place, metadata last. A kill before the commit leaves the previous family untouched; one
    after it leaves the rest of the renames to the next recalibration of the family (see
    `finish_recalibration`), which completes them before anything else. The int8 and float16
    models compute what they did: only their embedded description changes.

    Args:
        family: the family (see `read_family`).
        updates: the metadata fields to set: `threshold`, and `threshold_rule` and
            `calibration` (see `pneumocnn.evaluate.calibrate`).
        images: the site's films, raw 0-255 `(n, H, W, 1)`: they check the RGB variant.
        int8_probabilities: the int8 model's probabilities on `images`, if already computed.
            Defaults to `None`: computed here.
        films: the films' folder name, for the record and the messages. Defaults to
            "calibration".

    Returns:
        The new metadata.

    Raises:
        ParityError: if the retargeted RGB variant fails its check (nothing is written).
        UsageError: if the RGB variant was not made by this version's export.
    """
    import shutil

    metadata = {**family.metadata, **updates}
    family.scratch.mkdir()
    try:
        roles = retarget_rgb(family, metadata)
        roles += reembed(family, metadata)
        metadata = check_recalibrated(family, metadata, roles, images, int8_probabilities, films)
    except BaseException:
        shutil.rmtree(family.scratch, ignore_errors=True)
        raise
    write_family(family.scratch, family.folder, family.files, metadata, tuple(roles))
    family.scratch.rmdir()
    return metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.export",
        description="Export a run folder's best model to int8 and float16 TFLite with metadata.",
    )
    parser.add_argument("run_dir", help="A finished training run folder.")
    parser.add_argument(
        "--output-dir",
        help="Where to write the model files (default: RUN_DIR/export). Pass --output-dir "
        "saved_models to replace the shipped models.",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=300,
        help="Training images used to calibrate int8 ranges (default: 300).",
    )
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        help="Choose the threshold for this validation sensitivity "
        "(default: the run's stored threshold, else Youden's J).",
    )
    parser.add_argument(
        "--no-equalize",
        action="store_true",
        help="Convert the model as it is, without activation equalization (which stretches "
        "each channel to share int8's range evenly: the same float function, less int8 "
        "rounding; see pneumocnn/equalize.py). For reproducing files exported before it.",
    )
    parser.add_argument(
        "--name",
        help="Stem of the written files (default: pneumocnn for a binary run, "
        "pneumocnn_subtype for a subtype run).",
    )
    return parser


def recalibration_advice(metadata: dict[str, Any], output_dir: str | Path) -> str | None:
    """What to run so an exported family's site-calibrated threshold is the int8 file's own.

    A run folder is calibrated on its float model (`best.keras`); the int8 file makes a few calls
    differently, so at that threshold it can miss the target sensitivity by a film or two (the
    shipped model did: 0.959 against 0.96). Calibrating the exported int8 file on the same folder
    fixes it.

    Args:
        metadata: an exported family's metadata.
        output_dir: the folder the family was written to.

    Returns:
        The advice, or `None` when the threshold is not a site calibration or was already chosen
        on the int8 file's own outputs.
    """
    record = metadata.get("calibration")
    int8 = metadata["files"]["int8"]
    if not record or record.get("model") == int8:
        return None
    return (
        f"The threshold {metadata['threshold']:.4f} is a site calibration of the float model "
        f"({record.get('model')}) on '{record['folder']}'; the int8 file makes a few calls "
        "differently. To make it the int8 file's own, run: python -m pneumocnn.evaluate "
        f"{Path(output_dir) / int8} --calibrate-on {record['folder']} --target-sensitivity "
        f"{record['target_sensitivity']} (with the path of that folder)"
    )


def _command(args: argparse.Namespace) -> int:
    if args.calibration_images < 1:
        raise cli.UsageError(
            "--calibration-images must be at least 1. "
            f"Received: calibration_images={args.calibration_images}. Pass a positive count "
            "(default 300)."
        )
    from pneumocnn.runs import EXPORT_DIR

    output_dir = Path(args.output_dir) if args.output_dir else Path(args.run_dir) / EXPORT_DIR
    metadata = export(
        args.run_dir,
        output_dir,
        args.calibration_images,
        args.target_sensitivity,
        name=args.name,
        equalize=not args.no_equalize,
    )
    int8 = metadata["validation_metrics"]["int8"]
    files = metadata["files"]
    sizes = metadata["file_bytes"]
    subtype = (
        f"; three classes: accuracy {int8['subtype_accuracy']:.4f}, macro one-vs-rest AUC "
        f"{int8['macro_ovr_auc']:.4f}"
        if metadata["task"] == "subtype"
        else ""
    )
    print(
        f"Wrote {output_dir}: {files['int8']} ({sizes[files['int8']]:,} bytes), "
        f"{files['fp16']} ({sizes[files['fp16']]:,} bytes), {files['keras']}, "
        f"{files['metadata']}, {files['labels']}, {files['card']}\n"
        f"int8 on validation at threshold {metadata['threshold']:.4f}: pneumonia AUC "
        f"{int8['roc_auc']:.4f}, accuracy {int8['accuracy']:.4f}, sensitivity "
        f"{int8['sensitivity']:.4f}, specificity {int8['specificity']:.4f}{subtype}; agreement "
        f"with float {metadata['parity']['agreement']:.2%}"
    )
    advice = recalibration_advice(metadata, output_dir)
    if advice:
        print(advice)
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
