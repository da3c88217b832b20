"""Timing a model file: latency percentiles and peak memory, each model in its own process."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pneumocnn.runtime.lite import open_interpreter

# --------------------------------------------------------------------------------------------
# One measurement, in its own process.


def percentiles(times: list[float]) -> dict[str, float]:
    milliseconds = np.array(times) * 1000
    return {
        "median_ms": float(np.median(milliseconds)),
        "p95_ms": float(np.percentile(milliseconds, 95)),
    }


def measure_tflite(path: str, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Times single-image inference of a `.tflite` with LiteRT."""

    interpreter = open_interpreter(path, threads)
    details = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, details["shape"]).astype(details["dtype"])
    times = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        interpreter.set_tensor(details["index"], image)
        interpreter.invoke()
        interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return percentiles(times)


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB.

    Linux's VmHWM, which starts afresh at exec; `ru_maxrss` would carry over the parent's peak
    (the benchmark process, with every reference model loaded) into each measuring child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_job(job: dict[str, Any], measure: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """One measuring child's work: `measure` (`measure_tflite`, or
    `pneumocnn.benchmark.keras_timing.measure_keras` for a `.keras`) on the job's model, and
    the process's peak memory."""
    result = measure(job["path"], job["threads"], job["warmup"], job["runs"])
    result["peak_memory_mb"] = peak_memory_mb()
    return result


def measure_in_subprocess(path: Path, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    job = {"path": str(path), "threads": threads, "warmup": warmup, "runs": runs}
    completed = subprocess.run(
        [sys.executable, "-m", "pneumocnn.bench", "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"Benchmark of '{path}' failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
