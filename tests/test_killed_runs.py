"""Regressions of issue #19, the faults: a kill while a file is written, a checkpoint written in
place, a resumed run that drew other random numbers, scratch folders left by killed exports.
Each test is named for the bug it pins (the inputs that crashed or hung are in
`test_hostile_inputs.py`)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import flags, train_in_subprocess
from pneumocnn import train
from pneumocnn.core.files import atomic_path
from pneumocnn.testing import write_dataset
from pneumocnn.training.callbacks import BestModelCheckpoint
from pneumocnn.training.loop import read_history

ROOT = Path(__file__).resolve().parents[1]


def test_kill_while_a_file_is_written_leaves_the_previous_file(tmp_path):
    target = tmp_path / "best.keras"
    target.write_bytes(b"previous good model")
    script = (
        "import sys, time\n"
        "from pneumocnn.core.files import atomic_path\n"
        f"with atomic_path({str(target)!r}) as temporary:\n"
        "    with open(temporary, 'wb') as handle:\n"
        "        handle.write(b'half a model')\n"
        "        handle.flush()\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert target.read_bytes() == b"previous good model"
    # What a kill leaves: one hidden temporary file, which no folder walk reads.
    assert [path.name for path in tmp_path.iterdir() if not path.name.startswith(".")] == [
        "best.keras"
    ]
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"x")
        raise RuntimeError("failed midway")
    assert target.read_bytes() == b"previous good model"
    assert len(list(tmp_path.iterdir())) == 2  # a failure in-process removes its own file


def test_best_keras_checkpoint_is_never_written_in_place(tmp_path):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    checkpoint = BestModelCheckpoint(tmp_path / "best.keras", "val_auc")
    checkpoint.set_model(model)
    written = []
    real_save = model.save
    model.save = lambda path, *args, **kwargs: (written.append(Path(path)), real_save(path))
    checkpoint.on_epoch_end(0, {"val_auc": 0.7})
    checkpoint.on_epoch_end(1, {"val_auc": 0.6})  # worse: not saved
    checkpoint.on_epoch_end(2, {"val_auc": float("nan")})  # not a number: not saved
    assert len(written) == 1 and written[0] != tmp_path / "best.keras"
    assert written[0].parent == tmp_path and written[0].name.startswith(".partial-")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.keras"]
    keras.saving.load_model(tmp_path / "best.keras")


def _deterministic_run(
    root: Path, run_dir: Path, extra: list[str], kill_after_epoch: int | None = None
) -> None:
    argv = flags(
        data_dir=root,
        output_dir=run_dir,
        image_size=32,
        epochs=4,
        batch_size=8,
        base_filters=8,
        num_blocks=2,
        val_fraction=0.25,
        early_stopping_patience=10,
        reduce_lr_patience=1,
    ) + ["--deterministic", *extra]
    prelude = ""
    if kill_after_epoch is not None:  # dies like a SIGKILL once that epoch is backed up
        prelude = (
            "import os, keras\nfrom pneumocnn.training import loop\n"
            "class Kill(keras.callbacks.Callback):\n"
            "    def on_epoch_end(self, epoch, logs=None):\n"
            f"        if epoch == {kill_after_epoch}: os._exit(9)\n"
            "make = loop.make_callbacks\n"
            "loop.make_callbacks = lambda *a, **k: make(*a, **k) + [Kill()]\n"
        )
    train_in_subprocess(argv, prelude, returncode=9 if kill_after_epoch is not None else 0)


@pytest.mark.parametrize(
    "extra",
    [[], ["--weight-averaging", "ema", "--lr-schedule", "cosine"]],
    ids=["plateau", "ema-cosine"],
)
def test_resumed_deterministic_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, extra):
    # The bug: --resume reset the seed and the input pipeline, so a resumed run drew other
    # shuffles, augmentations and dropout masks, and ended with other weights.
    root = write_dataset(tmp_path / "chest_xray", patients=12, images_per_patient=2, seed=5)
    _deterministic_run(root, tmp_path / "whole", extra)
    _deterministic_run(root, tmp_path / "resumed", extra, kill_after_epoch=1)
    assert json.loads((tmp_path / "resumed" / "backup" / "state.json").read_text())["epoch"] == 2
    assert train.main(["--resume", str(tmp_path / "resumed")]) == 0
    whole, resumed = (read_history(tmp_path / name) for name in ("whole", "resumed"))
    columns = [column for column in whole.columns if column != "epoch_seconds"]
    assert len(whole) == len(resumed) == 4
    np.testing.assert_array_equal(whole[columns].to_numpy(), resumed[columns].to_numpy())
    from pneumocnn.network.model import load_model

    for a, b in zip(
        load_model(tmp_path / "whole" / "best.keras").get_weights(),
        load_model(tmp_path / "resumed" / "best.keras").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_scratch_folders_of_killed_exports_are_removed_and_live_ones_kept(tmp_path):
    # The bug: killed exports left hidden .export-* folders behind, forever.
    from pneumocnn.edge.family import SCRATCH_OWNER, remove_stale_scratch

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(finished.stdout)
    for name, pid in (("dead", dead_pid), ("live", os.getpid())):
        folder = tmp_path / f".export-{name}"
        folder.mkdir()
        (folder / SCRATCH_OWNER).write_text(f"{pid}\n")
        (folder / "pneumocnn_int8.tflite").write_bytes(b"half")
    removed = remove_stale_scratch(tmp_path)
    assert [path.name for path in removed] == [".export-dead"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".export-live"]
