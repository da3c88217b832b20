"""The metadata `<name>.json` of an exported family: what every consumer needs to verify and
run its files (tensors, checksums, threshold, preprocessing, the guard's calibration, figures)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocnn import __version__
from pneumocnn.core.metadata import FORMAT_VERSION, PREPROCESSING, sha256_of
from pneumocnn.core.run_folder import ADAPTATION_FILE, read_threshold_record
from pneumocnn.core.task import Task
from pneumocnn.edge.convert import BATCH_SIZE
from pneumocnn.edge.embedded import WARNING
from pneumocnn.edge.family import MODEL_ROLES
from pneumocnn.evaluation.metrics import compute_metrics, headline
from pneumocnn.evaluation.stability import pixel_noise_sensitivity
from pneumocnn.runtime.lite import LiteModel

if TYPE_CHECKING:
    from pneumocnn.core.config import Config
    from pneumocnn.edge.prepare import Prepared


def tensor_description(details: dict[str, Any]) -> dict[str, Any]:
    """The dtype, shape and quantization of one TFLite tensor, JSON-ready."""

    scale, zero_point = details["quantization"]
    return {
        "dtype": np.dtype(details["dtype"]).name,
        "shape": [int(v) for v in details["shape_signature"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


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
        "positive_class": Task.of(config.task, source.class_names).positive_class,
        "threshold": prepared.threshold,
        **_threshold_record(source.run_dir, prepared.threshold_record),
        "preprocessing": PREPROCESSING,
        "sha256": {file: sha256_of(scratch / file) for file in model_names},
        "file_bytes": {file: (scratch / file).stat().st_size for file in model_names},
        "config": _portable_config(config),
    }


def _threshold_record(run_dir: Path, chosen: dict[str, Any] | None) -> dict[str, Any]:
    """The threshold's rule, its site calibration record when it came from
    `python -m pneumocnn.evaluate RUN --calibrate-on DIR` (see
    `pneumocnn.adaptation.calibration.calibrate`) or an adaptation, and the adaptation's own
    record (see `pneumocnn.adaptation.adapt`): from the threshold this export `chose`, else
    the run's `threshold.json`."""
    stored = chosen or read_threshold_record(run_dir)
    record = {"threshold_rule": stored["rule"]}
    if "calibration" in stored:
        record["calibration"] = stored["calibration"]
    if (run_dir / ADAPTATION_FILE).is_file():
        record["adaptation"] = json.loads((run_dir / ADAPTATION_FILE).read_text())
    return record


def _tensors(
    prepared: Prepared, models: dict[str, LiteModel], files: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Each exported file's input and output tensors (dtype, shape, quantization)."""
    size = prepared.config.image_size
    tensors = {
        files[role]: {
            "input": tensor_description(model.input),
            "output": tensor_description(model.output),
        }
        for role, model in models.items()
    }
    tensors[files["keras"]] = {
        "input": {"dtype": "float32", "shape": [-1, size, size, 1]},
        "output": {"dtype": "float32", "shape": [-1, int(prepared.keras_model.output_shape[-1])]},
    }
    return tensors


def describe(
    prepared: Prepared,
    models: dict[str, LiteModel],
    files: dict[str, str],
    metadata: dict[str, Any],
    parity: dict[str, Any],
    int8_probabilities: np.ndarray,
    rgb_parity: dict[str, Any],
    guard_head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Step 6: completes the metadata: tensors, output contract, training data, validation
    metrics of the int8 and float models, the parity figures, the int8 model's stability under
    one grey level of pixel noise, the edge variants (with the RGB variant's guard head, see
    `pneumocnn.edge.parity.guard_head_agreement`), the warning, training facts and the
    config."""
    config, source, val = prepared.config, prepared.source, prepared.val
    summary = prepared.summary

    def figures(probabilities):
        return headline(
            compute_metrics(val.labels, probabilities, prepared.threshold, source.class_names)
        )

    return {
        **metadata,
        "tensors": _tensors(prepared, models, files),
        "output": Task.of(config.task, source.class_names).output_contract,
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
            **pixel_noise_sensitivity(models["int8"].predict_proba, val.images),
            "films_used": "validation",
            "what": "change of the int8 model's P(pneumonia) when every pixel moves by -1, 0 "
            "or +1 grey level (another JPEG decoder or resizer does about that)",
        },
        "guard": prepared.guard.to_dict(),
        "warning": WARNING,
        "edge": {
            "batch_size": BATCH_SIZE,
            "embedded_metadata": "Every .tflite carries TFLite metadata (name, description, "
            "version, author, licence, input, labels), written with MediaPipe's writer.",
            "rgb_variant": {
                "file": files["rgb_int8"],
                "input_size": int(models["rgb_int8"].input["shape"][1]),
                "output": "One score per class, in class_names order; the highest names the "
                "decision at the threshold. For stock image classifiers (MediaPipe Tasks, "
                "Android).",
                "parity_with_int8": rgb_parity,
                **({"guard_head": guard_head} if guard_head else {}),
            },
        },
        "training": {
            key: summary[key]
            for key in ("best_epoch", "epochs_run", "parameters", "seconds_per_epoch")
        },
        "config": _portable_config(config),
    }
