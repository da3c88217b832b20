"""The run folder: its file names, and what a model from it (or from an export) needs.

A run folder describes itself (`config.json`, `split.csv`, `history.csv`, `best.keras`,
`summary.json`, and `threshold.json` once a threshold is chosen); an exported model's metadata
does the same for it. `resolve_source` reads either. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pneumocnn.core.config import Config
from pneumocnn.core.metadata import (
    find_metadata,
    load_metadata,
    settle_family,
    write_json_atomically,
)
from pneumocnn.core.task import BINARY_CLASS_NAMES

# The artefacts of a run folder, by role.
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.csv"
HISTORY_FILE = "history.csv"
MODEL_FILE = "best.keras"
SUMMARY_FILE = "summary.json"
BACKUP_DIR = "backup"
# In BACKUP_DIR: the epoch the backup holds and the callback counters (callbacks.EpochBackup).
BACKUP_STATE_FILE = "state.json"
THRESHOLD_FILE = "threshold.json"
# An adapted run folder's recipe and what it learnt from (see pneumocnn.adaptation.adapt).
ADAPTATION_FILE = "adaptation.json"
EVAL_DIR = "eval"
# Where export writes by default: inside the run, so the shipped saved_models/ changes only when
# asked for (`--output-dir saved_models`).
EXPORT_DIR = "export"
# Training films that calibrate an export's int8 ranges, unless it is told otherwise: more did
# not help (the subtype model's parity was 99.04% with 600 and 98.95% with 1,500, 99.14% with
# 300), and these decode in seconds.
CALIBRATION_IMAGES = 300
# The same for `pneumocnn.adapt`, by task. With 300 films the subtype model adapted to the
# development half made the float model's three-class decision on 98.75% of validation films
# (99% needed, so the command wrote nothing); with 600, 99.23% in four runs in a fresh process,
# but 98.56% with --deterministic (another training trajectory): a thin margin, not a fix. The
# binary model's adapted export passes with either, and 600 films raise the command's peak
# memory from 3.2 to 5.1 GB (docs/adaptation.md), so it keeps the export's 300.
ADAPT_CALIBRATION_IMAGES = {"binary": CALIBRATION_IMAGES, "subtype": 600}
# What evaluate writes into its output folder.
METRICS_FILE = "metrics.json"
SPLITS = ("val", "test", "all")


def tf_config_task() -> tuple[str | None, int, bool]:
    """This process's task in a multi-worker cluster, read from `$TF_CONFIG`.

    Returns:
        `(task_type, task_index, is_chief)`: `(None, 0, True)` without `$TF_CONFIG`. The chief
        is the "chief" task, or worker 0 when the cluster has none (TensorFlow's rule).
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    task_type, index = task.get("type"), int(task.get("index", 0))
    if task_type is None:
        return None, 0, True
    has_chief = "chief" in tf_config.get("cluster", {})
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief)
    return task_type, index, is_chief


def worker_dir(run_dir: Path, strategy: str) -> Path:
    """The folder this process writes its run files to.

    In a multi-worker run every worker saves what the callbacks save (Keras's multi-worker
    pattern), but only the chief writes the run folder; another worker writes to
    `.<run name>.<task>-<index>` beside it, which survives a crash (so a restarted worker
    resumes from its own backup) and is removed when the run finishes.

    Args:
        run_dir: the run folder.
        strategy: `Config.strategy`.
    """
    if strategy != "multiworker":
        return run_dir
    task_type, index, is_chief = tf_config_task()
    return run_dir if is_chief else run_dir.parent / f".{run_dir.name}.{task_type}-{index}"


def export_dir(run_dir: str | Path, output_dir: str | Path | None = None) -> Path:
    """Where an export of `run_dir` writes: `output_dir`, else the run's own `export/`."""
    return Path(output_dir) if output_dir else Path(run_dir) / EXPORT_DIR


def is_run_dir(path: str | Path) -> bool:
    """True for a training run folder (it holds `config.json`)."""
    return (Path(path) / CONFIG_FILE).is_file()


