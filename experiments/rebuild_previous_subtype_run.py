"""Rebuilds a run folder for the previous subtype model, so the current export can re-export it.

The shift study's recipes gave no subtype model whose int8 form holds the export's 99% parity bar
(their three-class decisions flip on BACTERIAL/VIRAL near-ties: 98.1-98.9%), so `saved_models/`
keeps the previous subtype model (commit a0bcaf4, 160 px, validation-chosen threshold), re-exported
with the current export (batch of 1, RGB variant, embedded metadata, input guard, model card).
Its run folder was not kept; this rebuilds one from the model's own metadata: `config.json`, the
patient-grouped split (the same seeded code), `best.keras`, the Youden threshold it shipped with,
and the summary fields the export reads.

    python experiments/rebuild_previous_subtype_run.py OLD_JSON OLD_KERAS RUN_DIR
    python -m pneumocnn.export RUN_DIR --output-dir saved_models --calibration-images 1000
"""

import json
import shutil
import sys
from pathlib import Path

from pneumocnn import data
from pneumocnn.config import Config


def main(metadata_path: str, keras_path: str, run_dir: str) -> None:
    metadata = json.loads(Path(metadata_path).read_text())
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    values = {**metadata["config"], "data_dir": "../shared/chest_xray", "output_dir": str(run)}
    known = set(Config().to_dict())
    pinned = {
        "framing_strength": 0.0,
        "gamma_strength": 0.0,
        "input_normalization": "none",
        "lr_schedule": "plateau",
        "weight_averaging": "none",
    }
    config = Config.from_dict({**pinned, **{k: v for k, v in values.items() if k in known}})
    config.save(run / "config.json")
    dataset = data.find_dataset(config.data_dir)
    data.prepare_split(config, dataset).to_csv(run / "split.csv", index=False)
    shutil.copy(keras_path, run / "best.keras")
    (run / "threshold.json").write_text(
        json.dumps(
            {
                "threshold": metadata["threshold"],
                "rule": metadata.get("threshold_rule", "youden"),
                "chosen_on": "val",
                "images": metadata["training_data"]["val_images"],
                "model": "best.keras",
            }
        )
        + "\n"
    )
    summary = {
        "class_names": metadata["class_names"],
        **metadata["training"],
        **{
            k: metadata["training_data"][k]
            for k in ("train_images", "val_images", "unreadable_files")
        },
    }
    (run / "summary.json").write_text(json.dumps(summary) + "\n")
    print(f"Rebuilt {run}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
