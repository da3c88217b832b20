"""Training: `python -m pneumocnn.train [flags]` writes a self-describing run folder.

The run folder holds `config.json`, `split.csv`, `history.csv`, `best.keras` and
`summary.json`; evaluate and export rebuild everything they need from it.

Example:

    python -m pneumocnn.train --data-dir ../shared/chest_xray --epochs 30
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pneumocnn import data
from pneumocnn.config import Config, add_config_arguments, config_from_args
from pneumocnn.model import build_model, compile_model

logger = logging.getLogger(__name__)

# The artefacts of a run folder, by role.
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.csv"
HISTORY_FILE = "history.csv"
MODEL_FILE = "best.keras"
SUMMARY_FILE = "summary.json"
BACKUP_DIR = "backup"
# Checkpointing and early stopping select on ranking quality, which the threshold (chosen
# later, on validation) does not change; the learning rate follows the smoother loss.
SELECTION_METRIC = "val_auc"


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` (training part of the epoch, without validation) to the logs.

    Placed before `CSVLogger`, so the timing lands in `history.csv`.
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


def default_run_dir() -> Path:
    """Returns `runs/<YYYYmmdd-HHMMSS>` under the current folder."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


class MultiWorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose workers resume from the same epoch.

    Each worker of a multi-worker run backs up its own copy at the end of every epoch (the
    chief in the run folder, the others in theirs, see `worker_dir`). A worker lost between the
    chief's backup and its own leaves the copies one epoch apart, and workers that resumed from
    different epochs would wait on each other for ever. So at the start the workers gather
    their epochs and all resume from the earliest; a worker one epoch ahead finds that epoch in
    its previous copy (`double_checkpoint`).

    Args:
        backup_dir: this worker's backup folder.
        strategy: the run's `tf.distribute` strategy.
    """

    def __init__(self, backup_dir: str, strategy: tf.distribute.Strategy):
        super().__init__(backup_dir, double_checkpoint=True, delete_checkpoint=True)
        self._strategy = strategy

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        epoch = int(self.model._initial_epoch or 0)
        agreed = int(tf.reduce_min(self._strategy.gather(tf.constant([epoch]), axis=0)))
        if agreed == epoch:
            return
        previous = json.loads(Path(f"{self._training_metadata_path}.bkp").read_text())
        if previous["epoch"] != agreed:
            raise RuntimeError(
                f"The workers' backups are more than one epoch apart: this worker's is at epoch "
                f"{epoch}, its previous one at {previous['epoch']}, another worker's at {agreed}. "
                f"Received: backup_dir='{self.backup_dir}'. Start the run again."
            )
        logger.info("Resuming from epoch %d, the earliest backup of all workers", agreed)
        # As Keras itself recovers from a corrupt backup: the previous copy becomes the latest.
        shutil.copy(self._prev_weights_path, self._weights_path)
        shutil.copy(f"{self._training_metadata_path}.bkp", self._training_metadata_path)
        self._load_model()


def make_callbacks(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    best_so_far: float | None = None,
    extra: list[keras.callbacks.Callback] | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> list[keras.callbacks.Callback]:
    """The training callbacks: timing, NaN guard, checkpoint, early stopping, LR schedule,
    CSV log, and a backup of the last finished epoch for `--resume`.

    Args:
        config: the run's settings.
        run_dir: the run folder.
        resume: append to `history.csv` instead of starting it. Defaults to False.
        best_so_far: when resuming, the best `val_auc` already checkpointed, so a worse epoch
            does not overwrite `best.keras`. Defaults to `None`.
        extra: more callbacks, run after selection and before the CSV log (so what they add
            to the logs lands in `history.csv`). Defaults to `None`.
        strategy: the `tf.distribute` strategy; with several workers, the backup is a
            `MultiWorkerBackupAndRestore`. Defaults to `None` (one process).
    """
    backup_dir = str(run_dir / BACKUP_DIR)
    multi_worker = isinstance(strategy, KerasMultiWorkerStrategy)
    # With weight averaging, validation, the checkpoint and early stopping see the averaged
    # weights: SwapEMAWeights swaps them in at each epoch's end, so it must come before them.
    averaging = (
        [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
        if config.weight_averaging == "ema"
        else []
    )
    # A cosine schedule owns the learning rate; plateau cuts would fight it.
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
        keras.callbacks.ModelCheckpoint(
            run_dir / MODEL_FILE,
            monitor=SELECTION_METRIC,
            mode="max",
            save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.EarlyStopping(
            monitor=SELECTION_METRIC,
            mode="max",
            patience=config.early_stopping_patience,
            min_delta=config.early_stopping_min_delta,
            restore_best_weights=True,
            # Its own message names the epoch of its last min_delta gain, which may differ from
            # the checkpoint's strict maximum in best.keras; `train` logs what was kept instead.
            verbose=0,
        ),
        *plateau,
        *(extra or []),
        keras.callbacks.CSVLogger(run_dir / HISTORY_FILE, append=resume),
        # Last, so an epoch is backed up only after everything above has recorded it. A kill
        # while the backup is written leaves it corrupt: double_checkpoint keeps the one before.
        MultiWorkerBackupAndRestore(backup_dir, strategy)
        if multi_worker
        else keras.callbacks.BackupAndRestore(
            backup_dir, double_checkpoint=True, delete_checkpoint=True
        ),
    ]


class TrainingDivergedError(RuntimeError):
    """Raised when the loss became NaN or infinite and training was stopped."""


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` whose `reduce` takes what Keras 3 passes it.

    Keras 3's `fit` calls `reduce` with a nested structure of per-replica values (to build the
    model from a first batch) and with `axis=0` on scalars (losses and metrics); with more than
    one worker TensorFlow's collective reduce accepts neither (keras-team/keras#20585,
    tensorflow/tensorflow#72388). This reduces each value on its own, over the replicas only
    when it is a scalar.
    """

    def reduce(self, reduce_op, value, axis):
        def reduce_one(one):
            local = one.values[0] if isinstance(one, tf.distribute.DistributedValues) else one
            rank = tf.convert_to_tensor(local).shape.rank
            return super(KerasMultiWorkerStrategy, self).reduce(
                reduce_op, one, axis if rank else None
            )

        return tf.nest.map_structure(reduce_one, value)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `--strategy`.

    "multiworker" must be made before TensorFlow runs any op in this process (it configures the
    collective ops at startup), so `train` makes the strategy first.

    Args:
        name: "default" (one device), "mirrored" (every GPU of this machine, else every logical
            CPU device), or "multiworker" (several machines, described by `$TF_CONFIG`).

    Raises:
        RuntimeError: for "multiworker", if TensorFlow has already started in this process.
    """
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multiworker":
        try:
            return KerasMultiWorkerStrategy()
        except RuntimeError as error:
            raise RuntimeError(
                f"{error}. Received: strategy='multiworker' in a process where TensorFlow had "
                "already started. Start each worker as its own `python -m pneumocnn.train "
                "--strategy multiworker ...` process, or call `train` before any other "
                "TensorFlow work."
            ) from error
    return tf.distribute.get_strategy()


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


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every weight of `model` (trainable or not), in order: the same digest means
    the same weights, so the workers of a multi-worker run can be compared."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def _prepare_run_dir(config: Config, resume: bool) -> tuple[Path, Path]:
    """The run folder and the folder this process writes to (see `worker_dir`), checked."""
    run_dir = Path(config.output_dir) if config.output_dir else default_run_dir()
    own_dir = worker_dir(run_dir, config.strategy)
    if resume:
        if (own_dir / SUMMARY_FILE).exists():
            raise FileExistsError(
                f"Run folder '{own_dir}' has already finished (it has {SUMMARY_FILE}); there is "
                f"nothing to resume. Received: resume='{run_dir}'."
            )
        return run_dir, own_dir
    if (own_dir / MODEL_FILE).exists():
        raise FileExistsError(
            f"Run folder '{own_dir}' already holds a trained model. Received: "
            f"output_dir='{run_dir}'. Pass a new --output-dir so nothing is overwritten, or "
            f"--resume {run_dir} to continue an interrupted run."
        )
    own_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, own_dir


def read_history(run_dir: Path) -> pd.DataFrame:
    """Reads `history.csv`, keeping the last row of an epoch that a resumed run repeated.

    An absent or empty file (training stopped before any epoch ended) gives an empty table.
    """
    path = run_dir / HISTORY_FILE
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["epoch", "loss", SELECTION_METRIC, "epoch_seconds"])
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch", ignore_index=True)


def summarise(
    history: pd.DataFrame,
    *,
    model: keras.Model,
    class_names: tuple[str, ...],
    train: data.LoadedSplit,
    val: data.LoadedSplit,
    steps_per_epoch: int,
    batch_size: int,
    wall_seconds: float,
) -> dict[str, Any]:
    """Builds `summary.json`: the best epoch's validation metrics and the cost of the run."""
    best = int(np.argmax(history[SELECTION_METRIC].to_numpy()))
    epoch_seconds = history["epoch_seconds"].dropna().to_numpy()
    images_seen = steps_per_epoch * batch_size * len(epoch_seconds)
    skipped = train.skipped + val.skipped
    return {
        "best_epoch": best + 1,
        "epochs_run": len(history),
        **{
            key: float(history[key][best])
            for key in ("val_loss", "val_accuracy", "val_auc", "val_sensitivity", "val_specificity")
        },
        "threshold": 0.5,
        "parameters": int(model.count_params()),
        "class_names": list(class_names),
        "train_images": int(len(train.labels)),
        "val_images": int(len(val.labels)),
        "train_images_per_class": np.bincount(train.labels, minlength=len(class_names)).tolist(),
        "val_images_per_class": np.bincount(val.labels, minlength=len(class_names)).tolist(),
        "unreadable_files": len(skipped),
        "unreadable": [{"path": path, "reason": reason} for path, reason in skipped],
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if len(epoch_seconds) else None,
        "images_per_second": (
            images_seen / float(np.sum(epoch_seconds)) if len(epoch_seconds) else None
        ),
        "wall_seconds": wall_seconds,
    }


