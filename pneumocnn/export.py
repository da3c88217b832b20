"""Export: `python -m pneumocnn.export RUN_DIR` writes the model users embed.

From a run folder it writes, into `saved_models/` by default: `pneumocnn_int8.tflite` (full
integer: uint8 input of raw pixels, int8 builtin ops only, uint8 output), `pneumocnn_fp16.tflite`,
`pneumocnn.keras`, `labels.txt`, and the metadata `pneumocnn.json` (see `pneumocnn.metadata`).

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
from pneumocnn.evaluate import compute_metrics, ensure_threshold, resolve_source
from pneumocnn.lite import LiteModel
from pneumocnn.metadata import (
    FORMAT_VERSION,
    FP16_FILE,
    INT8_FILE,
    KERAS_FILE,
    LABELS_FILE,
    METADATA_FILE,
    PREPROCESSING,
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
    strict: bool = True,
) -> dict[str, float]:
    """Compares int8 and float predictions on validation images.

    Returns:
        `agreement` (share of identical decisions at `threshold`), `auc_float`, `auc_int8`,
        `auc_drop`, `max_abs_difference` of the probabilities, and `passed`.

    Raises:
        ParityError: if agreement is below 99% or the AUC drops by more than 0.005, and
            `strict` (the default) is True.
    """
    from sklearn.metrics import roc_auc_score

    agreement = float(
        np.mean((float_probabilities >= threshold) == (int8_probabilities >= threshold))
    )
    auc_float = float(roc_auc_score(labels, float_probabilities))
    auc_int8 = float(roc_auc_score(labels, int8_probabilities))
    parity = {
        "images": int(len(labels)),
        "agreement": agreement,
        "auc_float": auc_float,
        "auc_int8": auc_int8,
        "auc_drop": auc_float - auc_int8,
        "max_abs_difference": float(np.max(np.abs(float_probabilities - int8_probabilities))),
    }
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
) -> dict[str, Any]:
    """Exports a run folder's best model as int8 and float16 TFLite, `.keras` and metadata.

    Args:
        run_dir: a finished training run.
        output_dir: where to write. Defaults to "saved_models".
        calibration_images: training images for int8 calibration. Defaults to 300.
        target_sensitivity: choose the threshold for this sensitivity on validation instead of
            the stored one (or Youden's J when none is stored). Defaults to `None`.
        require_parity: refuse to write when the int8 model fails the parity check. Only a
            smoke run (the notebooks' quick mode, a few images for two epochs) turns it off;
            the parity is then still measured and recorded, with `parity["passed"]` false.
            Defaults to True.

    Returns:
        The metadata written to `pneumocnn.json`.

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
    float_probabilities = keras_model.predict(
        val.images.astype(np.float32), batch_size=64, verbose=0
    ).reshape(-1)
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
        (scratch / INT8_FILE).write_bytes(convert(saved_model, calibration))
        logger.info("Converting to float16")
        (scratch / FP16_FILE).write_bytes(convert(saved_model, None))
        # Saved uncompiled: loading it needs plain Keras only, not pneumocnn's training metrics.
        keras_model.save(scratch / KERAS_FILE)
        (scratch / LABELS_FILE).write_text("\n".join(source.class_names) + "\n")

        files = (INT8_FILE, FP16_FILE, KERAS_FILE)
        metadata: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "task": "binary",
            "image_size": config.image_size,
            "channels": 1,
            "class_names": list(source.class_names),
            "positive_class": source.class_names[1],
            "threshold": threshold,
            "threshold_rule": json.loads((source.run_dir / "threshold.json").read_text())["rule"],
            "preprocessing": PREPROCESSING,
            "sha256": {name: sha256_of(scratch / name) for name in files},
            "file_bytes": {name: (scratch / name).stat().st_size for name in files},
        }
        # Write provisional metadata so LiteModel can verify and run the new files.
        write_json_atomically(scratch / METADATA_FILE, metadata)
        int8_model = LiteModel(scratch / INT8_FILE)
        int8_probabilities = int8_model.predict_proba(val.images)
        try:
            parity = {
                **check_parity(val.labels, float_probabilities, int8_probabilities, threshold),
                "passed": True,
            }
        except ParityError as error:
            if require_parity:
                raise
            logger.warning("Writing despite failed parity (require_parity=False): %s", error)
            parity = {"passed": False, "message": str(error)}
        logger.info("int8 parity on validation: %s", parity)
        fp16_model = LiteModel(scratch / FP16_FILE)
        summary = json.loads((source.run_dir / "summary.json").read_text())
        metadata.update(
            tensors={
                INT8_FILE: {
                    "input": tensor_description(int8_model.input),
                    "output": tensor_description(int8_model.output),
                },
                FP16_FILE: {
                    "input": tensor_description(fp16_model.input),
                    "output": tensor_description(fp16_model.output),
                },
                KERAS_FILE: {
                    "input": {
                        "dtype": "float32",
                        "shape": [-1, config.image_size, config.image_size, 1],
                    },
                    "output": {"dtype": "float32", "shape": [-1, 1]},
                },
            },
            output="P(positive_class): a probability in [0, 1]; positive when >= threshold.",
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
        write_json_atomically(scratch / METADATA_FILE, metadata)
        # Models first, metadata last: the metadata never names a file that is not in place.
        for name in (*files, LABELS_FILE, METADATA_FILE):
            (scratch / name).replace(output_dir / name)
    return metadata


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    at = report["at_threshold"]
    return {
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
            args.run_dir, args.output_dir, args.calibration_images, args.target_sensitivity
        )
    except (ValueError, FileNotFoundError, ParityError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    int8 = metadata["validation_metrics"]["int8"]
    print(
        f"Wrote {args.output_dir}: {INT8_FILE} ({metadata['file_bytes'][INT8_FILE]:,} bytes), "
        f"{FP16_FILE} ({metadata['file_bytes'][FP16_FILE]:,} bytes), {KERAS_FILE}, "
        f"{METADATA_FILE}, {LABELS_FILE}\n"
        f"int8 on validation at threshold {metadata['threshold']:.4f}: AUC {int8['roc_auc']:.4f}, "
        f"accuracy {int8['accuracy']:.4f}, sensitivity {int8['sensitivity']:.4f}, "
        f"specificity {int8['specificity']:.4f}; agreement with float "
        f"{metadata['parity']['agreement']:.2%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
