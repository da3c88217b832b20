"""Timing a `.keras` model, in the measuring child of `pneumocnn.bench` that times it.

Its own module because it needs TensorFlow: a child timing a `.tflite`
(`pneumocnn.benchmark.timing.measure_tflite`) must not load it, whose own memory would count in
the model's peak.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow as tf

from pneumocnn.benchmark.timing import percentiles
from pneumocnn.network.model import load_model


def measure_keras(path: str, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Times single-image inference of a `.keras` model (a traced function, on the CPU)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = load_model(path)
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (1, *model.input_shape[1:])).astype(np.float32))
    times = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        predict(image).numpy()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return percentiles(times)
