"""Reliability: bad inputs, interrupted and repeated runs, divergence, safe loading, devices."""

import json
import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import flags, train_in_subprocess
from pneumocnn import train
from pneumocnn.core.metadata import METADATA_FILE, MetadataError, load_metadata
from pneumocnn.data.folders import list_images
from pneumocnn.data.images import load_image, load_images
from pneumocnn.data.pixels import MAX_DECODED_BYTES, ImageLoadError
from pneumocnn.testing import png_claiming, synthetic_xray, write_dataset
from pneumocnn.training.loop import read_history

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Bad inputs: the one loader never crashes, hangs, or returns a wrong shape.


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _known_awkward_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    gray = Image.fromarray(synthetic_xray(rng, 1, (64, 48)))
    jpeg, png = _encode(gray, "JPEG"), _encode(gray, "PNG")
    frames = [Image.fromarray(synthetic_xray(rng, i % 2, (30, 30))) for i in range(3)]
    animated = BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    palette = gray.convert("P", palette=Image.Palette.ADAPTIVE)
    return {
        "zero.jpeg": b"",
        "text.jpeg": b"This is a text file that happens to be named .jpeg\n",
        "truncated.jpeg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "one_pixel.png": _encode(Image.new("L", (1, 1), 128), "PNG"),
        "sixteen_bit.png": _encode(
            Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG"
        ),
        "cmyk.jpeg": _encode(gray.convert("CMYK"), "JPEG"),
        "palette.png": _encode(palette, "PNG"),
        "alpha.png": _encode(gray.convert("RGBA"), "PNG"),
        "animated.gif": animated.getvalue(),
        "bomb.png": png_claiming(100_000, 100_000),
    }


def _valid_or_documented_error(path: Path, size: int = 24) -> str:
    try:
        image = load_image(path, size)
    except ImageLoadError as error:
        assert path.name in str(error), str(error)
        return "error"
    assert image.shape == (size, size, 1) and image.dtype == np.uint8
    return "array"


def test_awkward_files_give_an_array_or_a_named_error(tmp_path):
    outcomes = {}
    for name, content in _known_awkward_files().items():
        (tmp_path / name).write_bytes(content)
        outcomes[name] = _valid_or_documented_error(tmp_path / name)
    assert outcomes["bomb.png"] == "error"
    # A GIF is no film format (issue "Hostile inputs and faults, round two"): refused by name.
    for name in ("zero.jpeg", "text.jpeg", "truncated.png", "animated.gif"):
        assert outcomes[name] == "error", name
    for name in (
        "one_pixel.png",
        "sixteen_bit.png",
        "cmyk.jpeg",
        "palette.png",
        "alpha.png",
    ):
        assert outcomes[name] == "array", name


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    assert 100_000 * 100_000 > MAX_DECODED_BYTES
    started = time.perf_counter()
    with pytest.raises(ImageLoadError, match="above the limit"):
        load_image(path, 32)
    assert time.perf_counter() - started < 5  # refused from the header, not decoded


FUZZ_EXAMPLES = 300


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    base=st.sampled_from(sorted(_known_awkward_files())),
    cut=st.floats(0, 1),
    noise=st.binary(max_size=64),
    position=st.floats(0, 1),
)
def test_fuzzed_files_never_crash_the_loader(tmp_path, base, cut, noise, position):
    """Tries FUZZ_EXAMPLES (300) inputs: awkward files, truncated anywhere, with random bytes
    spliced in anywhere."""
    content = _known_awkward_files()[base]
    content = content[: int(len(content) * (0.2 + 0.8 * cut))]
    at = int(len(content) * position)
    content = content[:at] + noise + content[at + len(noise) :]
    path = tmp_path / f"fuzz{Path(base).suffix}"
    path.write_bytes(content)
    _valid_or_documented_error(path)


# ---------------------------------------------------------------------------------------------
# Folder problems.


def load_images_of(root):
    table = list_images([root / "train"], ("NORMAL", "PNEUMONIA"))
    return load_images(table["path"].tolist(), 16)


def test_symlink_loop_in_a_class_folder_is_not_followed(make_dataset):
    root = make_dataset(patients=2, images_per_patient=1)
    os.symlink(root / "train", root / "train" / "NORMAL" / "loop")
    images = list_images([root / "train"], ("NORMAL", "PNEUMONIA"))
    assert len(images) == 4


def test_unreadable_file_is_skipped_and_counted(make_dataset, monkeypatch):
    root = make_dataset(patients=4, images_per_patient=1)
    locked = sorted((root / "train" / "NORMAL").iterdir())[0]
    real_open = os.open

    def open_or_deny(source, *args, **kwargs):
        # Root reads any file whatever its mode, so the denial is simulated where it happens.
        if Path(os.fsdecode(source)) == locked:
            raise PermissionError(13, "Permission denied", str(locked))
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_or_deny)
    images, kept, skipped = load_images_of(root)
    assert [p for p, _ in skipped] == [str(locked)]
    assert "Permission denied" in skipped[0][1]
    assert len(kept) == 7


