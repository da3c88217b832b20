"""The run folder: its file names, and what a model from it (or from an export) needs.

A run folder describes itself (`config.json`, `split.csv`, `history.csv`, `best.keras`,
`summary.json`, and `threshold.json` once a threshold is chosen); an exported model's metadata
does the same for it. `resolve_source` reads either, `load_evaluation_images` loads a split for
it, and `ensure_threshold` chooses and stores the threshold on validation. Importing this module
does not import TensorFlow; the functions that need the data pipeline import it when called.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from pneumocnn.config import Config
from pneumocnn.metadata import find_metadata, load_metadata, write_json_atomically
from pneumocnn.task import BINARY_CLASS_NAMES

logger = logging.getLogger(__name__)

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
EVAL_DIR = "eval"
# Where export writes by default: inside the run, so the shipped saved_models/ changes only when
# asked for (`--output-dir saved_models`).
EXPORT_DIR = "export"
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
    metadata = load_metadata(find_metadata(path), path)
    return Source(
        path,
        Config.from_dict(metadata["config"]),
        metadata["class_names"],
        metadata["threshold"],
        None,
    )


def read_threshold(run_dir: str | Path) -> float | None:
    """The threshold stored in a run folder's `threshold.json`, or `None` if none was chosen."""
    path = Path(run_dir) / THRESHOLD_FILE
    return json.loads(path.read_text())["threshold"] if path.is_file() else None


def load_evaluation_images(
    source: Source, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]], Path, list[str]]:
    """Loads the images of `split` for `source`.

    Args:
        source: the model (see `resolve_source`).
        split: "val" (the run's own validation split), "test" (a Kaggle `test/` folder) or
            "all" (every development image of the folder).
        data_dir: the data folder. `None`: the one the model was trained on.

    Returns:
        `(images, labels, skipped, root, paths)`: `paths` names the file of each image.

    Raises:
        DataError: if the folder has no such split, or its classes differ from the model's.
    """
    import pandas as pd

    from pneumocnn import data
    from pneumocnn.images import load_images

    dataset = data.find_dataset(data.resolve_data_dir(data_dir or source.config.data_dir))
    task = source.config.task
    if list(data.task_class_names(task, dataset.class_names)) != list(source.class_names):
        raise data.DataError(
            f"The data folder's classes {list(dataset.class_names)} (task {task}) differ from "
            f"the model's {source.class_names}. Received: data_dir='{dataset.root}'. Pass "
            "--data-dir pointing at a folder with the model's classes."
        )
    if split == "val":
        split_csv = source.run_dir / SPLIT_FILE if source.run_dir else None
        table = (
            pd.read_csv(split_csv)
            if split_csv and split_csv.is_file()
            else data.prepare_split(source.config, dataset)
        )
        loaded = data.load_split(table, "val", source.config.image_size, dataset.root)
        return loaded.images, loaded.labels, loaded.skipped, dataset.root, loaded.paths
    if split == "test":
        if dataset.test is None:
            raise data.DataError(
                f"Data folder '{dataset.root}' has no test/ folder. Received: split='test'. "
                "Point --data-dir at a Kaggle-style folder holding test/, or use --split all "
                "with --data-dir at a folder of class subfolders."
            )
        folders = (dataset.test,)
    else:
        folders = dataset.development
    table = data.label_for_task(
        data.list_images(folders, dataset.class_names), dataset.class_names, task
    )
    images, kept, skipped = load_images(table["path"].tolist(), source.config.image_size)
    labels = table["label"].to_numpy()[kept].astype(np.int32)
    paths = table["path"].tolist()
    return images, labels, skipped, dataset.root, [paths[i] for i in kept]


def ensure_threshold(
    source: Source,
    target_sensitivity: float | None,
    val_predictions: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Returns the stored threshold, choosing (and storing) it on validation when needed.

    A run folder without `threshold.json`, or any `target_sensitivity`, triggers a choice on
    the run's own validation split (see `pneumocnn.metrics.choose_pneumonia_threshold`),
    stored in `threshold.json`. An exported model keeps the threshold in its metadata.

    Args:
        source: the model.
        target_sensitivity: see `pneumocnn.metrics.choose_threshold`.
        val_predictions: `(labels, per-class probabilities)` on the validation split, if
            already computed. Defaults to `None`: computed here when a choice is needed.

    Raises:
        ValueError: if a new threshold is asked of an exported model.
    """
    from pneumocnn.metrics import choose_pneumonia_threshold

    if source.threshold is not None and target_sensitivity is None:
        return source.threshold
    if source.run_dir is None:
        raise ValueError(
            "An exported model's threshold is fixed in its metadata; choose a new one on a run "
            f"folder and re-export. Received: model='{source.model_path}', "
            f"target_sensitivity={target_sensitivity}."
        )
    if val_predictions is None:
        from pneumocnn.runners import predict_probabilities

        images, labels, *_ = load_evaluation_images(source, "val", None)
        val_predictions = labels, predict_probabilities(source.model_path, images)
    labels, probabilities = val_predictions
    # For a subtype model, the threshold is on P(pneumonia) = 1 - P(NORMAL).
    threshold = choose_pneumonia_threshold(labels, probabilities, target_sensitivity)
    rule = "youden" if target_sensitivity is None else f"target_sensitivity={target_sensitivity}"
    write_json_atomically(
        source.run_dir / THRESHOLD_FILE,
        {
            "threshold": threshold,
            "rule": rule,
            "chosen_on": "val",
            "images": int(len(labels)),
            "model": source.model_path.name,
        },
    )
    logger.info("Threshold %.4f chosen on validation (%s)", threshold, rule)
    source.threshold = threshold
    return threshold
