"""Export: `python -m pneumocnn.export RUN_DIR` writes the model users embed.

From a run folder it writes, into `saved_models/` by default: `pneumocnn_int8.tflite` (full
integer: uint8 input of raw pixels, int8 builtin ops only, uint8 output), `pneumocnn_fp16.tflite`,
`pneumocnn.keras`, `pneumocnn_labels.txt`, and the metadata `pneumocnn.json` (see
`pneumocnn.metadata`). A `--task subtype` run's files are named `pneumocnn_subtype*` instead.

The int8 model is checked against the float model on the run's validation split before anything
is written: its decisions must agree on at least 99% of images and its ROC AUC must be within
0.005. Each file is written under a temporary name and renamed, so an interrupted export leaves
no half-written file.

Example:

    python -m pneumocnn.export runs/20261122-003321 --output-dir saved_models
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from pneumocnn import __version__, data
from pneumocnn.evaluate import (
    compute_metrics,
    ensure_threshold,
    keras_probabilities,
    pneumonia_view,
    resolve_source,
)
from pneumocnn.lite import LiteModel
from pneumocnn.metadata import (
    DEFAULT_NAMES,
    FORMAT_VERSION,
    PREPROCESSING,
    decide,
    model_files,
    sha256_of,
    write_json_atomically,
)
from pneumocnn.model import load_model

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
MAX_AUC_DROP = 0.005


class ParityError(RuntimeError):
    """Raised when the int8 model strays too far from the float model."""


def representative_images(
    split: pd.DataFrame, root: Path, image_size: int, count: int, seed: int
) -> np.ndarray:
    """A seeded, class-stratified sample of training images (raw 0-255) for calibration."""
    train = split[split["subset"] == "train"]
    sample = data.limit_per_class(train, max(1, count // 2), seed)
    images = data.load_split(sample, "train", image_size, root).images.copy()
    # Pin the observed input range to exactly 0-255 (two pixels of one image), so the uint8
    # input gets scale 1 and zero point 0: an app feeds raw pixels unchanged.
    images[0, 0, 0, 0], images[0, 0, 1, 0] = 0, 255
    return images


def convert(saved_model: Path, calibration: np.ndarray | None) -> bytes:
    """Converts a SavedModel (from Keras's `model.export`) to a TFLite flatbuffer.

    Keras 3's own SavedModel export is the path the TFLite converter reads reliably.

    Args:
        saved_model: the SavedModel folder.
        calibration: raw-pixel images for full-integer int8 quantization; `None` gives a
            float16 model instead.

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
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # Pixels are 0-255 integers: uint8 input holds them exactly (scale 1, zero point 0).
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()


def check_parity(
    labels: np.ndarray,
    float_probabilities: np.ndarray,
    int8_probabilities: np.ndarray,
    threshold: float,
    class_names: list[str],
    strict: bool = True,
) -> dict[str, float]:
    """Compares int8 and float predictions on validation images.

    Decisions follow `pneumocnn.metadata.decide`, so for a subtype model (outputs `(n, 3)`)
    they are the three-class labels; the AUC is that of pneumonia vs NORMAL for both tasks.

    Args:
        labels: true labels.
        float_probabilities: the float model's outputs.
        int8_probabilities: the int8 model's outputs, same shape.
        threshold: the decision threshold on P(pneumonia).
        class_names: index = label.
        strict: raise when the check fails. Defaults to True.

    Returns:
        `images`, `agreement` (share of identical decisions), `auc_float`, `auc_int8`,
        `auc_drop`, `max_abs_difference` of the probabilities, the bars (`min_agreement`,
        `max_auc_drop`), and `passed`.

    Raises:
        ParityError: if agreement is below 99% or the AUC drops by more than 0.005, and
            `strict` (the default) is True.
    """
    from sklearn.metrics import roc_auc_score

    float_probabilities = np.asarray(float_probabilities)
    int8_probabilities = np.asarray(int8_probabilities)
    agreement = float(
        np.mean(
            np.array(decide(float_probabilities, threshold, class_names))
            == np.array(decide(int8_probabilities, threshold, class_names))
        )
    )
    binary_labels, float_pneumonia = pneumonia_view(labels, float_probabilities)
    _, int8_pneumonia = pneumonia_view(labels, int8_probabilities)
    auc_float = float(roc_auc_score(binary_labels, float_pneumonia))
    auc_int8 = float(roc_auc_score(binary_labels, int8_pneumonia))
    parity = {
        "images": int(len(labels)),
        "agreement": agreement,
        "auc_float": auc_float,
        "auc_int8": auc_int8,
        "auc_drop": auc_float - auc_int8,
        "max_abs_difference": float(np.max(np.abs(float_probabilities - int8_probabilities))),
    }
    parity["min_agreement"], parity["max_auc_drop"] = MIN_AGREEMENT, MAX_AUC_DROP
    parity["passed"] = agreement >= MIN_AGREEMENT and auc_float - auc_int8 <= MAX_AUC_DROP
    if not parity["passed"] and strict:
        raise ParityError(
            f"The int8 model strays too far from the float model on {len(labels)} validation "
            f"images: decisions agree on {agreement:.2%} (need >= {MIN_AGREEMENT:.0%}), AUC "
            f"{auc_int8:.4f} vs {auc_float:.4f} (drop {auc_float - auc_int8:.4f}, allowed "
            f"{MAX_AUC_DROP}). Nothing was written. Try more --calibration-images."
        )
    return parity


def tensor_description(details: dict[str, Any]) -> dict[str, Any]:
    """The dtype, shape and quantization of one TFLite tensor, JSON-ready."""
    scale, zero_point = details["quantization"]
    return {
        "dtype": np.dtype(details["dtype"]).name,
        "shape": [int(v) for v in details["shape_signature"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def export(
    run_dir: str | Path,
    output_dir: str | Path = "saved_models",
    calibration_images: int = 300,
    target_sensitivity: float | None = None,
    require_parity: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Exports a run folder's best model as int8 and float16 TFLite, `.keras` and metadata.

    The files are named after the model (see `pneumocnn.metadata.model_files`):
    `pneumocnn_int8.tflite` and friends for a binary run, `pneumocnn_subtype_int8.tflite` and
    friends for a subtype run, so both can sit in one folder.

    Args:
        run_dir: a finished training run.
        output_dir: where to write. Defaults to "saved_models".
        calibration_images: training images for int8 calibration. Defaults to 300.
        target_sensitivity: choose the threshold for this sensitivity on validation instead of
            the stored one (or Youden's J when none is stored). Defaults to `None`.
        require_parity: refuse to write when the int8 model fails the parity check. Only a
            smoke run turns it off: the notebooks' quick mode and the test fixtures, whose toy
            models (32-64 px, a few epochs, a few dozen validation images) can hold a film
            within one quantization step of the threshold, so whether they pass is a near-tie
            that flips between machines. The parity is then still measured and recorded in
            full, with `parity["passed"]` telling whether it met the bars. Defaults to True.
        name: the model's name, the stem of its files. Defaults to `None`: "pneumocnn" for a
            binary run, "pneumocnn_subtype" for a subtype run.

    Returns:
        The metadata written to `<name>.json`.

    Raises:
        ParityError: if the int8 model disagrees with the float model (nothing is written).
    """
    source = resolve_source(run_dir)
    if source.run_dir is None:
        raise ValueError(
            f"Export needs a training run folder (with config.json and split.csv). "
            f"Received: run_dir='{run_dir}'."
        )
    config = source.config
    dataset = data.find_dataset(data.resolve_data_dir(config.data_dir))
    split = pd.read_csv(source.run_dir / "split.csv")
    val = data.load_split(split, "val", config.image_size, dataset.root)
    keras_model = load_model(source.model_path)
    float_probabilities = keras_probabilities(keras_model, val.images)
    name = name or DEFAULT_NAMES[config.task]
    files = model_files(name)
    int8_file, fp16_file, keras_file = files["int8"], files["fp16"], files["keras"]
    metadata_file = files["metadata"]
    threshold = ensure_threshold(source, target_sensitivity, (val.labels, float_probabilities))

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".export-") as scratch:
        scratch = Path(scratch)
        calibration = representative_images(
            split, dataset.root, config.image_size, calibration_images, config.seed
        )
        saved_model = scratch / "saved_model"
        keras_model.export(str(saved_model), format="tf_saved_model", verbose=False)
        logger.info("Converting to int8 with %d calibration images", len(calibration))
        (scratch / int8_file).write_bytes(convert(saved_model, calibration))
        logger.info("Converting to float16")
        (scratch / fp16_file).write_bytes(convert(saved_model, None))
        # Saved uncompiled: loading it needs plain Keras only, not pneumocnn's training metrics.
        keras_model.save(scratch / keras_file)
        (scratch / files["labels"]).write_text("\n".join(source.class_names) + "\n")

        model_names = (int8_file, fp16_file, keras_file)
        metadata: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "task": config.task,
            "name": name,
            "files": files,
            "image_size": config.image_size,
            "channels": 1,
            "class_names": list(source.class_names),
            "positive_class": "PNEUMONIA" if config.task == "subtype" else source.class_names[1],
            "threshold": threshold,
            "threshold_rule": json.loads((source.run_dir / "threshold.json").read_text())["rule"],
            "preprocessing": PREPROCESSING,
            "sha256": {file: sha256_of(scratch / file) for file in model_names},
            "file_bytes": {file: (scratch / file).stat().st_size for file in model_names},
        }
        # Write provisional metadata so LiteModel can verify and run the new files.
        write_json_atomically(scratch / metadata_file, metadata)
        int8_model = LiteModel(scratch / int8_file)
        int8_probabilities = int8_model.predict_proba(val.images)
        parity = check_parity(
            val.labels,
            float_probabilities,
            int8_probabilities,
            threshold,
            list(source.class_names),
            strict=require_parity,
        )
        if not parity["passed"]:
            logger.warning("Writing despite failed int8 parity (require_parity=False)")
        logger.info("int8 parity on validation: %s", parity)
        fp16_model = LiteModel(scratch / fp16_file)
        summary = json.loads((source.run_dir / "summary.json").read_text())
        metadata.update(
            tensors={
                int8_file: {
                    "input": tensor_description(int8_model.input),
                    "output": tensor_description(int8_model.output),
                },
                fp16_file: {
                    "input": tensor_description(fp16_model.input),
                    "output": tensor_description(fp16_model.output),
                },
                keras_file: {
                    "input": {
                        "dtype": "float32",
                        "shape": [-1, config.image_size, config.image_size, 1],
                    },
                    "output": {
                        "dtype": "float32",
                        "shape": [-1, int(keras_model.output_shape[-1])],
                    },
                },
            },
            output=(
                "Softmax over class_names (NORMAL first). P(pneumonia) = 1 - P(NORMAL); "
                "decision: pneumonia when P(pneumonia) >= threshold, then the likelier of the "
                "other classes; else NORMAL."
                if config.task == "subtype"
                else "P(positive_class): a probability in [0, 1]; positive when >= threshold."
            ),
            training_data={
                "source": "Kaggle 'Chest X-Ray Images (Pneumonia)' (Kermany et al., 2018, "
                "CC BY 4.0), train/ split",
                "data_dir": config.data_dir,
                "split": f"patient-grouped, class-stratified, val_fraction={config.val_fraction}, "
                f"seed={config.seed}",
                "train_images": summary["train_images"],
                "val_images": summary["val_images"],
                "unreadable_files": summary["unreadable_files"],
            },
            validation_metrics={
                "int8": _headline(
                    compute_metrics(val.labels, int8_probabilities, threshold, source.class_names)
                ),
                "float": _headline(
                    compute_metrics(val.labels, float_probabilities, threshold, source.class_names)
                ),
            },
            parity=parity,
            training={
                key: summary[key]
                for key in ("best_epoch", "epochs_run", "parameters", "seconds_per_epoch")
            },
            config=config.to_dict(),
        )
        write_json_atomically(scratch / metadata_file, metadata)
        # Models first, metadata last: the metadata never names a file that is not in place.
        for file in (*model_names, files["labels"], metadata_file):
            (scratch / file).replace(output_dir / file)
    return metadata


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    """The metrics an app shows. For a subtype model, `roc_auc`, `accuracy`, `sensitivity` and
    `specificity` are its pneumonia-vs-NORMAL ones (comparable with a binary model's), and the
    three-class ones are added."""
    subtype = report if report.get("task") == "subtype" else None
    if subtype is not None:
        report = subtype["binary"]
    at = report["at_threshold"]
    headline = {
        "images": report["images"],
        "roc_auc": report["roc_auc"],
        "average_precision": report["average_precision"],
        "accuracy": at["accuracy"],
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "threshold": at["threshold"],
        "accuracy_at_0.5": report["at_0.5"]["accuracy"],
        "ece": report["ece"],
    }
    if subtype is not None:
        decided = subtype["at_threshold"]
        headline.update(
            subtype_accuracy=decided["accuracy"],
            subtype_balanced_accuracy=decided["balanced_accuracy"],
            subtype_macro_f1=decided["macro"]["f1-score"],
            subtype_recall={name: row["recall"] for name, row in decided["per_class"].items()},
            macro_ovr_auc=subtype["macro_ovr_auc"],
            ovr_auc=subtype["ovr_auc"],
        )
    return headline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.export",
        description="Export a run folder's best model to int8 and float16 TFLite with metadata.",
    )
    parser.add_argument("run_dir", help="A finished training run folder.")
    parser.add_argument(
        "--output-dir",
        default="saved_models",
        help="Where to write the model files (default: saved_models).",
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
        "--name",
        help="Stem of the written files (default: pneumocnn for a binary run, "
        "pneumocnn_subtype for a subtype run).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.calibration_images < 1:
        print(
            f"error: --calibration-images must be at least 1. Received: {args.calibration_images}",
            file=sys.stderr,
        )
        return 2
    try:
        metadata = export(
            args.run_dir,
            args.output_dir,
            args.calibration_images,
            args.target_sensitivity,
            name=args.name,
        )
    except (ValueError, FileNotFoundError, ParityError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
        f"Wrote {args.output_dir}: {files['int8']} ({sizes[files['int8']]:,} bytes), "
        f"{files['fp16']} ({sizes[files['fp16']]:,} bytes), {files['keras']}, "
        f"{files['metadata']}, {files['labels']}\n"
        f"int8 on validation at threshold {metadata['threshold']:.4f}: pneumonia AUC "
        f"{int8['roc_auc']:.4f}, accuracy {int8['accuracy']:.4f}, sensitivity "
        f"{int8['sensitivity']:.4f}, specificity {int8['specificity']:.4f}{subtype}; agreement "
        f"with float {metadata['parity']['agreement']:.2%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
