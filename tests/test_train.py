import json

import pandas as pd

from helpers import REAL_DATA, flags, requires_real_data
from pneumocnn import train

ARTEFACTS = ("config.json", "split.csv", "history.csv", "best.keras", "summary.json")


@requires_real_data
def test_cli_trains_on_real_images_and_writes_every_artefact(tmp_path):
    run_dir = tmp_path / "run"
    status = train.main(
        flags(
            data_dir=REAL_DATA,
            output_dir=run_dir,
            limit_per_class=20,
            image_size=48,
            epochs=2,
            batch_size=8,
        )
    )
    assert status == 0
    for name in ARTEFACTS:
        assert (run_dir / name).is_file(), name
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 2
    assert {"val_auc", "val_sensitivity", "val_specificity", "epoch_seconds"} <= set(history)
    split = pd.read_csv(run_dir / "split.csv")
    assert list(split.columns) == ["path", "label", "patient", "subset"]
    assert len(split) == 40
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in (
        "best_epoch",
        "val_loss",
        "val_accuracy",
        "val_auc",
        "val_sensitivity",
        "val_specificity",
        "parameters",
        "images_per_second",
        "wall_seconds",
    ):
        assert summary[key] is not None, key
    assert summary["class_names"] == ["NORMAL", "PNEUMONIA"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_size"] == 48 and config["output_dir"] == str(run_dir)


def test_corrupt_image_is_skipped_counted_and_the_run_goes_on(make_dataset, tmp_path):
    root = make_dataset(patients=6, images_per_patient=2)
    (root / "train" / "PNEUMONIA" / "person99_virus_1.jpeg").write_bytes(b"\xff\xd8 garbage")
    run_dir = tmp_path / "run"
    status = train.main(
        flags(
            data_dir=root,
            output_dir=run_dir,
            image_size=32,
            epochs=1,
            batch_size=4,
            val_fraction=0.34,
        )
    )
    assert status == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["unreadable_files"] == 1
    assert summary["unreadable"][0]["path"].endswith("person99_virus_1.jpeg")
    assert summary["train_images"] + summary["val_images"] == 24


def test_missing_data_folder_fails_before_training_with_a_clear_message(tmp_path, capsys):
    status = train.main(["--data-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "r")])
    assert status == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_existing_run_folder_is_not_overwritten(make_dataset, tmp_path, capsys):
    root = make_dataset()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.keras").write_bytes(b"precious")
    status = train.main(["--data-dir", str(root), "--output-dir", str(run_dir)])
    assert status == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert (run_dir / "best.keras").read_bytes() == b"precious"
