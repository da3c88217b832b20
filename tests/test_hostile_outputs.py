"""Regressions of the issue "Hostile inputs and faults, round two", what comes out: names that
printed alike, CSV formulas, thresholds that printed as 0 or 1, standard output closed, full or
gone, messages of a gigabyte, names in metadata that lead outside the model's folder, a guard
limit given as text, the RGB variant as the model, and folder entries that are not images. Each
test is named for the bug it pins."""

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SHIPPED, SHIPPED_INT8, film_file, requires_shipped_model, shipped_copy
from pneumocnn import cli, predict
from pneumocnn.core.files import csv_path, quoted_name, unquote_name
from pneumocnn.core.metadata import METADATA_FILE

ROOT = Path(__file__).resolve().parents[1]


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


@requires_shipped_model
def test_two_files_whose_escaped_names_collided_get_one_distinct_reversible_name_each(
    tmp_path, capsys
):
    # The bug: "a<newline>b.jpeg" (PNEUMONIA) and a file literally named "a\nb.jpeg" (NORMAL)
    # both came out as ".../a\nb.jpeg" in CSV and JSON.
    folder = tmp_path / "films"
    real = [film_file(folder / "a\nb.jpeg", 1, 0), film_file(folder / "a\\nb.jpeg", 0, 1)]
    real.append(film_file(folder / os.fsdecode(b"c-\xff\x1b[2J.png"), 1, 2))
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


@requires_shipped_model
def test_no_csv_cell_starts_a_spreadsheet_formula(tmp_path, capsys, monkeypatch):
    # The bug: a file named "=cmd|calc.jpeg" became a cell starting with "=".
    monkeypatch.chdir(tmp_path)
    for name in ("=cmd|calc.jpeg", "+1.png", "-2.png", "@sum.png"):
        film_file(tmp_path / name)
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


@requires_shipped_model
def test_predict_into_a_pipe_whose_reader_left_stops_quietly_with_141(tmp_path):
    # The bug: `predict | head -1` ended in a BrokenPipeError traceback (exit 3).
    film = film_file(tmp_path / "a.png")
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


@requires_shipped_model
@pytest.mark.parametrize("where", ["closed", "full"])
def test_predict_with_standard_output_closed_or_full_exits_2_naming_it(tmp_path, where):
    # The bug: `predict >&-` and `predict > /dev/full` ended in tracebacks (exit 3).
    film = film_file(tmp_path / "a.png")
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
# Names and values in metadata


@requires_shipped_model
@pytest.mark.parametrize("kind", ["relative", "absolute", "link"])
def test_a_labels_file_outside_the_model_folder_is_refused_unread(tmp_path, capsys, kind):
    # The bug: files.labels = "../../../../etc/passwd" printed the whole file in the error of
    # predict and web build.
    from pneumocnn import web

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret\n")
    folder = shipped_copy(tmp_path / "model")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    if kind == "link":
        (folder / metadata["files"]["labels"]).unlink()
        os.symlink(secret, folder / metadata["files"]["labels"])
    else:
        metadata["files"]["labels"] = (
            os.path.relpath(secret, folder) if kind == "relative" else str(secret)
        )
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    film = film_file(tmp_path / "a.png")
    assert predict.main([str(film), "--model", str(folder / "pneumocnn_int8.tflite")]) == 2
    error = capsys.readouterr().err
    assert "outside its folder" in error and "root:x" not in error
    with pytest.raises(web.BuildError) as build_error:
        web.build(tmp_path / "site", folder / "pneumocnn_int8.tflite")
    assert "root:x" not in str(build_error.value)


@requires_shipped_model
def test_a_guard_limit_given_as_a_string_names_the_limit_and_the_file(tmp_path, capsys):
    # The bug: `"min_side": "32"` ended in a TypeError traceback.
    folder = shipped_copy(tmp_path / "model")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata["guard"]["limits"]["min_side"] = "32"
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    film = film_file(tmp_path / "a.png")
    assert predict.main([str(film), "--model", str(folder / "pneumocnn_int8.tflite")]) == 2
    error = capsys.readouterr().err
    assert "'min_side'" in error and "'32'" in error and str(folder) in error


@requires_shipped_model
def test_the_rgb_variant_given_as_the_model_names_the_grayscale_file(tmp_path, capsys):
    # The bug: the table header, then "Cannot set tensor: Dimension mismatch".
    film = film_file(tmp_path / "a.png")
    status = predict.main([str(film), "--model", str(SHIPPED / "pneumocnn_rgb_int8.tflite")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert "RGB variant" in captured.err and str(SHIPPED_INT8) in captured.err


# ---------------------------------------------------------------------------------------------
# Folder walks: what is not named like an image is not an input, whatever it is


@requires_shipped_model
def test_a_socket_fifo_or_dangling_link_not_named_like_an_image_is_skipped_like_notes(
    tmp_path, capsys
):
    # The bug: each became an unreadable row and exit 1, while a regular notes.txt was skipped.
    folder = tmp_path / "films"
    film_file(folder / "a.png")
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
