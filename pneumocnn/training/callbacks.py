"""Training callbacks of pneumocnn's own (the Keras ones are configured in `pneumocnn.train`),
and the backup they keep for `--resume`.

Every file they write goes through `pneumocnn.core.files.atomic_path`: a kill at any moment leaves
the previous complete file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pneumocnn.core.files import atomic_path, write_text_atomic
from pneumocnn.core.run_folder import BACKUP_DIR, BACKUP_STATE_FILE, CONFIG_FILE

logger = logging.getLogger(__name__)


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` (training part of the epoch, without validation) to the logs.

    Placed before `HistoryLogger`, so the timing lands in `history.csv`.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        # Validation runs at the end of each epoch: the training part ends here.
        if getattr(self, "_start", None) is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            seconds = self._train_seconds or (time.perf_counter() - self._start)
            logs["epoch_seconds"] = seconds


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` each time `monitor` reaches a new maximum.

    Like `keras.callbacks.ModelCheckpoint(save_best_only=True, mode="max")`, but the model is
    written under a temporary name and renamed over `path`, so a kill while it is written leaves
    the previous best model, never a 0-byte or half-written file.

    Args:
        path: the `.keras` file.
        monitor: the metric to maximise (e.g. "val_auc").
        initial_value_threshold: the best value already saved (when resuming), which a new
            model must beat. Defaults to `None`.
    """

    def __init__(
        self,
        path: str | Path,
        monitor: str,
        initial_value_threshold: float | None = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.best = -np.inf if initial_value_threshold is None else initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or not np.isfinite(current) or current <= self.best:
            return
        self.best = float(current)
        with atomic_path(self.path) as temporary:
            self.model.save(temporary)


class HistoryLogger(keras.callbacks.Callback):
    """Writes `history.csv` after every epoch (epoch, then the logs by name), rewriting the
    whole file under a temporary name and renaming it, so it is never half-written.

    Args:
        path: the CSV file.
        append: keep the rows already in `path` (a resumed run). Defaults to False.
    """

    def __init__(self, path: str | Path, append: bool = False):
        super().__init__()
        self.path = Path(path)
        self.append = append

    def on_train_begin(self, logs=None):
        exists = self.append and self.path.exists() and self.path.stat().st_size
        self.rows = pd.read_csv(self.path).to_dict("records") if exists else []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.rows.append({"epoch": epoch, **{key: float(logs[key]) for key in sorted(logs)}})
        with atomic_path(self.path) as temporary:
            pd.DataFrame(self.rows).to_csv(temporary, index=False)


class EpochBackup(keras.callbacks.Callback):
    """Backs up the whole training state after each epoch, for `--resume`.

    The state is every variable of the model (weights, BatchNormalization statistics, and the
    random-seed state of its dropout) and of the optimizer, plus the counters of the early-stopping
    and learning-rate callbacks. It goes to `backup/epoch-<N>.npz`, then `backup/state.json`
    names it; both are written under temporary names and renamed, so a kill at any moment leaves
    a complete backup of the last epoch that finished. `state.json` is restored into the
    callbacks when training begins (after their own reset), and the folder is removed when
    training ends.

    Args:
        folder: the backup folder.
        watched: the callbacks whose counters travel with the backup (`EarlyStopping`,
            `ReduceLROnPlateau`).
        restore: a `state.json` to restore into `watched` at the start. Defaults to `None`.
    """

    # EarlyStopping's and ReduceLROnPlateau's counters, and whether SwapEMAWeights has the
    # averaged weights in the model (a private flag: without it a resumed run would train on
    # the averaged weights as if they were the raw ones).
    COUNTERS = ("wait", "best", "best_epoch", "cooldown_counter", "_ema_weights_in_model")

    def __init__(
        self,
        folder: str | Path,
        watched: list[keras.callbacks.Callback],
        restore: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.folder = Path(folder)
        self.watched = watched
        self.restore = restore

    def on_train_begin(self, logs=None):
        if self.restore is None:
            return
        for callback, counters in zip(self.watched, self.restore["callbacks"], strict=True):
            for name, value in counters.items():
                setattr(callback, name, value)

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        state_file = f"epoch-{epoch + 1}.npz"
        with atomic_path(self.folder / state_file) as temporary:
            np.savez(temporary, *variable_values(self.model))
        counters = [
            {
                name: _json_value(getattr(callback, name))
                for name in self.COUNTERS
                if hasattr(callback, name)
            }
            for callback in self.watched
        ]
        state = {"epoch": epoch + 1, "state_file": state_file, "callbacks": counters}
        write_text_atomic(self.folder / BACKUP_STATE_FILE, json.dumps(state, indent=2) + "\n")
        for old in self.folder.glob("epoch-*.npz"):
            if old.name != state_file:
                old.unlink()

    def on_train_end(self, logs=None):
        for path in self.folder.glob("*"):
            path.unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            self.folder.rmdir()


def _json_value(value: Any) -> Any:
    """A callback counter as JSON keeps it: None, bool, int, or float (exact, as JSON writes
    the shortest repr that reads back to the same float)."""
    if value is None or isinstance(value, bool | np.bool_):
        return None if value is None else bool(value)
    return int(value) if isinstance(value, int | np.integer) else float(value)


def variable_values(model: keras.Model) -> list[np.ndarray]:
    """Every variable of `model` and of its optimizer, in a fixed order (see `EpochBackup`)."""
    return [np.asarray(variable) for variable in _state_variables(model)]


def _state_variables(model: keras.Model) -> list:
    # model.variables includes the SeedGenerator states (dropout's random stream), which
    # model.weights and Keras's own weight files leave out.
    return list(model.variables) + list(model.optimizer.variables)


def read_backup(run_dir: Path) -> dict[str, Any] | None:
    """The backup state of an interrupted run (see `EpochBackup`), or `None` if it has none."""
    path = run_dir / BACKUP_DIR / BACKUP_STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def restore_backup(model: keras.Model, run_dir: Path, state: dict[str, Any]) -> None:
    """Loads the variables an `EpochBackup` saved into `model` and its optimizer.

    Raises:
        ValueError: if the backup does not fit the model (another config).
    """
    model.optimizer.build(model.trainable_variables)
    variables = _state_variables(model)
    with np.load(run_dir / BACKUP_DIR / state["state_file"]) as saved:
        values = [saved[f"arr_{index}"] for index in range(len(saved.files))]
    shapes = [tuple(variable.shape) for variable in variables]
    if [value.shape for value in values] != shapes:
        raise ValueError(
            f"The backup in '{run_dir / BACKUP_DIR}' does not fit the model built from "
            f"'{run_dir / CONFIG_FILE}' ({len(values)} arrays saved, {len(shapes)} expected). "
            "Start a new run."
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def fast_forward(dataset: tf.data.Dataset, epochs: int, steps: int) -> tf.data.Dataset:
    """Advances the training pipeline's random state past `epochs` finished epochs.

    Shuffling, augmentation and mixup draw from random state kept in the pipeline, so a resumed
    run must draw exactly what the interrupted one drew. A finite dataset is read through once
    per epoch (as `fit` reads it); an endless one (oversampling) continues `epochs x steps`
    batches on.
    """
    if epochs <= 0:
        return dataset
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        return dataset.skip(epochs * steps)
    logger.info("Replaying the input pipeline of %d finished epochs", epochs)
    for _ in range(epochs):
        for _ in dataset:
            pass
    return dataset
