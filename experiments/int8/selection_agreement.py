"""Does an adapted model's int8 agreement on films other than the validation split foretell the
export's check?

`pneumocnn.adapt` of the subtype family writes a family in about one run of two: the export's
check (int8 and float decisions agree on at least 99% of the 1,044 validation films) refuses the
rest (`experiments/adaptation/export_rate.py`). A fine-tuning is about a minute, so the command
could train the final model again with another seed when its int8 conversion strays, if it
could tell which models stray without looking at the check's own films (choosing on the check
would make its 99% a best-of-N). This trains the final model of the command's default recipe
for each seed (the fold models are not needed: the threshold is fixed here), converts it as the
export does (equalized, the export's calibration films), and measures the int8-vs-float
agreement of its decisions (labels not used) on: the validation films (the check's), the site's
films (which the final model learnt from), and 1,500 training films outside the calibration
sample. Saves one line per seed to `results/selection_agreement.jsonl` as each finishes (a killed
study resumes at the next seed).

    .venv/bin/python experiments/int8/selection_agreement.py saved_models/pneumocnn_subtype.json \\
        --site-dir ../shared/chest_xray/test --seeds 1 2 3 4 5 6 7 8
    .venv/bin/python experiments/int8/selection_agreement.py --table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from subtype_parity import int8_probabilities  # beside this script

from pneumocnn.adaptation.adapt import resolve_base, training_root
from pneumocnn.adaptation.finetune import fine_tune, training_mix
from pneumocnn.adaptation.site import check_site_folder, load_site, sample_patients
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.run_folder import ADAPT_CALIBRATION_IMAGES
from pneumocnn.core.task import class_probabilities, decide
from pneumocnn.data.folders import find_dataset
from pneumocnn.data.split import load_split, prepare_split, training_samples
from pneumocnn.edge.convert import convert, fixed_batch_saved_model, pin_input_range
from pneumocnn.edge.equalize import equalize_activations
from pneumocnn.runtime.runners import keras_probabilities

RESULTS = Path(__file__).resolve().parent / "results" / "selection_agreement.jsonl"
# A fixed threshold for every seed: the adapted thresholds of the export-rate study ran from
# 0.19 to 0.56; the three-class flips this probe is about are bacterial-vs-viral ones.
THRESHOLD = 0.4
OTHER_TRAINING_FILMS = 1500


def agreement(reference: np.ndarray, quantized: np.ndarray, names: list[str]) -> float:
    """The share of films whose three-class decision int8 keeps."""
    float_calls = decide(class_probabilities(reference), THRESHOLD, names)
    int8_calls = decide(class_probabilities(quantized), THRESHOLD, names)
    return float(np.mean(np.array(float_calls) == np.array(int8_calls)))


def run_seed(model: str, site_dir: str, seed: int) -> dict:
    """Trains the final model for `seed`, converts it, and measures its agreements."""
    started = time.perf_counter()
    recipe = dataclasses.replace(AdaptConfig(), seed=seed)
    base = resolve_base(model)
    config = base.config
    folder = check_site_folder(site_dir)
    site = load_site(folder, config.task, base.class_names, config.image_size)
    root = find_dataset(training_root(base, None, folder)).root
    config = dataclasses.replace(config, data_dir=str(root.resolve()))
    split = pd.read_csv(base.split) if base.split else prepare_split(config, find_dataset(root))
    mix = training_mix(config, split, root, recipe.training_films, recipe.seed)
    learn = sample_patients(site, recipe.site_films, recipe.seed * 100 + 99)
    adapted = fine_tune(base.keras_path, config, recipe, learn, mix, recipe.seed * 100 + 99)
    count = ADAPT_CALIBRATION_IMAGES[config.task]
    films = training_samples(split, root, config.image_size, {"calibration": count}, config.seed)
    calibration = pin_input_range(films["calibration"])
    train = split[split["subset"] == "train"]
    other = train.sample(OTHER_TRAINING_FILMS + count, random_state=seed + 1000)
    other = load_split(other, "train", config.image_size, root).images[:OTHER_TRAINING_FILMS]
    sets = {
        "validation": load_split(split, "val", config.image_size, root).images,
        "site": site.images,
        "training": other,
    }
    with tempfile.TemporaryDirectory() as scratch:
        equalized = equalize_activations(adapted, calibration).model
        saved = fixed_batch_saved_model(equalized, Path(scratch) / "saved_model")
        int8 = convert(saved, calibration)
        names = list(base.class_names)
        row = {"model": model, "seed": seed, "threshold": THRESHOLD}
        for name, images in sets.items():
            row[name] = agreement(
                keras_probabilities(adapted, images),
                int8_probabilities(int8, images, scratch),
                names,
            )
            row[f"{name}_films"] = int(len(images))
    row["seconds"] = round(time.perf_counter() - started)
    return row


def table() -> None:
    """Prints the saved rows: each seed's agreement on the validation films and on the other
    training films, their mean and spread over seeds against the spread a binomial draw of that
    many films gives at the mean (were every model alike), and how the two columns track each
    other. (The site's films, which the final model learnt from, are in the saved rows only.)"""
    rows = (
        [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    )
    rows.sort(key=lambda row: row["seed"])
    print("| seed | validation films | other training films |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['seed']} | {row['validation']:.2%} | {row['training']:.2%} |")
    if len(rows) < 3:
        return
    for name in ("validation", "training"):
        shares = np.array([row[name] for row in rows])
        films = rows[0][f"{name}_films"]
        binomial = np.sqrt(shares.mean() * (1 - shares.mean()) / films)
        print(
            f"{name}: mean {shares.mean():.2%}, sd over seeds {shares.std(ddof=1):.2%} "
            f"(a binomial draw of {films} films: {binomial:.2%}); {np.sum(shares >= 0.99)} of "
            f"{len(shares)} at 99% or more"
        )
    both = np.array([[row["validation"], row["training"]] for row in rows])
    print(f"Pearson r, validation vs other training films: {np.corrcoef(both.T)[0, 1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="saved_models/pneumocnn_subtype.json")
    parser.add_argument("--site-dir", default="../shared/chest_xray/test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--table", action="store_true", help="Print the saved rows only.")
    args = parser.parse_args()
    if args.table:
        table()
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    done = set()
    if RESULTS.exists():
        done = {json.loads(line)["seed"] for line in RESULTS.read_text().splitlines()}
    for seed in args.seeds:
        if seed in done:
            continue
        row = run_seed(args.model, args.site_dir, seed)
        print(json.dumps(row), flush=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
    table()


if __name__ == "__main__":
    main()
