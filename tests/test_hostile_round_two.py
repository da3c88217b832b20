"""Regressions of the issue "Hostile inputs and faults, round two": wrong answers, lost records,
memory past the budget, a local file printed, tracebacks, and unclear refusals. Each test is
named for the bug it pins."""

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import synthetic_xray
from pneumocnn import cli, predict
from pneumocnn.benchmark.hostile_inputs import (
    j2k_claiming,
    jpeg_claiming,
    jpeg_with_app_segments,
    png_with_text_chunk,
    tiff_with_large_tag,
)
from pneumocnn.core.files import csv_path, quoted_name, unquote_name
from pneumocnn.core.metadata import METADATA_FILE, MetadataError, load_metadata
from pneumocnn.data.images import load_image, read_grayscale
from pneumocnn.data.pixels import MAX_METADATA_BYTES, ImageLoadError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saved_models"
SHIPPED_INT8 = SHIPPED / "pneumocnn_int8.tflite"
requires_lite = pytest.mark.skipif(
    not SHIPPED_INT8.is_file(), reason="the shipped int8 model is not in saved_models/"
)


def _film(path: Path, label: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_xray(np.random.default_rng(seed), label, (200, 160))).save(path)
    return path


def _shipped_copy(folder: Path) -> Path:
    """A copy of the shipped binary family, to edit."""
    folder.mkdir()
    for path in SHIPPED.glob("pneumocnn*"):
        if path.is_file() and not path.name.startswith("pneumocnn_subtype"):
            shutil.copy(path, folder / path.name)
    shutil.copy(SHIPPED / "MODEL_CARD.md", folder / "MODEL_CARD.md")
    return folder


def _predict_process(*arguments: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumocnn.predict", *arguments],
        cwd=ROOT,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        **options,
    )


# ---------------------------------------------------------------------------------------------
# Wrong answers: names that print alike, formulas in CSV cells


@requires_lite
def test_two_files_whose_escaped_names_collided_get_one_distinct_reversible_name_each(
    tmp_path, capsys
):
    # The bug: "a<newline>b.jpeg" (PNEUMONIA) and a file literally named "a\nb.jpeg" (NORMAL)
    # both came out as ".../a\nb.jpeg" in CSV and JSON.
    folder = tmp_path / "films"
    real = [_film(folder / "a\nb.jpeg", 1, 0), _film(folder / "a\\nb.jpeg", 0, 1)]
    real.append(_film(folder / os.fsdecode(b"c-\xff\x1b[2J.png"), 1, 2))
    model = ["--model", str(SHIPPED_INT8)]
    assert predict.main([str(path) for path in real] + model + ["--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == [str(path) for path in real]  # exactly, in JSON
    assert predict.main([str(path) for path in real] + model + ["--format", "csv"]) == 0
    cells = [row["path"] for row in csv.DictReader(io.StringIO(capsys.readouterr().out))]
    assert [unquote_name(cell) for cell in cells] == [str(path) for path in real]
    assert predict.main([str(path) for path in real] + model) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and len(table.splitlines()) == 1 + len(real)
    shown = [quoted_name(path) for path in real]
    assert len(set(shown)) == 3 and all(name in table for name in shown)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3), max_size=6))
def test_a_printed_name_reads_back_as_the_very_file_name(parts):
    name = os.fsdecode(b"".join(parts))
    for shown in (quoted_name(name), csv_path(name)):
        assert os.fsencode(unquote_name(shown)) == b"".join(parts)
        assert shown.isprintable()


@requires_lite
def test_no_csv_cell_starts_a_spreadsheet_formula(tmp_path, capsys, monkeypatch):
    # The bug: a file named "=cmd|calc.jpeg" became a cell starting with "=".
    monkeypatch.chdir(tmp_path)
    for name in ("=cmd|calc.jpeg", "+1.png", "-2.png", "@sum.png"):
        _film(tmp_path / name)
    (tmp_path / "=broken.png").write_bytes(b"not an image")
    names = ["=cmd|calc.jpeg", "+1.png", "-2.png", "@sum.png", "=broken.png"]
    status = predict.main(["--model", str(SHIPPED_INT8), "--format", "csv", "--", *names])
    assert status == 1
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    for row in rows[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row), row
    assert [unquote_name(row[0]) for row in rows[1:]] == names


# ---------------------------------------------------------------------------------------------
# --threshold


