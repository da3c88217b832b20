"""Training a `Config` into a run folder: `train` and its steps.

`train` checks the data and the run folder before any long work, makes the split, loads the films
once, builds and compiles the model, fits it with the callbacks of `make_callbacks` (checkpoint on
`val_auc`, early stopping, learning-rate schedule, history and backups), and writes
`summary.json`. An interrupted run resumes from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
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

from pneumocnn.core.config import Config
from pneumocnn.core.errors import DataError, UsageError
from pneumocnn.core.files import atomic_path, write_text_atomic

# The artefacts of a run folder, by role.
from pneumocnn.core.run_folder import (
    CONFIG_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    tf_config_task,
    worker_dir,
)
from pneumocnn.core.task import pneumonia_labels
from pneumocnn.data.folders import (
    find_dataset,
    label_for_task,
    resolve_data_dir,
    task_class_names,
)
from pneumocnn.data.pipeline import make_datasets
from pneumocnn.data.split import LoadedSplit, load_split, prepare_split
from pneumocnn.network.model import (
    build_model,
    fitting_model,
    load_model,
    training_classes_of,
    with_pneumonia_head,
)
from pneumocnn.training.callbacks import (
    SELECTION_METRIC,
    fast_forward,
    make_callbacks,
    read_backup,
    restore_backup,
)
from pneumocnn.training.compile import compile_model
from pneumocnn.training.distill import load_teachers
from pneumocnn.training.distribute import (
    is_multi_worker,
    make_strategy,
    shard_by_data,
    weights_digest,
)

logger = logging.getLogger(__name__)



def default_run_dir() -> Path:
    """Returns `runs/<YYYYmmdd-HHMMSS>` under the current folder."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


class TrainingDivergedError(UsageError):
    """Raised when the loss became NaN or infinite and training was stopped: a configuration
    error (the learning rate, most often; exit code 2)."""


def _check_run_dir(config: Config, resume: bool) -> tuple[Path, Path]:
    """The run folder and the folder this process writes to (see `worker_dir`), refused if it
    is taken (or, resuming, finished); nothing is created."""
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
    return run_dir, own_dir


@contextlib.contextmanager
def _new_run_dir(run_dir: Path) -> Any:
    """Creates `run_dir` for a new run; if the block fails before training starts, removes what
    it wrote (and the folder, if it created it), so no half-made run folder is left behind."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield run_dir
    except BaseException:
        for name in (CONFIG_FILE, SPLIT_FILE):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise


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
    train: LoadedSplit,
    val: LoadedSplit,
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


@dataclasses.dataclass
class _Run:
    """A run folder being trained, and what its steps share."""

    config: Config
    dataset: Any
    run_dir: Path
    own_dir: Path
    resume: bool
    split: pd.DataFrame | None = None
    best_so_far: float | None = None
    backup: dict[str, Any] | None = None


def train(
    config: Config,
    resume: bool = False,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> Path:
    """Trains a model as `config` says and writes the run folder.

    The steps: the distribution strategy (first, before TensorFlow runs any op), `_open_run`
    (the data and the run folder checked before any long work, or the interrupted run read
    back), `_load_films` (`config.json` and `split.csv` written, the films decoded once),
    `_build` (the pipeline and the compiled model), the fit, `_check_finite`, `_binary_form`
    (for `train_on_subtypes`) and `_write_summary`.

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
        raise UsageError(
            "Multi-worker training needs --output-dir: every worker must name the same run "
            "folder (the chief writes it, and a restarted worker finds its backup by it). "
            f"Received: output_dir={config.output_dir!r}. Pass e.g. --output-dir runs/cluster-1."
        )
    # First, before TensorFlow runs any op: a multi-worker strategy configures the collective
    # ops at startup and cannot be made later in the process.
    strategy = make_strategy(config.strategy)
    run = _open_run(config, resume)
    config = run.config
    with contextlib.nullcontext(run.own_dir) if resume else _new_run_dir(run.own_dir):
        train_split, val_split = _load_films(run)
        model, train_ds, val_ds, steps, initial_epoch = _build(
            run, train_split, val_split, strategy
        )
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        shuffle=False,  # the tf.data pipeline shuffles
        callbacks=make_callbacks(
            config, run.own_dir, resume, run.best_so_far, callbacks, run.backup, strategy
        ),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    history = _check_finite(run)
    train_split, val_split = _binary_form(run, train_split, val_split)
    summary = _write_summary(
        run, history, model, train_split, val_split, steps, strategy, time.perf_counter() - start
    )
    if is_multi_worker(strategy):
        task_type, index, is_chief = tf_config_task()
        logger.info(
            "Multi-worker run: %s %d of %d replicas finished with weights SHA-256 %s",
            task_type,
            index,
            strategy.num_replicas_in_sync,
            summary["weights_sha256"],
        )
        if not is_chief:
            shutil.rmtree(run.own_dir)
    return run.run_dir


