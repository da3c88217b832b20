"""Training callbacks of pneumocnn's own (the Keras ones are configured in `pneumocnn.train`)."""

from __future__ import annotations

import time

import keras


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