@pytest.mark.parametrize("value", ["1e-7", "5e-324", "0.9999999"])
def test_a_threshold_beyond_the_metadata_margin_is_refused_as_metadata_is(value, capsys):
    # The bug: these were accepted and printed as 0.0 or 1.0.
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["x.png", "--threshold", value])
    assert exit_info.value.code == 2
    assert f"Received: '{value}'" in capsys.readouterr().err


def test_a_probability_just_below_the_threshold_never_prints_equal_to_it():
    # The bug: "NORMAL, 0.042969 >= 0.042969" (both rounded to six places).
    from pneumocnn.runtime.prediction import make_prediction

    result = make_prediction("a.png", np.array([0.04296875]), 0.042969, ["NORMAL", "PNEUMONIA"])
    row = result.as_row()
    assert row["label"] == "NORMAL" and row["probability"] < row["threshold"]
    line = predict._table_line({**row, "ood_score": None})
    probability, threshold = line.split()[1:3]
    assert float(probability) < float(threshold)


# ---------------------------------------------------------------------------------------------
# Standard output: a reader gone, closed, full


@requires_lite
def test_predict_into_a_pipe_whose_reader_left_stops_quietly_with_141(tmp_path):
    # The bug: `predict | head -1` ended in a BrokenPipeError traceback (exit 3).
    film = _film(tmp_path / "a.png")
    process = subprocess.Popen(
        [sys.executable, "-m", "pneumocnn.predict", str(film), "--model", str(SHIPPED_INT8)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    process.stdout.close()  # the reader leaves before the first line
    error = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141
    assert "Traceback" not in error and "Exception ignored" not in error


@requires_lite
@pytest.mark.parametrize("where", ["closed", "full"])
def test_predict_with_standard_output_closed_or_full_exits_2_naming_it(tmp_path, where):
    # The bug: `predict >&-` and `predict > /dev/full` ended in tracebacks (exit 3).
    film = _film(tmp_path / "a.png")
    arguments = [str(film), "--model", str(SHIPPED_INT8)]
    if where == "closed":
        completed = _predict_process(
            *arguments, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1)
        )
    else:
        with open("/dev/full", "w") as full:
            completed = _predict_process(*arguments, stdout=full, stderr=subprocess.PIPE)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr and "Exception ignored" not in completed.stderr
    expected = "Standard output is closed" if where == "closed" else "No space left on device"
    assert expected in completed.stderr


def test_an_error_message_of_a_gigabyte_is_cut_to_a_bounded_length(capsys):
    # The bug: a .keras's 1 GiB config.json came back whole in the error, on stderr.
    import argparse

    def command(_):
        raise ValueError("x" * 10_000_000)

    assert cli.run(argparse.ArgumentParser(), command, []) == 2
    error = capsys.readouterr().err
    assert len(error) < 3 * cli.MAX_MESSAGE_CHARS and "more characters left out" in error


# ---------------------------------------------------------------------------------------------
# Memory past the budget


def _refused_within(path: Path, limit: int = 20_000_000) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError) as error:
            load_image(path, 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak:,} bytes allocated to refuse it"
    return str(error.value)


def test_png_with_a_600_mb_text_chunk_is_refused_before_pillow_reads_it(tmp_path):
    # The bug: 1.28 GB before it was refused.
    path = png_with_text_chunk(tmp_path / "text.png", 600_000_000)
    assert path.stat().st_blocks * 512 < 1_000_000  # sparse
    assert "a 'tEXt' chunk of 600,000,000 bytes" in _refused_within(path)


def test_jpeg_with_more_app_segments_than_the_budget_is_refused_before_pillow_reads_them(tmp_path):
    path = jpeg_with_app_segments(tmp_path / "app.jpeg", 320)
    assert f"above the limit of {MAX_METADATA_BYTES:,}" in _refused_within(path)


def test_tiff_with_a_600_mb_tag_is_refused_before_pillow_reads_it(tmp_path):
    path = tiff_with_large_tag(tmp_path / "tag.tiff", 600_000_000)
    assert "TIFF tags of 600,000,000 bytes" in _refused_within(path)


def test_small_metadata_of_a_png_jpeg_or_tiff_does_not_stop_the_film(tmp_path):
    for path in (
        jpeg_with_app_segments(tmp_path / "app.jpeg", 8),
        tiff_with_large_tag(tmp_path / "tag.tiff", 1000),
    ):
        assert load_image(path, 32).shape == (32, 32, 1)