def _open_run(config: Config, resume: bool) -> _Run:
    """Checks the data and the run folder before any long work, seeds everything, and reads
    back an interrupted run's split, history and backup when resuming."""
    dataset = find_dataset(resolve_data_dir(config.data_dir))
    run_dir, own_dir = _check_run_dir(config, resume)
    config = dataclasses.replace(
        config, data_dir=str(dataset.root.resolve()), output_dir=str(run_dir)
    )
    if config.deterministic:
        # Same seed, same machine, same weights; some kernels get slower.
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    run = _Run(config, dataset, run_dir, own_dir, resume)
    if not resume:
        run.split = prepare_split(config, dataset)
        return run
    if not (own_dir / SPLIT_FILE).exists():
        raise FileNotFoundError(
            f"Run folder '{own_dir}' has no {SPLIT_FILE}: it stopped before training began, "
            f"so there is nothing to resume. Received: resume='{run_dir}'. Start a new run."
        )
    run.split = pd.read_csv(own_dir / SPLIT_FILE)
    history = read_history(own_dir)
    run.best_so_far = float(history[SELECTION_METRIC].max()) if len(history) else None
    run.backup = read_backup(own_dir)
    logger.info(
        "Resuming %s after %d finished epochs", run_dir, run.backup["epoch"] if run.backup else 0
    )
    return run


def _load_films(run: _Run) -> tuple[LoadedSplit, LoadedSplit]:
    """Writes a new run's `config.json` and `split.csv`, and decodes the training and
    validation films once (labelled for what the network trains on: `split.csv` keeps the
    task's labels; `train_on_subtypes` trains on the subtypes)."""
    config, dataset = run.config, run.dataset
    class_names = task_class_names(config.task, dataset.class_names)
    logger.info("Run folder: %s; task %s, classes: %s", run.run_dir, config.task, list(class_names))
    if not run.resume:
        config.save(run.own_dir / CONFIG_FILE)
        with atomic_path(run.own_dir / SPLIT_FILE) as temporary:
            run.split.to_csv(temporary, index=False)
    fit_split = (
        label_for_task(run.split, dataset.class_names, "subtype")
        if config.binary_from_subtypes
        else run.split
    )
    train_split = load_split(fit_split, "train", config.image_size, dataset.root)
    val_split = load_split(fit_split, "val", config.image_size, dataset.root)
    if len(train_split.labels) == 0 or len(val_split.labels) == 0:
        subset = "train" if not len(train_split.labels) else "val"
        raise DataError(
            f"No readable images left in the {subset} subset of '{dataset.root}'. Check "
            "the files listed in the warnings above."
        )
    return train_split, val_split


