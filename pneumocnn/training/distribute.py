"""Training on several devices or machines with `tf.distribute` (`--strategy`).

`make_strategy` builds the strategy; with `"multiworker"` it must run before TensorFlow runs any
op in the process (the collective ops are configured at startup), so `pneumocnn.train` calls it
first. Keras 3 and TensorFlow's `MultiWorkerMirroredStrategy` need two adjustments, both here:
`KerasMultiWorkerStrategy` (how Keras calls `reduce`) and `MultiWorkerBackupAndRestore` (every
worker resumes from the same epoch). Where each worker writes, and which one is the chief, comes
from `pneumocnn.core.run_folder.tf_config_task` and `pneumocnn.core.run_folder.worker_dir`, which
need no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)


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

    Args:
        name: "default" (one device), "mirrored" (every GPU of this machine, else every logical
            CPU device), or "multiworker" (several machines, described by `$TF_CONFIG`).

    Raises:
        RuntimeError: for "multiworker", if TensorFlow has already run an op in this process.
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


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    """True for the strategy `make_strategy("multiworker")` returns."""
    return isinstance(strategy, KerasMultiWorkerStrategy)


def shard_by_data(*datasets: tf.data.Dataset) -> list[tf.data.Dataset]:
    """The datasets, set to give each worker its share of every batch.

    The pipelines hold arrays, not files, so TensorFlow's default (shard by file) does not apply.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return [dataset.with_options(options) for dataset in datasets]


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every weight of `model` (trainable or not), in order: the same digest means
    the same weights, so the workers of a multi-worker run can be compared."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


class MultiWorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose workers resume from the same epoch.

    Each worker of a multi-worker run backs up its own copy at the end of every epoch (the
    chief in the run folder, the others in theirs, see `pneumocnn.core.run_folder.worker_dir`). A
    worker lost between the chief's backup and its own leaves the copies one epoch apart, and
    workers that resumed from different epochs would wait on each other for ever. So at the start
    the workers gather their epochs and all resume from the earliest; a worker one epoch ahead
    finds that epoch in its previous copy (`double_checkpoint`).

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
        previous_metadata = f"{self._training_metadata_path}.bkp"
        previous = json.loads(Path(previous_metadata).read_text())
        if previous["epoch"] != agreed:
            raise RuntimeError(
                f"The workers' backups are more than one epoch apart: this worker's is at epoch "
                f"{epoch}, its previous one at {previous['epoch']}, another worker's at {agreed}. "
                f"Received: backup_dir='{self.backup_dir}'. Start the run again."
            )
        logger.info("Resuming from epoch %d, the earliest backup of all workers", agreed)
        # As Keras itself recovers from a corrupt backup: the previous copy becomes the latest.
        shutil.copy(self._prev_weights_path, self._weights_path)
        shutil.copy(previous_metadata, self._training_metadata_path)
        self._load_model()
