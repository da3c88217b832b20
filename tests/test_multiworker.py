"""Multi-worker training (`--strategy multiworker`): two workers on localhost, one killed
mid-run, both restarted.

Each worker is its own `python -m pneumocnn.train` process with its own `$TF_CONFIG`, as on
several machines (a multi-worker strategy must be made before TensorFlow starts in a process,
issue 16). Tiny data (32 px, 48 images), so the whole test takes about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

import pneumocnn
from helpers import TINY_RUN, flags
from pneumocnn.core.errors import EXIT_RESUMABLE
from pneumocnn.testing import write_dataset

EPOCHS = 4
PROJECT_ROOT = Path(pneumocnn.__file__).resolve().parents[1]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _start_workers(argv: list[str], logs: Path, attempt: str) -> list[subprocess.Popen]:
    """Starts worker 0 (the chief) and worker 1 on fresh localhost ports."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(tf_config),
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        log = open(logs / f"{attempt}-worker{index}.log", "w")  # noqa: SIM115 (closed by the OS)
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "pneumocnn.train", *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=logs,
            )
        )
    return workers


def _backed_up_epochs(metadata: Path) -> int:
    """The epochs a worker's `BackupAndRestore` has saved (0 before its first backup)."""
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):  # not yet, or being written
        return 0


def _wait(workers: list[subprocess.Popen], timeout: float) -> list[int | None]:
    deadline = time.monotonic() + timeout
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    return [worker.returncode for worker in workers]


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_two_workers_survive_a_killed_worker_and_end_with_identical_weights(tmp_path):
    root = write_dataset(tmp_path / "chest_xray", patients=12, images_per_patient=2, seed=3)
    runs = tmp_path / "runs"
    run_dir = runs / "cluster"
    worker_backup = runs / ".cluster.worker-1" / "backup" / "training_metadata.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    argv = flags(
        **TINY_RUN,
        strategy="multiworker",
        data_dir=root,
        output_dir=run_dir,
        epochs=EPOCHS,
        batch_size=8,
        early_stopping_patience=EPOCHS,
    )
    workers = _start_workers(argv, logs, "first")
    try:
        # Kill worker 1 mid-run, once it has backed up its second epoch.
        deadline = time.monotonic() + 180
        while _backed_up_epochs(worker_backup) < 2 and time.monotonic() < deadline:
            assert workers[1].poll() is None, (logs / "first-worker1.log").read_text()[-3000:]
            time.sleep(0.1)
        workers[1].send_signal(signal.SIGKILL)
        # The chief cannot go on without it: it fails and says how to go on.
        assert _wait(workers[:1], timeout=90) == [EXIT_RESUMABLE]
        assert f"--resume {run_dir}" in (logs / "first-worker0.log").read_text()
        assert not (run_dir / "summary.json").exists()
        assert _backed_up_epochs(run_dir / "backup" / "training_metadata.json") == 2
        # As if the chief had died between the worker's backup and its own: the chief's backup
        # is one epoch behind (its previous copy), so the workers must agree on epoch 1.
        for name in ("latest.weights.h5", "training_metadata.json"):
            shutil.copy(run_dir / "backup" / f"{name}.bkp", run_dir / "backup" / name)

        # Restart both, as a cluster manager would: each resumes from its own backup.
        workers = _start_workers(["--resume", str(run_dir)], logs, "restart")
        assert _wait(workers, timeout=150) == [0, 0], [
            (logs / f"restart-worker{i}.log").read_text()[-3000:] for i in range(2)
        ]
    finally:
        _stop(workers)

    chief_log, worker_log = [(logs / f"restart-worker{i}.log").read_text() for i in range(2)]
    # Only the chief wrote the run folder; the other worker's folder is gone.
    assert sorted(path.name for path in runs.iterdir()) == ["cluster"]
    for name in ("config.json", "split.csv", "history.csv", "best.keras", "summary.json"):
        assert (run_dir / name).is_file(), name
    # Resumed after the epoch both had backed up (the worker from its previous copy), not from
    # the start, and finished every epoch.
    assert "Resuming from epoch 1, the earliest backup of all workers" in worker_log
    for log in (chief_log, worker_log):
        assert f"Epoch 1/{EPOCHS}" not in log and f"Epoch 2/{EPOCHS}" in log
    history = pd.read_csv(run_dir / "history.csv")
    assert sorted(set(history["epoch"])) == list(range(EPOCHS))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["epochs_run"] == EPOCHS
    # The same weights on both workers, moving statistics included.
    assert f"weights SHA-256 {summary['weights_sha256']}" in worker_log
    assert "Worker finished" in worker_log
