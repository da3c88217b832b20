"""The training callbacks: `make_callbacks` (Keras's own, configured, and pneumocnn's),
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

from pneumocnn.core.config import Config
from pneumocnn.core.files import atomic_path, write_text_atomic
from pneumocnn.core.run_folder import (
    BACKUP_DIR,
    BACKUP_STATE_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    MODEL_FILE,
)
from pneumocnn.training.distribute import MultiWorkerBackupAndRestore, is_multi_worker

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


# Checkpointing and early stopping select on ranking quality, which the threshold (chosen
# later, on validation) does not change; the learning rate follows the smoother loss.
SELECTION_METRIC = "val_auc"


def make_callbacks(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    best_so_far: float | None = None,
    extra: list[keras.callbacks.Callback] | None = None,
    backup: dict[str, Any] | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> list[keras.callbacks.Callback]:
    """The training callbacks: timing, NaN guard, checkpoint, early stopping, LR schedule,
    history, and a backup of the last finished epoch for `--resume`.

    Args:
        config: the run's settings.
        run_dir: the run folder.
        resume: append to `history.csv` instead of starting it. Defaults to False.
        best_so_far: when resuming, the best `val_auc` already checkpointed, so a worse epoch
            does not overwrite `best.keras`. Defaults to `None`.
        extra: more callbacks, run after selection and before the history log (so what they
            add to the logs lands in `history.csv`). Defaults to `None`.
        backup: when resuming, the backup state (see `read_backup`) whose callback counters
            are restored. Defaults to `None`.
        strategy: the `tf.distribute` strategy; with several workers, the backup is a
            `pneumocnn.training.distribute.MultiWorkerBackupAndRestore`. Defaults to `None`.
    """

    # With weight averaging, validation, the checkpoint and early stopping see the averaged
    # weights: SwapEMAWeights swaps them in at each epoch's end, so it must come before them.
    averaging = (
        [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
        if config.weight_averaging == "ema"
        else []
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=SELECTION_METRIC,
        mode="max",
        patience=config.early_stopping_patience,
        min_delta=config.early_stopping_min_delta,
        restore_best_weights=True,
        # Its own message names the epoch of its last min_delta gain, which may differ from
        # the checkpoint's strict maximum in best.keras; `train` logs what was kept instead.
        verbose=0,
    )
    # A cosine schedule (with or without restarts) owns the learning rate; plateau cuts would
    # fight it.
    plateau = (
        [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                mode="min",
                factor=config.reduce_lr_factor,
                patience=config.reduce_lr_patience,
                min_lr=1e-6,
                verbose=1,
            )
        ]
        if config.lr_schedule == "plateau"
        else []
    )
    return [
        EpochTimer(),
        keras.callbacks.TerminateOnNaN(),
        *averaging,
        BestModelCheckpoint(run_dir / MODEL_FILE, SELECTION_METRIC, best_so_far),
        early_stopping,
        *plateau,
        *(extra or []),
        HistoryLogger(run_dir / HISTORY_FILE, append=resume),
        # Last, so an epoch is backed up only after everything above has recorded it. With
        # several workers, Keras's backup (the workers agree on the epoch to resume from).
        MultiWorkerBackupAndRestore(str(run_dir / BACKUP_DIR), strategy)
        if is_multi_worker(strategy)
        else EpochBackup(
            run_dir / BACKUP_DIR, [*averaging, early_stopping, *plateau], restore=backup
        ),
    ]
