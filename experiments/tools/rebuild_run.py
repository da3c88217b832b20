"""Rebuilds a run folder for a shipped model, so the current export can re-export it.

A shipped model's run folder is not kept (runs are large and machine-local); this rebuilds one
from the model's own metadata: `config.json`, the patient-grouped split (the same seeded code),
`best.keras` (the shipped `.keras`, the trained model itself), and the summary fields the export
reads. With `--keep-threshold` it also writes the threshold the model shipped with (the previous
subtype model's validation-chosen one); without, the run has none, and the next step chooses it
(e.g. a site calibration with `evaluate RUN_DIR --calibrate-on DIR`).

Config fields the metadata lacks (a model older than them) take the values that reproduce its
recipe: no framing or gamma augmentation, no per-image standardisation, the plateau schedule, no
weight averaging.

    python experiments/tools/rebuild_run.py saved_models/pneumocnn.json \\
        saved_models/pneumocnn.keras runs/shipped-binary
    python experiments/tools/rebuild_run.py OLD_JSON OLD_KERAS runs/previous-subtype \\
        --keep-threshold
"""

import argparse
import json
import shutil
from pathlib import Path

from pneumocnn.core.config import Config
from pneumocnn.core.run_folder import (
    CONFIG_FILE,
    MODEL_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    write_threshold,
)
from pneumocnn.data.folders import find_dataset
from pneumocnn.data.split import prepare_split


def main(metadata_path: str, keras_path: str, run_dir: str, keep_threshold: bool) -> None:
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
    config.save(run / CONFIG_FILE)
    dataset = find_dataset(config.data_dir)
    prepare_split(config, dataset).to_csv(run / SPLIT_FILE, index=False)
    shutil.copy(keras_path, run / MODEL_FILE)
    if keep_threshold:
        write_threshold(
            run,
            metadata["threshold"],
            metadata.get("threshold_rule", "youden"),
            "val",
            metadata["training_data"]["val_images"],
        )
    summary = {
        "class_names": metadata["class_names"],
        **metadata["training"],
        **{
            k: metadata["training_data"][k]
            for k in ("train_images", "val_images", "unreadable_files")
        },
    }
    (run / SUMMARY_FILE).write_text(json.dumps(summary) + "\n")
    print(f"Rebuilt {run}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metadata", help="The model's metadata, e.g. saved_models/pneumocnn.json.")
    parser.add_argument("keras", help="The model's .keras file.")
    parser.add_argument("run_dir", help="The run folder to write.")
    parser.add_argument(
        "--keep-threshold",
        action="store_true",
        help="Write the model's stored threshold as the run's (chosen on validation).",
    )
    args = parser.parse_args()
    main(args.metadata, args.keras, args.run_dir, args.keep_threshold)
