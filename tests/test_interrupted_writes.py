"""Regressions of the issue "Hostile inputs and faults, round two", what is written: a failed
export that replaced a site calibration or left an empty folder, an export killed between its
renames, a read-only or full disk, and calibrations on too few films, on training data, or
beside another. A failed command changes nothing it was not asked to change. Each test is named
for the bug it pins."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import dead_process_id, film_file, killed_after_the_first_rename, site_folder
from pneumocnn import predict
from pneumocnn.core.metadata import METADATA_FILE, MetadataError, load_metadata

# ---------------------------------------------------------------------------------------------
# Calibration: too few films, the training folder, a second calibration


def test_calibration_on_one_film_per_class_is_refused(exported_model, tmp_path, capsys):
    # The bug: it wrote "sensitivity 1.0000 [1.0000-1.0000]" into the family and its card.
    from pneumocnn import evaluate

    folder = tmp_path / "model"
    shutil.copytree(exported_model, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    site = site_folder(tmp_path / "site", 1)
    assert evaluate.main([str(folder / "pneumocnn_int8.tflite"), "--calibrate-on", str(site)]) == 2
    assert "at least 10 readable NORMAL" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_calibration_on_the_train_split_of_a_data_set_is_refused(trained_run, tmp_path, capsys):
    # The bug: `--calibrate-on .../chest_xray/train` was accepted.
    from pneumocnn import evaluate

    root = tmp_path / "chest_xray"
    site_folder(root / "train", 10)
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
    site = site_folder(tmp_path / "site", 10)
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
    assert predict.main([str(film_file(tmp_path / "a.png")), "--model", str(run)]) == 2
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


def test_an_export_killed_between_its_renames_is_completed_by_the_next_reader(
    trained_run, tmp_path, monkeypatch
):
    # The bug: the new int8 stood beside the old metadata (the previous int8 lost; predict
    # refused it on its SHA until a re-export); export had no roll-back or roll-forward.
    from pneumocnn.edge.export import export
    from pneumocnn.runtime.lite import LiteModel

    _passing(monkeypatch)
    run = _site_calibrated_run(trained_run, tmp_path)
    output = tmp_path / "out"
    export(run, output, calibration_images=8)
    with killed_after_the_first_rename(monkeypatch) as moved:
        export(run, output, calibration_images=8, target_sensitivity=0.5)
    with pytest.raises(MetadataError, match="SHA-256"):  # what a reader saw before
        load_metadata(output / METADATA_FILE, moved[0])
    (output / ".export-pneumocnn" / "owner.pid").write_text(f"{dead_process_id()}\n")
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
    site = site_folder(tmp_path / "site", 10)
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
    site = site_folder(tmp_path / "site", 10)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "threshold.json"))

    monkeypatch.setattr(calibration, "write_threshold", full)
    assert evaluate.main([str(run), "--calibrate-on", str(site)]) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "Traceback" not in error
    assert (run / "threshold.json").read_bytes() == before