def _build(
    run: _Run, train_split: LoadedSplit, val_split: LoadedSplit, strategy: tf.distribute.Strategy
) -> tuple[keras.Model, tf.data.Dataset, tf.data.Dataset, int, int]:
    """The input pipelines and the compiled model (restored from the backup when resuming).

    Returns:
        `(model, train_ds, val_ds, steps_per_epoch, initial_epoch)`.
    """
    config = run.config
    classes = training_classes_of(config)
    train_ds, val_ds, steps = make_datasets(
        config, train_split, val_split, classes, teachers=load_teachers(config, classes)
    )
    if is_multi_worker(strategy):
        train_ds, val_ds = shard_by_data(train_ds, val_ds)
    with strategy.scope():
        model = compile_model(fitting_model(build_model(config)), config, steps)
        initial_epoch = 0
        if run.backup is not None:
            restore_backup(model, run.own_dir, run.backup)
            initial_epoch = int(run.backup["epoch"])
    logger.info(
        "Model: %s parameters; balance=%s; %d replica(s) (%s)",
        f"{model.count_params():,}",
        config.balance,
        strategy.num_replicas_in_sync,
        config.strategy,
    )
    return model, fast_forward(train_ds, initial_epoch, steps), val_ds, steps, initial_epoch


def _check_finite(run: _Run) -> pd.DataFrame:
    """The run's history, refused when the loss became NaN or infinite.

    Raises:
        TrainingDivergedError: naming the epoch and the fix.
    """
    history = read_history(run.own_dir)
    if len(history) == 0 or not np.all(np.isfinite(history["loss"].to_numpy(float))):
        raise TrainingDivergedError(
            f"Training diverged: the loss became NaN or infinite in epoch {len(history)}, and "
            f"training stopped. Received: learning_rate={run.config.learning_rate}. Lower "
            "--learning-rate (e.g. by 10x), or check the input images. "
            + (
                f"{run.own_dir / MODEL_FILE} holds the best epoch before that."
                if (run.own_dir / MODEL_FILE).exists()
                else "No model was saved."
            )
        )
    return history


def _binary_form(
    run: _Run, train_split: LoadedSplit, val_split: LoadedSplit
) -> tuple[LoadedSplit, LoadedSplit]:
    """For `train_on_subtypes`: the checkpoint is the three-class model, and the run's model is
    its binary form (rewritten in place); the films' labels become pneumonia-vs-NORMAL."""
    path = run.own_dir / MODEL_FILE
    if not run.config.binary_from_subtypes or not path.exists():
        return train_split, val_split
    best = with_pneumonia_head(load_model(path), run.config)
    with atomic_path(path) as temporary:
        best.save(temporary)
    return tuple(
        dataclasses.replace(loaded, labels=pneumonia_labels(loaded.labels).astype(np.int32))
        for loaded in (train_split, val_split)
    )


def _write_summary(
    run: _Run,
    history: pd.DataFrame,
    model: keras.Model,
    train_split: LoadedSplit,
    val_split: LoadedSplit,
    steps: int,
    strategy: tf.distribute.Strategy,
    wall_seconds: float,
) -> dict[str, Any]:
    """Writes `summary.json` (see `summarise`) and logs how the run ended."""
    config, dataset = run.config, run.dataset
    summary = summarise(
        history,
        model=model,
        class_names=task_class_names(config.task, dataset.class_names),
        train=train_split,
        val=val_split,
        steps_per_epoch=steps,
        batch_size=config.batch_size,
        wall_seconds=wall_seconds,
    )
    summary["stopped_early"] = summary["epochs_run"] < config.epochs
    summary["replicas"] = int(strategy.num_replicas_in_sync)
    summary["task"] = config.task
    if config.binary_from_subtypes:
        summary["trained_on"] = list(task_class_names("subtype", dataset.class_names))
    summary["weights_sha256"] = weights_digest(model)
    write_text_atomic(run.own_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    logger.info(
        "%s after epoch %d; %s holds epoch %d (highest %s %.4f)",
        "Early stopping" if summary["stopped_early"] else "Finished",
        summary["epochs_run"],
        run.own_dir / MODEL_FILE,
        summary["best_epoch"],
        SELECTION_METRIC,
        summary["val_auc"],
    )
    if summary["unreadable_files"]:
        logger.warning(
            "%d unreadable images were skipped (listed in %s)",
            summary["unreadable_files"],
            run.own_dir / SUMMARY_FILE,
        )
    return summary