@pytest.mark.parametrize("codec", ["jpeg-gray", "jpeg-colour", "jpeg2000"])
def test_dicom_whose_compressed_frame_claims_more_than_its_header_is_refused_undecoded(
    tmp_path, codec
):
    # The bug: a 224 x 224 header holding a 12000 x 12000 JPEG was decoded whole (1.48 GB in
    # colour, 492 MB gray) before the mismatch was noticed.
    pytest.importorskip("pydicom")
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    from pneumocnn.benchmark.hostile_inputs import dicom_with_frame

    frame, syntax, samples = {
        "jpeg-gray": (jpeg_claiming(12000, 12000), JPEGBaseline8Bit, 1),
        "jpeg-colour": (jpeg_claiming(12000, 12000, 3), JPEGBaseline8Bit, 3),
        "jpeg2000": (j2k_claiming(12000, 12000), JPEG2000Lossless, 1),
    }[codec]
    path = dicom_with_frame(tmp_path / "bomb.dcm", 224, 224, frame, syntax, samples)
    assert "12000x12000 px" in _refused_within(path, 5_000_000)


def test_dicom_whose_compressed_frame_is_another_size_than_its_header_is_refused(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.uid import JPEGBaseline8Bit

    from pneumocnn.benchmark.hostile_inputs import dicom_with_frame

    path = dicom_with_frame(
        tmp_path / "odd.dcm", 224, 224, jpeg_claiming(300, 200), JPEGBaseline8Bit
    )
    message = _refused_within(path)
    assert "224x224" in message and "300x200" in message and "contradicts itself" in message


def _keras_claiming(path: Path, member: str, size: int) -> Path:
    """A zip whose directory says `member` inflates to `size` bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, b"{}")
        archive.writestr("model.weights.h5", b"")
    content = bytearray(path.read_bytes())
    at = content.find(b"PK\x01\x02")  # the first central directory entry: `member`
    content[at + 24 : at + 28] = size.to_bytes(4, "little")  # its uncompressed size
    path.write_bytes(bytes(content))
    return path


def test_keras_file_whose_config_inflates_past_the_budget_is_refused_before_keras_opens_it(
    tmp_path,
):
    # The bug: a 5.2 MB .keras holding a 1 GiB config.json took 40 s and 7 GB, and its error
    # carried 1,073,743,168 bytes of Keras's text.
    from pneumocnn.network.model import check_keras_archive

    path = _keras_claiming(tmp_path / "huge.keras", "config.json", 1 << 30)
    with pytest.raises(ValueError, match="1,073,741,824") as error:
        check_keras_archive(path)
    assert len(str(error.value)) < 1000


def test_keras_file_whose_config_really_inflates_past_the_budget_is_refused(tmp_path):
    from pneumocnn.network.model import load_model

    path = tmp_path / "big.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b"{" + b" " * (MAX_METADATA_BYTES + 1) + b"}")
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match="config.json"):
        load_model(path)


# ---------------------------------------------------------------------------------------------
# Names in metadata, and metadata that is not JSON


@requires_lite
@pytest.mark.parametrize("kind", ["relative", "absolute", "link"])
def test_a_labels_file_outside_the_model_folder_is_refused_unread(tmp_path, capsys, kind):
    # The bug: files.labels = "../../../../etc/passwd" printed the whole file in the error of
    # predict and web build.
    from pneumocnn import web

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret\n")
    folder = _shipped_copy(tmp_path / "model")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    if kind == "link":
        (folder / metadata["files"]["labels"]).unlink()
        os.symlink(secret, folder / metadata["files"]["labels"])
    else:
        metadata["files"]["labels"] = (
            os.path.relpath(secret, folder) if kind == "relative" else str(secret)
        )
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    film = _film(tmp_path / "a.png")
    assert predict.main([str(film), "--model", str(folder / "pneumocnn_int8.tflite")]) == 2
    error = capsys.readouterr().err
    assert "outside its folder" in error and "root:x" not in error
    with pytest.raises(web.BuildError) as build_error:
        web.build(tmp_path / "site", folder / "pneumocnn_int8.tflite")
    assert "root:x" not in str(build_error.value)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"format_version": 1, "name": "\xff"}', "not UTF-8 text: byte 0xff"),
        (b"{" + b" " * (MAX_METADATA_BYTES + 1) + b"}", "larger than"),
    ],
    ids=["nested-100000-deep", "not-utf8", "too-large"],
)
def test_metadata_that_cannot_be_read_is_a_usage_error_naming_the_file(tmp_path, content, reason):
    # The bug: 100,000 levels of nesting ended in a RecursionError traceback; bytes that are not
    # UTF-8 gave "'utf-8' codec can't decode byte 0xff" naming no file.
    path = tmp_path / "pneumocnn.json"
    path.write_bytes(content)
    with pytest.raises(MetadataError) as error:
        load_metadata(path)
    assert reason in str(error.value) and str(path) in str(error.value)


@requires_lite
def test_a_guard_limit_given_as_a_string_names_the_limit_and_the_file(tmp_path, capsys):
    # The bug: `"min_side": "32"` ended in a TypeError traceback.
    folder = _shipped_copy(tmp_path / "model")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata["guard"]["limits"]["min_side"] = "32"
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    film = _film(tmp_path / "a.png")
    assert predict.main([str(film), "--model", str(folder / "pneumocnn_int8.tflite")]) == 2
    error = capsys.readouterr().err
    assert "'min_side'" in error and "'32'" in error and str(folder) in error


@requires_lite
def test_the_rgb_variant_given_as_the_model_names_the_grayscale_file(tmp_path, capsys):
    # The bug: the table header, then "Cannot set tensor: Dimension mismatch".
    film = _film(tmp_path / "a.png")
    status = predict.main([str(film), "--model", str(SHIPPED / "pneumocnn_rgb_int8.tflite")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert "RGB variant" in captured.err and str(SHIPPED_INT8) in captured.err


# ---------------------------------------------------------------------------------------------
# Formats: only films, and which frame was read


def _encoded(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind, name",
    [
        ("GIF", "x.png"),
        ("WEBP", "x.jpeg"),
        ("BMP", "x.png"),
        ("TGA", "x.png"),
        ("ICO", "x.png"),
        ("PPM", "x.jpeg"),
        ("JPEG2000", "x.jpeg"),
    ],
)
def test_an_image_in_another_format_named_like_a_film_is_refused_naming_its_format(
    tmp_path, kind, name
):
    # The bug: classified on its first frame without a word.
    film = Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (64, 64)))
    (tmp_path / name).write_bytes(_encoded(film, kind))
    with pytest.raises(ImageLoadError, match=f"in the {kind} format"):
        load_image(tmp_path / name, 32)


def test_an_eps_named_jpeg_never_reaches_ghostscript(tmp_path, monkeypatch):
    import PIL.EpsImagePlugin

    monkeypatch.setattr(
        PIL.EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript ran")
    )
    (tmp_path / "x.jpeg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n")
    with pytest.raises(ImageLoadError, match="in the EPS format"):
        load_image(tmp_path / "x.jpeg", 32)


@pytest.mark.parametrize("kind", ["APNG", "TIFF"])
def test_a_file_of_several_frames_whose_first_is_blank_is_refused_saying_which_frame(
    tmp_path, kind
):
    # The bug: refused as blank, without a word that a later frame is the film.
    from pneumocnn.runtime import guard

    film = Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (200, 160)))
    blank = Image.new("L", film.size, 0)
    path = tmp_path / ("x.png" if kind == "APNG" else "x.tiff")
    if kind == "APNG":
        blank.save(path, save_all=True, append_images=[film])
    else:
        blank.save(path, save_all=True, append_images=[film.copy(), film.copy()])
    gray = read_grayscale(path)
    verdict = guard.judge(gray, None, None)
    frames = 2 if kind == "APNG" else 3
    assert verdict.status == guard.REFUSED and f"frame 1 of {frames} read" in verdict.reason
    film_first = tmp_path / ("y.png" if kind == "APNG" else "y.tiff")
    film.save(film_first, save_all=True, append_images=[blank])
    verdict = guard.judge(read_grayscale(film_first), None, None)
    assert verdict.status == guard.FLAGGED and "frame 1 of 2 read" in verdict.reason


# ---------------------------------------------------------------------------------------------
# DICOM windows, and a damaged JPEG 2000 frame


def _windowed_dicom(path: Path, center: str, width: str) -> Path:
    from helpers import write_dicom

    film = synthetic_xray(np.random.default_rng(0), 1, (64, 64)).astype(np.uint16) * 16
    write_dicom(path, film, "MONOCHROME2", 12, window=(1111, 2222))
    raw = path.read_bytes()
    for old, new in ((b"1111.0", center), (b"2222.0", width)):  # the same length, as written
        raw = raw.replace(old, new.encode().ljust(len(old)), 1)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize(
    "center, width, expected",
    [
        ("nan", "100", "WindowCenter that is not a finite number"),
        ("inf", "100", "WindowCenter that is not a finite number"),
        ("2048", "1e30", "window that shows every value the file can hold"),
        ("1e30", "100", "window that shows every value the file can hold"),
        ("abcd", "100", "WindowCenter that is not a finite number"),
        ("2048", "0", "window width below 1"),
    ],
    ids=["nan", "infinite", "1e30-wide", "1e30-centre", "text", "zero-wide"],
)
def test_a_dicom_window_that_cannot_be_shown_is_named_as_the_problem(
    tmp_path, center, width, expected
):
    # The bug: NaN, infinite and 1e30 windows were refused as a "near-constant image"; a text
    # window gave a TypeError.
    pytest.importorskip("pydicom")
    path = _windowed_dicom(tmp_path / "w.dcm", center, width)
    with pytest.raises(ImageLoadError, match=expected):
        load_image(path, 32)


def test_a_damaged_jpeg_2000_dicom_is_refused_without_a_logged_traceback(tmp_path, caplog):
    # The bug: pydicom logged the decoder's traceback before the error.
    pytest.importorskip("pydicom")
    from pydicom.uid import JPEG2000Lossless

    from pneumocnn.benchmark.hostile_inputs import dicom_with_frame

    film = Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (64, 64)))
    frame = bytearray(_encoded(film, "JPEG2000", no_jp2=True))
    frame[60:300] = bytes(240)  # the tiles, damaged; the size header intact
    path = dicom_with_frame(tmp_path / "broken.dcm", 64, 64, bytes(frame), JPEG2000Lossless)
    with caplog.at_level("DEBUG"), pytest.raises(ImageLoadError, match="cannot be decoded"):
        load_image(path, 32)
    assert not [record for record in caplog.records if record.exc_info], caplog.text


# ---------------------------------------------------------------------------------------------
# Folder walks: what is not named like an image is not an input, whatever it is


@requires_lite
def test_a_socket_fifo_or_dangling_link_not_named_like_an_image_is_skipped_like_notes(
    tmp_path, capsys
):
    # The bug: each became an unreadable row and exit 1, while a regular notes.txt was skipped.
    folder = tmp_path / "films"
    _film(folder / "a.png")
    (folder / "notes.txt").write_text("x")
    os.mkfifo(folder / "pipe")
    os.symlink(folder / "gone", folder / "dangling")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket"))
    try:
        assert predict.main([str(folder), "--model", str(SHIPPED_INT8)]) == 0
    finally:
        server.close()
    out = capsys.readouterr().out
    assert "ERROR" not in out and "a.png" in out


# ---------------------------------------------------------------------------------------------
# Calibration: too few films, the training folder, a second calibration


def _site(root: Path, per_class: int) -> Path:
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for index in range(per_class):
            _film(root / name / f"person{index}_{name.lower()}.png", label, index)
    return root


def test_calibration_on_one_film_per_class_is_refused(exported_model, tmp_path, capsys):
    # The bug: it wrote "sensitivity 1.0000 [1.0000-1.0000]" into the family and its card.
    from pneumocnn import evaluate

    folder = tmp_path / "model"
    shutil.copytree(exported_model, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    site = _site(tmp_path / "site", 1)
    assert evaluate.main([str(folder / "pneumocnn_int8.tflite"), "--calibrate-on", str(site)]) == 2
    assert "at least 10 readable NORMAL" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_calibration_on_the_train_split_of_a_data_set_is_refused(trained_run, tmp_path, capsys):
    # The bug: `--calibrate-on .../chest_xray/train` was accepted.
    from pneumocnn import evaluate

    root = tmp_path / "chest_xray"
    _site(root / "train", 10)
    (root / "test").mkdir()
    assert evaluate.main([str(trained_run), "--calibrate-on", str(root / "train")]) == 2
    assert "is the train/ split of a data set" in capsys.readouterr().err


def test_a_second_calibration_of_a_family_while_one_runs_is_refused_naming_it(
    exported_model, tmp_path, capsys
):
    # The bug: the loser said "[Errno 17] File exists" or advised a re-export.
    from pneumocnn import evaluate
    from pneumocnn.edge.family import claim_family

    folder = tmp_path / "model"
    shutil.copytree(exported_model, folder)
    site = _site(tmp_path / "site", 10)
    with claim_family(folder, "pneumocnn"):  # the first, still running (this process)
        status = evaluate.main([str(folder / "pneumocnn_int8.tflite"), "--calibrate-on", str(site)])
    assert status == 2
    error = capsys.readouterr().err
    assert f"Another process (id {os.getpid()}) is writing the model family" in error
    assert "Wait for it to finish" in error


# ---------------------------------------------------------------------------------------------
# Lost records: a failed export changes nothing; an interrupted one is rolled forward


def _passing(monkeypatch):
    """Parity bars any model meets, so the toy model's near-tie decides nothing (conftest.py)."""
    from pneumocnn.edge import parity

    monkeypatch.setattr(parity, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(parity, "MAX_AUC_DROP", 1.0)


def _site_calibrated_run(trained_run, tmp_path) -> Path:
    from pneumocnn.core.run_folder import write_threshold

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    write_threshold(run, 0.3, "target_sensitivity=0.96 on site", "site", 40)
    return run


def test_a_failed_export_keeps_the_site_calibration_and_leaves_no_export_folder(
    trained_run, tmp_path, monkeypatch, capsys
):
    # The bug: `export RUN --target-sensitivity 0.5` failed (exit 4, "Nothing was written") but
    # replaced RUN/threshold.json with a threshold chosen on validation, and left an empty export/.
    from pneumocnn import export
    from pneumocnn.edge import parity

    run = _site_calibrated_run(trained_run, tmp_path)
    before = (run / "threshold.json").read_bytes()
    monkeypatch.setattr(parity, "MIN_AGREEMENT", 1.01)  # no model passes
    argv = [str(run), "--target-sensitivity", "0.5", "--calibration-images", "8"]
    assert export.main(argv) == 4
    assert "Traceback" not in capsys.readouterr().err
    assert (run / "threshold.json").read_bytes() == before
    assert not (run / "export").exists()


def test_a_failed_export_of_a_run_without_a_threshold_leaves_predict_refusing_it(
    trained_run, tmp_path, monkeypatch, capsys
):
    # The bug: a failed export wrote threshold.json, so `predict --model RUN` stopped refusing.
    from pneumocnn import export
    from pneumocnn.edge import parity

    run = shutil.copytree(
        trained_run,
        tmp_path / "run",
        ignore=shutil.ignore_patterns("threshold.json", "export", "eval"),
    )
    monkeypatch.setattr(parity, "MIN_AGREEMENT", 1.01)
    assert export.main([str(run), "--calibration-images", "8"]) == 4
    assert not (run / "threshold.json").exists() and not (run / "export").exists()
    capsys.readouterr()
    assert predict.main([str(_film(tmp_path / "a.png")), "--model", str(run)]) == 2
    assert "has no threshold.json" in capsys.readouterr().err


def test_a_successful_export_writes_the_threshold_it_chose_after_its_family(
    trained_run, tmp_path, monkeypatch
):
    from pneumocnn.edge.export import export

    _passing(monkeypatch)
    run = _site_calibrated_run(trained_run, tmp_path)
    metadata = export(run, tmp_path / "out", calibration_images=8, target_sensitivity=0.5)
    record = json.loads((run / "threshold.json").read_text())
    assert (
        record["threshold"] == metadata["threshold"] and record["rule"] == "target_sensitivity=0.5"
    )
    assert metadata["threshold_rule"] == "target_sensitivity=0.5"
    assert (
        sorted(path.name for path in (tmp_path / "out").iterdir() if path.name.startswith("."))
        == []
    )


def _dead_process_id() -> int:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(finished.stdout)


def test_an_export_killed_between_its_renames_is_completed_by_the_next_reader(
    trained_run, tmp_path, monkeypatch
):
    # The bug: the new int8 stood beside the old metadata (the previous int8 lost; predict
    # refused it on its SHA until a re-export); export had no roll-back or roll-forward.
    from pneumocnn.core import commit
    from pneumocnn.edge.export import export
    from pneumocnn.runtime.lite import LiteModel

    _passing(monkeypatch)
    run = _site_calibrated_run(trained_run, tmp_path)
    output = tmp_path / "out"
    export(run, output, calibration_images=8)
    move, moved = commit._move, []

    def killed_after_the_first_rename(source, target):
        if moved:
            raise KeyboardInterrupt
        moved.append(target)
        move(source, target)

    monkeypatch.setattr(commit, "_move", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        export(run, output, calibration_images=8, target_sensitivity=0.5)
    monkeypatch.setattr(commit, "_move", move)
    with pytest.raises(MetadataError, match="SHA-256"):  # what a reader saw before
        load_metadata(output / METADATA_FILE, moved[0])
    (output / ".export-pneumocnn" / "owner.pid").write_text(f"{_dead_process_id()}\n")
    model = LiteModel(output / "pneumocnn_int8.tflite")  # completes the renames first
    assert model.metadata["threshold_rule"] == "target_sensitivity=0.5"
    for name in model.metadata["sha256"]:
        load_metadata(output / METADATA_FILE, output / name)
    assert json.loads((run / "threshold.json").read_text())["rule"] == "target_sensitivity=0.5"
    assert not (output / ".export-pneumocnn").exists()


# ---------------------------------------------------------------------------------------------
# A read-only or full file system


def _pages(folder: Path) -> int:
    return sum(
        -(-path.stat().st_size // 4096) * 4096 for path in folder.iterdir() if path.is_file()
    )


def _mount(target: Path, *options: str) -> None:
    completed = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if completed.returncode != 0:
        pytest.skip(f"cannot mount a test file system here ({completed.stderr.strip()})")


@pytest.fixture
def mounted(tmp_path):
    """`mount(kind, folder)`: a full tmpfs holding a copy of `folder` ("full"), or a read-only
    view of it ("read-only"); unmounted afterwards."""
    mounts = []

    def mount(kind: str, folder: Path, spare: int = 12_288) -> Path:
        target = tmp_path / f"mounted-{len(mounts)}"
        target.mkdir()
        if kind == "full":
            _mount(target, "-t", "tmpfs", "-o", f"size={_pages(folder) + spare}", "tmpfs")
            mounts.append(target)
            for path in folder.iterdir():
                if path.is_file():
                    shutil.copy(path, target / path.name)
        else:
            _mount(target, "--bind", str(folder))
            mounts.append(target)
            _mount(target, "-o", "remount,bind,ro")
        return target

    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", str(target)], capture_output=True)


@pytest.mark.parametrize(
    "kind, reason", [("full", "No space left on device"), ("read-only", "Read-only file system")]
)
def test_an_export_into_a_full_or_read_only_folder_exits_2_and_keeps_the_family(
    trained_run, exported_model, tmp_path, monkeypatch, capsys, mounted, kind, reason
):
    # The bug: a traceback (exit 3) for either.
    from pneumocnn import export

    _passing(monkeypatch)
    output = mounted(kind, exported_model, spare=65_536)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    argv = [str(trained_run), "--output-dir", str(output), "--calibration-images", "8"]
    assert export.main(argv) == 2
    error = capsys.readouterr().err
    assert reason in error and "Traceback" not in error and "--output-dir" in error
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before


def test_a_calibration_on_a_full_disk_exits_2_and_keeps_the_family(
    exported_model, tmp_path, capsys, mounted
):
    # The bug: a traceback (exit 3), the family intact.
    from pneumocnn import evaluate

    folder = mounted("full", exported_model)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    site = _site(tmp_path / "site", 10)
    assert evaluate.main([str(folder / "pneumocnn_int8.tflite"), "--calibrate-on", str(site)]) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "Traceback" not in error
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_a_run_calibration_on_a_full_disk_exits_2_and_keeps_threshold_json(
    trained_run, tmp_path, capsys, monkeypatch
):
    import errno

    from pneumocnn import evaluate
    from pneumocnn.adaptation import calibration

    run = _site_calibrated_run(trained_run, tmp_path)
    before = (run / "threshold.json").read_bytes()
    site = _site(tmp_path / "site", 10)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "threshold.json"))

    monkeypatch.setattr(calibration, "write_threshold", full)
    assert evaluate.main([str(run), "--calibrate-on", str(site)]) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "Traceback" not in error
    assert (run / "threshold.json").read_bytes() == before
