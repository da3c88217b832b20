"""Averages training runs that share one split into one model, written as a run folder.

An ensemble inside one `.tflite` is the one the shipped file may hold (issue 15: under 500 KB).
This builds it from finished runs: one Keras model whose output, named `predictions`, is the
mean of the members' outputs (each member whole inside it, Rescaling included, so it still takes
raw 0-255 pixels), and writes it as a run folder (the first member's `config.json`, `split.csv`
and `summary.json`, the summary naming the members) so that `pneumocnn.evaluate` and
`pneumocnn.export` take it as they take any run: site calibration, the int8 export and its parity
check on the members' common validation split. A probe, not a training recipe: Grad-CAM does not
look inside the members.

The members must share the split (train the later ones with `--split-seed` set to the first
one's seed): otherwise one member's validation patients are in another's training set, and the
ensemble's validation figures, threshold and parity check would be scored on films it trained on.

Example:

    python -m pneumocnn.train --seed 1 --data-dir ../shared/chest_xray --output-dir runs/ens-s1
    python -m pneumocnn.train --seed 2 --split-seed 1 --data-dir ../shared/chest_xray \\
        --output-dir runs/ens-s2
    python experiments/int8/ensemble_run.py runs/ens-s1 runs/ens-s2 --output-dir runs/ensemble
    python -m pneumocnn.evaluate runs/ensemble --data-dir ../shared/chest_xray --split val
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import keras
import pandas as pd

from pneumocnn.core.run_folder import CONFIG_FILE, MODEL_FILE, SPLIT_FILE, SUMMARY_FILE
from pneumocnn.network.model import OUTPUT_LAYER, load_model


def ensemble(models: list[keras.Model]) -> keras.Model:
    """One model averaging `models` (same input shape and output), named like a single one."""
    image = keras.Input(shape=models[0].inputs[0].shape[1:], name="image")
    outputs = []
    for index, member in enumerate(models):
        member.name = f"member{index + 1}"
        outputs.append(member(image))
    mean = keras.layers.Average(name=OUTPUT_LAYER)(outputs)
    return keras.Model(image, mean, name="pneumocnn_ensemble")


def check_members(folders: list[Path]) -> None:
    """Raises SystemExit unless every folder is a finished run with the first one's split."""
    first = None
    for folder in folders:
        for name in (CONFIG_FILE, SPLIT_FILE, MODEL_FILE, SUMMARY_FILE):
            if not (folder / name).is_file():
                raise SystemExit(
                    f"'{folder}' has no {name}. Received: run_dirs={[str(f) for f in folders]}. "
                    "Pass finished folders of `python -m pneumocnn.train`."
                )
        split = pd.read_csv(folder / SPLIT_FILE)[["path", "subset", "label"]]
        if first is None:
            first = split
        elif not split.equals(first):
            raise SystemExit(
                f"'{folder}' was split differently from '{folders[0]}'. Received: "
                f"run_dirs={[str(f) for f in folders]}. Train every member on one split: "
                "`--split-seed` set to the first member's seed."
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="Finished runs, one split.")
    parser.add_argument("--output-dir", type=Path, required=True, help="The run folder to write.")
    args = parser.parse_args()
    if len(args.run_dirs) < 2:
        raise SystemExit(f"An ensemble needs two runs or more. Received: {args.run_dirs}.")
    check_members(args.run_dirs)
    if args.output_dir.exists():
        raise SystemExit(
            f"'{args.output_dir}' exists. Received: --output-dir {args.output_dir}. Pass a new "
            "folder (an ensemble run is written once)."
        )
    args.output_dir.mkdir(parents=True)
    first = args.run_dirs[0]
    for name in (CONFIG_FILE, SPLIT_FILE):
        shutil.copy(first / name, args.output_dir / name)
    summary = json.loads((first / SUMMARY_FILE).read_text())
    summary["ensemble_of"] = [str(folder) for folder in args.run_dirs]
    summary["member_val_auc"] = [
        json.loads((folder / SUMMARY_FILE).read_text()).get("val_auc")
        for folder in args.run_dirs
    ]
    (args.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    model = ensemble([load_model(folder / MODEL_FILE) for folder in args.run_dirs])
    model.save(args.output_dir / MODEL_FILE)
    print(f"Wrote {args.output_dir}: the mean of {len(args.run_dirs)} members")


if __name__ == "__main__":
    main()