def train(
    config: Config,
    resume: bool = False,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> Path:
    """Trains a model as `config` says and writes the run folder.

    Args:
        config: the run's settings.
        resume: continue the interrupted run in `config.output_dir` from its last finished
            epoch (its `split.csv` and backup), instead of starting a new one. Defaults to False.
        callbacks: more Keras callbacks (e.g. one that scores another folder each epoch and
            adds the figure to the logs), placed before the CSV log. Defaults to `None`.

    Returns:
        The run folder.

    Raises:
        DataError: if the data folder is missing or malformed.
        FileExistsError: if `config.output_dir` already holds a trained model (or, when
            resuming, a finished run).
        TrainingDivergedError: if the loss became NaN or infinite.
    """
    start = time.perf_counter()
    if config.strategy == "multiworker" and not config.output_dir:
        raise ValueError(
            "Multi-worker training needs --output-dir: every worker must name the same run "
            "folder (the chief writes it, and a restarted worker finds its backup by it). "
            f"Received: output_dir={config.output_dir!r}. Pass e.g. --output-dir runs/cluster-1."
        )
    # First, before TensorFlow runs any op: a multi-worker strategy configures the collective
    # ops at startup and cannot be made later in the process.
    strategy = make_strategy(config.strategy)
    # Fail on bad data or a taken folder before any long work.
    data_dir = data.resolve_data_dir(config.data_dir)
    dataset = data.find_dataset(data_dir)
    run_dir, own_dir = _prepare_run_dir(config, resume)
    config = dataclasses.replace(
        config, data_dir=str(dataset.root.resolve()), output_dir=str(run_dir)
    )
    if config.deterministic:
        # Same seed, same machine, same weights; some kernels get slower.
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    if resume:
        if not (own_dir / SPLIT_FILE).exists():
            raise FileNotFoundError(
                f"Run folder '{own_dir}' has no {SPLIT_FILE}: it stopped before training began, "
                f"so there is nothing to resume. Received: resume='{run_dir}'. Start a new run."
            )
        split = pd.read_csv(own_dir / SPLIT_FILE)
        history_so_far = read_history(own_dir)
        best_so_far = float(history_so_far[SELECTION_METRIC].max()) if len(history_so_far) else None
        logger.info("Resuming %s after %d finished epochs", run_dir, len(history_so_far))
    else:
        config.save(own_dir / CONFIG_FILE)
        split = data.prepare_split(config, dataset)
        split.to_csv(own_dir / SPLIT_FILE, index=False)
        best_so_far = None
    class_names = data.task_class_names(config.task, dataset.class_names)
    logger.info("Run folder: %s; task %s, classes: %s", run_dir, config.task, list(class_names))

    train_split = data.load_split(split, "train", config.image_size, dataset.root)
    val_split = data.load_split(split, "val", config.image_size, dataset.root)
    if len(train_split.labels) == 0 or len(val_split.labels) == 0:
        raise data.DataError(
            f"No readable images left in the {'train' if not len(train_split.labels) else 'val'} "
            f"subset of '{dataset.root}'. Check the files listed in the warnings above."
        )
    train_ds, val_ds, steps = data.make_datasets(config, train_split, val_split, len(class_names))

    if config.strategy == "multiworker":
        # The pipelines hold arrays, not files: each worker takes its share of every batch.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    with strategy.scope():
        model = compile_model(build_model(config), config, steps)
    logger.info(
        "Model: %s parameters; balance=%s; %d replica(s) (%s)",
        f"{model.count_params():,}",
        config.balance,
        strategy.num_replicas_in_sync,
        config.strategy,
    )
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        steps_per_epoch=steps,
        shuffle=False,  # the tf.data pipeline shuffles
        callbacks=make_callbacks(config, own_dir, resume, best_so_far, callbacks, strategy),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    history = read_history(own_dir)
    if len(history) == 0 or not np.all(np.isfinite(history["loss"].to_numpy(float))):
        raise TrainingDivergedError(
            f"Training diverged: the loss became NaN or infinite in epoch {len(history)}, and "
            f"training stopped. Received: learning_rate={config.learning_rate}. Lower "
            "--learning-rate (e.g. by 10x), or check the input images. "
            + (
                f"{own_dir / MODEL_FILE} holds the best epoch before that."
                if (own_dir / MODEL_FILE).exists()
                else "No model was saved."
            )
        )
    summary = summarise(
        history,
        model=model,
        class_names=class_names,
        train=train_split,
        val=val_split,
        steps_per_epoch=steps,
        batch_size=config.batch_size,
        wall_seconds=time.perf_counter() - start,
    )
    summary["stopped_early"] = summary["epochs_run"] < config.epochs
    summary["replicas"] = int(strategy.num_replicas_in_sync)
    summary["task"] = config.task
    summary["weights_sha256"] = weights_digest(model)
    (own_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "%s after epoch %d; %s holds epoch %d (highest %s %.4f)",
        "Early stopping" if summary["stopped_early"] else "Finished",
        summary["epochs_run"],
        own_dir / MODEL_FILE,
        summary["best_epoch"],
        SELECTION_METRIC,
        summary["val_auc"],
    )
    if summary["unreadable_files"]:
        logger.warning(
            "%d unreadable images were skipped (listed in %s)",
            summary["unreadable_files"],
            own_dir / SUMMARY_FILE,
        )
    if config.strategy == "multiworker":
        task_type, index, is_chief = tf_config_task()
        logger.info(
            "Multi-worker run: %s %d of %d replicas finished with weights SHA-256 %s",
            task_type,
            index,
            strategy.num_replicas_in_sync,
            summary["weights_sha256"],
        )
        if not is_chief:
            shutil.rmtree(own_dir)
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pneumocnn.train` parser: one flag per `Config` field."""
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.train",
        description="Train the pneumocnn classifier and write a run folder.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="Continue an interrupted run from its last finished epoch, with its own config.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.resume:
            extra = [
                field.name
                for field in dataclasses.fields(Config)
                if getattr(args, field.name) is not None
            ] + (["config"] if args.config else [])
            if extra:
                raise ValueError(
                    "--resume continues a run with its own config.json; other flags would "
                    f"change it midway. Received: --resume with {extra}. Drop those flags."
                )
            # A worker of a multi-worker run resumes from its own copy (see `worker_dir`).
            own_dir = worker_dir(Path(args.resume), "multiworker")
            config_dir = own_dir if (own_dir / CONFIG_FILE).exists() else Path(args.resume)
            config = Config.load(config_dir / CONFIG_FILE)
            run_dir = train(dataclasses.replace(config, output_dir=args.resume), resume=True)
        else:
            config = config_from_args(args)
            run_dir = train(config)
    except (ValueError, FileNotFoundError, FileExistsError, TrainingDivergedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except tf.errors.UnavailableError as error:
        # Raised on the survivors when a worker of a multi-worker run dies.
        run = Path(args.resume or args.output_dir or "RUN_DIR")
        print(
            f"error: a worker of the multi-worker run was lost: {error.message.splitlines()[0]} "
            f"Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}. Restart every worker with "
            f"`python -m pneumocnn.train --resume {run}` and its own $TF_CONFIG: each resumes "
            "from its last finished epoch.",
            file=sys.stderr,
        )
        return 1
    if worker_dir(run_dir, config.strategy) != run_dir:
        print(f"Worker finished; the chief wrote the run folder {run_dir}")
        return 0
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    print(
        f"Run folder: {run_dir}\n"
        f"Best epoch {summary['best_epoch']}/{summary['epochs_run']}: "
        f"val AUC {summary['val_auc']:.4f}, accuracy {summary['val_accuracy']:.4f}, "
        f"sensitivity {summary['val_sensitivity']:.4f}, "
        f"specificity {summary['val_specificity']:.4f} (threshold 0.5); "
        f"{summary['parameters']:,} parameters; "
        f"{summary['seconds_per_epoch']:.1f} s/epoch, {summary['images_per_second']:.0f} images/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