@dataclasses.dataclass
class Source:
    """A model with what it needs to be run and reported.

    Args:
        model_path: `.keras` or `.tflite` file.
        config: the run's config (task, image size, data folder, split settings).
        class_names: class names, index = label.
        threshold: the stored threshold, or `None` if none was chosen yet.
        run_dir: the run folder, when the model comes from one (holds split.csv, history.csv
            and threshold.json); else `None`.
    """

    model_path: Path
    config: Config
    class_names: list[str]
    threshold: float | None
    run_dir: Path | None


def resolve_source(path: str | Path) -> Source:
    """Finds the model, config and threshold for a run folder, a `.keras` or a `.tflite`.

    Raises:
        FileNotFoundError: if the path does not exist, or a run folder has no `best.keras`.
        MetadataError: if an exported model's metadata is missing or does not match.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Model not found. Received: model='{path}'. Pass a run folder (runs/<timestamp>), "
            "a .keras file, or an exported .tflite with its pneumocnn.json beside it."
        )
    run_dir = path if path.is_dir() else path.parent
    if is_run_dir(run_dir):
        model_path = run_dir / MODEL_FILE if path.is_dir() else path
        if not model_path.is_file():
            raise FileNotFoundError(
                f"Run folder '{run_dir}' has no {MODEL_FILE}: the run did not finish. "
                f"Received: model='{path}'. Train again or pick a finished run."
            )
        summary_path = run_dir / SUMMARY_FILE
        class_names = (
            json.loads(summary_path.read_text())["class_names"]
            if summary_path.is_file()
            else list(BINARY_CLASS_NAMES)
        )
        return Source(
            model_path,
            Config.load(run_dir / CONFIG_FILE),
            class_names,
            read_threshold(run_dir),
            run_dir,
        )
    metadata_path = find_metadata(path)
    settle_family(metadata_path)  # completes a write of the family that was killed
    metadata = load_metadata(metadata_path, path)
    return Source(
        path,
        Config.from_dict(metadata["config"]),
        metadata["class_names"],
        metadata["threshold"],
        None,
    )


def read_threshold_record(run_dir: str | Path) -> dict[str, Any] | None:
    """A run folder's `threshold.json` (see `write_threshold`), or `None` if none was chosen."""
    path = Path(run_dir) / THRESHOLD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_threshold(run_dir: str | Path) -> float | None:
    """The threshold stored in a run folder's `threshold.json`, or `None` if none was chosen."""
    record = read_threshold_record(run_dir)
    return None if record is None else record["threshold"]


def threshold_record(
    threshold: float,
    rule: str,
    chosen_on: str,
    images: int,
    calibration: dict[str, Any] | None = None,
    model: str = MODEL_FILE,
) -> dict[str, Any]:
    """What a run folder's `threshold.json` holds (see `write_threshold` for the fields)."""
    return {
        "threshold": float(threshold),
        "rule": rule,
        "chosen_on": chosen_on,
        "images": int(images),
        "model": model,
        **({"calibration": calibration} if calibration is not None else {}),
    }


def write_threshold(
    run_dir: str | Path,
    threshold: float,
    rule: str,
    chosen_on: str,
    images: int,
    calibration: dict[str, Any] | None = None,
    model: str = MODEL_FILE,
) -> dict[str, Any]:
    """Writes a run folder's `threshold.json`, the one place a run's threshold is stored (the
    export copies it into the metadata and every edge file).

    Args:
        run_dir: the run folder.
        threshold: the threshold on P(pneumonia).
        rule: how it was chosen, e.g. "youden" or "target_sensitivity=0.96".
        chosen_on: the films it was chosen on ("val", or a site folder's name).
        images: how many.
        calibration: the site calibration record, when it was chosen on a site's films.
            Defaults to `None`.
        model: the model file whose outputs chose it. Defaults to `best.keras`.

    Returns:
        What was written.
    """
    record = threshold_record(threshold, rule, chosen_on, images, calibration, model)
    write_json_atomically(Path(run_dir) / THRESHOLD_FILE, record)
    return record
