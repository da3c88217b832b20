"""Regressions of issue #19: inputs and faults that crashed, hung, exhausted memory or silently
changed an answer. Each test is named for the bug it pins."""

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import flags
from pneumocnn import train
from pneumocnn.core.files import display_name
from pneumocnn.data.folders import list_images
from pneumocnn.data.images import load_image, read_grayscale
from pneumocnn.data.pixels import MAX_DECODED_BYTES, NOTES_KEY, ImageLoadError
from pneumocnn.data.scan import scan_folder
from pneumocnn.testing import png_claiming, synthetic_xray

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_INT8 = ROOT / "saved_models" / "pneumocnn_int8.tflite"

# Pillow's exif_transpose turns orientation N upright with TRANSPOSE[N]; storing a film with the
# inverse transpose and the tag must give back the film.
INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _with_orientation(upright: Image.Image, orientation: int, path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(INVERSE[orientation]).save(path, exif=exif.tobytes())
    return path


# ---------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("orientation", sorted(INVERSE))
def test_film_stored_rotated_with_an_exif_orientation_tag_is_not_read_sideways(
    tmp_path, orientation
):
    rng = np.random.default_rng(orientation)
    upright = Image.fromarray(synthetic_xray(rng, 1, (80, 48)))  # not square: sideways shows
    upright.save(tmp_path / "upright.png")
    rotated = _with_orientation(upright, orientation, tmp_path / "rotated.png")
    gray = read_grayscale(rotated)
    assert gray.size == upright.size
    np.testing.assert_array_equal(load_image(rotated, 32), load_image(tmp_path / "upright.png", 32))
    assert f"EXIF orientation {orientation}" in " ".join(gray.info[NOTES_KEY])


def test_exif_rotated_film_gets_the_label_and_probability_of_the_upright_film(tmp_path):
    # The bug: 33 of 60 NORMAL films saved rotated with an EXIF tag changed label.
    pytest.importorskip("ai_edge_litert", reason="the lite extra is not installed")
    from pneumocnn.runtime.lite import LiteModel

    model = LiteModel(SHIPPED_INT8)
    rng = np.random.default_rng(0)
    for index in range(4):
        upright = Image.fromarray(synthetic_xray(rng, index % 2, (200, 160)))
        upright.save(tmp_path / "upright.png")
        for orientation in (6, 8):
            rotated = _with_orientation(upright, orientation, tmp_path / "rotated.png")
            from_rotated = model.predict_file(rotated)
            from_upright = model.predict_file(tmp_path / "upright.png")
            assert from_rotated.label == from_upright.label
            assert from_rotated.probability == from_upright.probability


# ---------------------------------------------------------------------------------------------
# One memory budget for every decoder


def _jpeg_claiming(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 100).save(buffer, format="JPEG")
    content = bytearray(buffer.getvalue())
    at = content.find(b"\xff\xc0")
    content[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(content)


def _tiff_claiming(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 100).save(buffer, format="TIFF")
    content = bytearray(buffer.getvalue())
    (offset,) = struct.unpack_from("<I", content, 4)
    (count,) = struct.unpack_from("<H", content, offset)
    for index in range(count):
        at = offset + 2 + 12 * index
        tag, kind = struct.unpack_from("<HH", content, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<H" if kind == 3 else "<I", content, at + 8, value)
    return bytes(content)


@pytest.mark.parametrize(
    "name, content",
    [
        # 16-bit: 8,000 x 8,001 px is 64 Mpx, within the old pixel limit, but 128 MB decoded.
        ("deep.png", png_claiming(8000, 8001, depth=16)),
        ("rgba.png", png_claiming(6000, 6000, colour=6)),
        ("wide.jpeg", _jpeg_claiming(60000, 3000)),
        ("tall.tiff", _tiff_claiming(12000, 12000)),
    ],
)
def test_header_over_the_memory_budget_is_refused_before_decoding(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(ImageLoadError, match=f"above the limit of {MAX_DECODED_BYTES:,}"):
        load_image(path, 32)
    assert time.perf_counter() - started < 5


# ---------------------------------------------------------------------------------------------
# Special files, links and names


def test_fifo_named_jpeg_is_refused_at_once_instead_of_hanging(tmp_path):
    fifo = tmp_path / "film.jpeg"
    os.mkfifo(fifo)
    outcome = {}

    def read():
        try:
            load_image(fifo, 32)
        except ImageLoadError as error:
            outcome["error"] = str(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "load_image blocked on a FIFO"
    assert "not a regular file" in outcome["error"] and "film.jpeg" in outcome["error"]


def test_folder_walk_reports_every_entry_it_skips_and_why(tmp_path, monkeypatch):
    root = tmp_path / "films"
    (root / "sub").mkdir(parents=True)
    (root / "locked").mkdir()
    Image.new("L", (8, 8)).save(root / "good.png")
    Image.new("L", (8, 8)).save(root / "sub" / "deep.jpeg")
    (root / "notes.txt").write_text("x")
    (root / ".hidden.png").write_bytes(b"")
    os.mkfifo(root / "pipe.jpeg")
    os.symlink(root / "missing.png", root / "dangling.png")
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    os.symlink(root, root / "sub" / "back_to_root")
    os.symlink(root / "good.png", root / "alias.png")
    (root / os.fsdecode(b"bad-\xff-name.png")).write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path):  # root reads every folder, so the denial is simulated
        if Path(path) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_folder(root)
    assert [Path(path).name for path in scan.files] == ["alias.png", "good.png", "deep.jpeg"]
    reasons = {Path(name).name: reason for name, reason in scan.skipped}
    assert reasons["notes.txt"].startswith("not a JPEG, PNG or DICOM")
    assert reasons[".hidden.png"] == "hidden"
    assert reasons["pipe.jpeg"].startswith("not a regular file")
    assert reasons["dangling.png"].startswith("dangling link")
    assert reasons["loop_a.png"].startswith("link loop")
    assert reasons["back_to_root"] == "link to a folder (not followed)"
    assert reasons["locked"].startswith("unreadable folder (Permission denied")
    assert reasons[os.fsdecode(b"bad-\xff-name.png")].startswith("name is not valid UTF-8")


def test_file_names_with_newlines_and_escape_codes_are_printed_escaped(tmp_path):
    hostile = tmp_path / "a\nERROR fake line\x1b[2J.png"
    hostile.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError) as error:
        load_image(hostile, 32)
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message
    assert "a\\nERROR fake line\\x1b[2J.png" in message
    assert display_name(os.fsdecode(b"x-\xff.png")) == "x-\\xff.png"
    assert display_name("ordinary name.png") == "ordinary name.png"


# ---------------------------------------------------------------------------------------------
# Training: names, early failures, checkpoints, resume


def test_non_utf8_file_name_does_not_abort_training(make_dataset, tmp_path, caplog):
    root = make_dataset(patients=6, images_per_patient=2)
    odd = root / "train" / "NORMAL" / os.fsdecode(b"IM-0099-\xe9t\xe9.jpeg")
    Image.fromarray(synthetic_xray(np.random.default_rng(0), 0, (50, 50))).save(odd, "JPEG")
    argv = flags(data_dir=root, output_dir=tmp_path / "run", image_size=32, epochs=1)
    argv += flags(base_filters=8, num_blocks=2, batch_size=8, val_fraction=0.34)
    with caplog.at_level("WARNING"):
        assert train.main(argv) == 0
    assert "IM-0099-\\xe9t\\xe9.jpeg" in caplog.text and "not valid UTF-8" in caplog.text
    split = (tmp_path / "run" / "split.csv").read_text(encoding="utf-8")
    assert "IM-0099-" not in split


def test_training_that_fails_before_it_starts_leaves_no_run_folder(make_dataset, tmp_path, capsys):
    root = make_dataset(patients=1, images_per_patient=2)  # too few patients to split
    run_dir = tmp_path / "run"
    assert train.main(flags(data_dir=root, output_dir=run_dir, image_size=32, epochs=1)) == 2
    assert "patients" in capsys.readouterr().err
    assert not run_dir.exists()


def test_listing_skips_and_logs_a_symlinked_folder_inside_a_class(make_dataset, caplog):
    root = make_dataset(patients=2, images_per_patient=1)
    os.symlink(root / "train" / "PNEUMONIA", root / "train" / "NORMAL" / "elsewhere")
    with caplog.at_level("WARNING"):
        images = list_images([root / "train"], ("NORMAL", "PNEUMONIA"))
    assert len(images) == 4
    assert "link to a folder (not followed)" in caplog.text and "elsewhere" in caplog.text


# ---------------------------------------------------------------------------------------------
# Metadata that contradicts itself or its model


def _copied_model(exported_model: Path, folder: Path, change) -> Path:
    """A copy of the exported binary model whose metadata `change(metadata)` edits."""
    import shutil

    from pneumocnn.core.metadata import METADATA_FILE

    folder.mkdir()
    for path in exported_model.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    change(metadata)
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    return folder


def _swap_class_names(metadata):
    metadata["class_names"] = metadata["class_names"][::-1]


def _threshold_1e_300(metadata):
    metadata["threshold"] = 1e-300


def _drop_config(metadata):
    del metadata["config"]


def _image_size_64(metadata):
    metadata["image_size"] = metadata["config"]["image_size"] = 64


def _three_class_names(metadata):
    metadata["class_names"] = ["NORMAL", "PNEUMONIA", "OTHER"]


def _labels_swapped(metadata):
    pass  # the labels file is edited instead, below


@pytest.mark.parametrize(
    "change, message",
    [
        (_swap_class_names, "positive_class='PNEUMONIA'.*class_names=\\['PNEUMONIA', 'NORMAL'\\]"),
        (_threshold_1e_300, "threshold=1e-300"),
        (_drop_config, "`config`"),
        (_image_size_64, "input_shape=\\(1, 32, 32, 1\\), image_size=64"),
        (_three_class_names, "class_names=\\['NORMAL', 'PNEUMONIA', 'OTHER'\\]"),
        (
            _labels_swapped,
            "labels=\\['PNEUMONIA', 'NORMAL'\\].*class_names=\\['NORMAL', 'PNEUMONIA'\\]",
        ),
    ],
    ids=[
        "swapped-class-names",
        "threshold-1e-300",
        "no-config",
        "image-size",
        "three-classes",
        "labels-file",
    ],
)
def test_metadata_contradicting_itself_or_the_model_is_refused_naming_both_values(
    exported_model, tmp_path, capsys, change, message
):
    # The bug: swapped class_names inverted every label silently; a threshold of 1e-300 was
    # accepted; a wrong image_size, three class names or a missing config ended in tracebacks.
    from pneumocnn import predict
    from pneumocnn.core.metadata import INT8_FILE, LABELS_FILE, MetadataError
    from pneumocnn.runtime.lite import LiteModel

    folder = _copied_model(exported_model, tmp_path / "model", change)
    if change is _labels_swapped:
        (folder / LABELS_FILE).write_text("PNEUMONIA\nNORMAL\n")
    if change is _three_class_names:
        (folder / LABELS_FILE).unlink()  # else the labels file disagrees first
    with pytest.raises(MetadataError, match=message):
        LiteModel(folder / INT8_FILE)
    Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (40, 40))).save(tmp_path / "a.png")
    assert predict.main([str(tmp_path / "a.png"), "--model", str(folder / INT8_FILE)]) == 2
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Commands: explain names, folder problems in predict, stale export folders


def test_explain_writes_one_overlay_per_input_even_when_file_names_repeat_or_are_long(
    exported_model, tmp_path
):
    # The bug: a/x.jpeg and b/x.jpeg wrote the same PNG while explain printed "Wrote 3", and a
    # legal 255-byte file name crashed it.
    from pneumocnn import explain
    from pneumocnn.core.metadata import KERAS_FILE

    rng = np.random.default_rng(0)
    inputs = [tmp_path / "in" / "a" / "x.jpeg", tmp_path / "in" / "b" / "x.jpeg"]
    inputs.append(tmp_path / "in" / ("y" * 250 + ".jpeg"))  # 255 bytes
    for path in inputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_xray(rng, 1, (40, 40))).save(path)
    output = tmp_path / "out"
    status = explain.main(
        [
            str(tmp_path / "in"),
            "--model",
            str(exported_model / KERAS_FILE),
            "--output-dir",
            str(output),
        ]
    )
    assert status == 0
    written = sorted(path.name for path in output.iterdir())
    assert len(written) == 3 and all(len(name.encode()) <= 255 for name in written)
    assert all(name.endswith("_gradcam.png") for name in written)