def test_file_that_is_a_directory_named_like_an_image_is_skipped_and_counted(make_dataset):
    root = make_dataset(patients=3, images_per_patient=1)
    odd = root / "train" / "NORMAL" / "IM-9999-0001.jpeg"
    odd.mkdir()
    (odd / "inside.txt").write_text("x")
    images, kept, skipped = load_images_of(root)
    assert len(kept) == 6 and skipped == []  # a folder is not listed as an image file


# ---------------------------------------------------------------------------------------------
# Interrupted, repeated and diverging runs.


def _wait_for_epochs(history: Path, count: int, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended before it could be killed:\n{process.stdout.read()}")
        if history.exists() and len(history.read_text().splitlines()) - 1 >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"{count} epochs did not finish within {timeout} s")


def test_killed_run_resumes_and_finishes_with_every_artefact(tmp_path):
    root = write_dataset(tmp_path / "chest_xray", patients=30, images_per_patient=2, seed=3)
    run_dir = tmp_path / "run"
    epochs = 12
    argv = flags(
        data_dir=root,
        output_dir=run_dir,
        image_size=48,
        epochs=epochs,
        batch_size=4,
        early_stopping_patience=epochs,
        val_fraction=0.25,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pneumocnn.train", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_epochs(run_dir / "history.csv", 3, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert not (run_dir / "summary.json").exists()
    assert (run_dir / "backup").exists()

    assert train.main(["--resume", str(run_dir)]) == 0
    for name in ("config.json", "split.csv", "history.csv", "best.keras", "summary.json"):
        assert (run_dir / name).is_file(), name
    history = read_history(run_dir)
    assert history["epoch"].tolist() == list(range(epochs))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == epochs
    assert not (run_dir / "backup").exists()


def test_resuming_a_finished_run_is_refused(trained_run, capsys):
    assert train.main(["--resume", str(trained_run)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def _train_in_subprocess(root: Path, run_dir: Path, *extra: str, prelude: str = "") -> None:
    argv = flags(
        data_dir=root,
        output_dir=run_dir,
        image_size=32,
        epochs=2,
        batch_size=8,
        base_filters=8,
        num_blocks=2,
        val_fraction=0.25,
    ) + list(extra)
    train_in_subprocess(argv, prelude)


def test_deterministic_runs_give_identical_weights(tmp_path):
    from pneumocnn.network.model import load_model

    root = write_dataset(tmp_path / "chest_xray", patients=10, images_per_patient=2, seed=5)
    for name in ("a", "b"):
        _train_in_subprocess(root, tmp_path / name, "--deterministic")
    first = load_model(tmp_path / "a" / "best.keras").get_weights()
    second = load_model(tmp_path / "b" / "best.keras").get_weights()
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    root = write_dataset(tmp_path / "chest_xray", patients=10, images_per_patient=2, seed=5)
    prelude = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, "
        "[tf.config.LogicalDeviceConfiguration()] * 2)\n"
    )
    _train_in_subprocess(root, tmp_path / "run", "--strategy", "mirrored", prelude=prelude)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replicas"] == 2
    assert summary["epochs_run"] == 2


def test_diverged_training_ends_with_a_message_not_a_silent_model(make_dataset, tmp_path, capsys):
    root = make_dataset(patients=6, images_per_patient=2)
    status = train.main(
        flags(
            data_dir=root,
            output_dir=tmp_path / "run",
            image_size=32,
            epochs=3,
            batch_size=4,
            learning_rate=1e12,
            val_fraction=0.34,
        )
    )
    err = capsys.readouterr().err
    assert status == 2, err
    assert "diverged" in err and "--learning-rate" in err
    assert not (tmp_path / "run" / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# Safe loading.


def test_keras_file_with_a_lambda_layer_is_refused(tmp_path):
    import keras

    from pneumocnn.network.model import load_model

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "evil.keras")
    with pytest.raises(ValueError, match="evil.keras"):
        load_model(tmp_path / "evil.keras")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 99}, "newer"),
        ({"threshold": 0.0}, "threshold"),
        ({"image_size": "big"}, "image_size"),
        ({"class_names": ["ONLY"]}, "class_names"),
    ],
)
def test_invalid_metadata_is_refused(exported_model, tmp_path, change, message):
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    metadata.update(change)
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(MetadataError, match=message):
        load_metadata(tmp_path / METADATA_FILE)


def test_history_of_a_resumed_run_keeps_one_row_per_epoch(tmp_path):
    pd.DataFrame({"epoch": [0, 1, 2, 2, 3], "loss": [1, 0.9, 0.8, 0.7, 0.6]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    history = read_history(tmp_path)
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert history.loc[2, "loss"] == 0.7


def test_resume_refuses_flags_that_would_change_the_run(trained_run, capsys):
    assert train.main(["--resume", str(trained_run), "--epochs", "50"]) == 2
    assert "Drop those flags" in capsys.readouterr().err