def test_predict_reports_folder_entries_it_cannot_read_and_exits_1(
    exported_model, tmp_path, capsys, monkeypatch
):
    # The bug: a FIFO named .jpeg hung predict; loops, dangling links and unreadable subfolders
    # were skipped unreported (an unreadable subfolder even exited 0); names printed raw.
    from pneumocnn import predict
    from pneumocnn.core.metadata import INT8_FILE

    root = tmp_path / "films"
    (root / "locked").mkdir(parents=True)
    Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (40, 40))).save(
        root / "line\nbreak\x1b[31m.png"
    )
    os.mkfifo(root / "pipe.jpeg")
    os.symlink(root / "gone.png", root / "dangling.png")
    real_scandir = os.scandir
    monkeypatch.setattr(
        os,
        "scandir",
        lambda path: (
            (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
            if Path(path) == root / "locked"
            else real_scandir(path)
        ),
    )
    status = predict.main([str(root), "--model", str(exported_model / INT8_FILE)])
    out = capsys.readouterr().out
    assert status == 1
    assert "\x1b" not in out and "line\\nbreak\\x1b[31m.png" in out
    for name, reason in (
        ("pipe.jpeg", "not a regular file"),
        ("dangling.png", "dangling link"),
        ("locked", "unreadable folder"),
    ):
        assert any(name in line and reason in line and "ERROR" in line for line in out.splitlines())


def test_fifo_named_as_an_input_file_gets_an_error_line_not_a_hang(exported_model, tmp_path):
    fifo = tmp_path / "film.jpeg"
    os.mkfifo(fifo)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumocnn.predict",
            str(fifo),
            "--model",
            str(exported_model / "pneumocnn_int8.tflite"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert "not a regular file" in completed.stdout
