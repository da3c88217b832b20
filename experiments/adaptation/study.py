"""The adaptation study: recipes compared by patient-grouped cross-validation within the
development half of the test split.

Each row is a file `experiments/adaptation/rows/<name>.json` of `AdaptConfig` fields (the rest
take their defaults). For each row and seed, the package's own `out_of_fold` fine-tunes the
shipped model once per patient fold of `<data-dir>/test` (on the other folds' films and the
training films mixed in) and scores the held-out fold, so every film is scored by a model that
never learnt from its patient. Each fold's scores are saved as it finishes
(`results/partial/<row>-s<seed>.json`), and the whole row and seed as
`results/<row>-s<seed>.json`: a killed study resumes where it stopped. `tables.py` makes the
tables from the saved results.

Usage:

    python experiments/adaptation/study.py default bn_trainable --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from pneumocnn.adaptation.adapt import resolve_base, training_root
from pneumocnn.adaptation.crossval import out_of_fold
from pneumocnn.adaptation.finetune import training_mix
from pneumocnn.adaptation.site import load_site
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.files import write_text_atomic
from pneumocnn.data.folders import find_dataset
from pneumocnn.data.split import prepare_split

HERE = Path(__file__).resolve().parent
ROWS, RESULTS = HERE / "rows", HERE / "results"
PARTIAL = RESULTS / "partial"


def recipe_of(row: str, seed: int) -> AdaptConfig:
    """The row's recipe, with this seed."""
    fields = json.loads((ROWS / f"{row}.json").read_text())
    return AdaptConfig.from_dict({**fields, "seed": seed})


def run_one(row: str, seed: int, base, site, config, split, root, tag: str = "") -> None:
    """Cross-validates one row and seed, saving each fold as it finishes."""
    name = f"{tag}-{row}" if tag else row
    target = RESULTS / f"{name}-s{seed}.json"
    if target.exists():
        logging.info("%s exists; skipped", target.name)
        return
    recipe = recipe_of(row, seed)
    partial = PARTIAL / f"{name}-s{seed}.json"
    saved = json.loads(partial.read_text()) if partial.exists() else {"folds": {}}
    done = {int(k): np.asarray(v) for k, v in saved["folds"].items()}

    def save_fold(fold: int, held_out: np.ndarray, scores: np.ndarray) -> None:
        saved["folds"][str(fold)] = np.round(scores, 6).tolist()
        write_text_atomic(partial, json.dumps(saved))

    started = time.perf_counter()
    mix = training_mix(config, split, root, recipe.training_films, recipe.seed)
    probabilities, folds = out_of_fold(
        base.keras_path, config, recipe, site, mix, on_fold=save_fold, done=done
    )
    result = {
        "row": row,
        "tag": tag,
        "seed": seed,
        "recipe": recipe.to_dict(),
        "model": base.described,
        "files": [Path(path).name for path in site.paths],
        "labels": site.labels.tolist(),
        "patients": site.patients,
        "folds": folds.tolist(),
        "probabilities": np.round(probabilities, 6).tolist(),
        "training_films": int(len(mix.labels)),
        "seconds": round(time.perf_counter() - started, 1),
        "resumed_folds": sorted(done),
    }
    write_text_atomic(target, json.dumps(result) + "\n")
    partial.unlink(missing_ok=True)
    logging.info("Saved %s (%.0f s)", target.name, result["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="Row names (files in rows/).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--model", default="saved_models", help="The model to adapt.")
    parser.add_argument("--data-dir", default="../shared/chest_xray")
    parser.add_argument(
        "--tag",
        default="",
        help="Prefix of the result names, for another model (e.g. subtype for "
        "saved_models/pneumocnn_subtype.json).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    PARTIAL.mkdir(parents=True, exist_ok=True)
    base = resolve_base(args.model)
    data = Path(args.data_dir)
    root = find_dataset(training_root(base, str(data), data / "test")).root
    config = base.config.__class__.from_dict({**base.config.to_dict(), "data_dir": str(root)})
    split = prepare_split(config, find_dataset(root))
    site = load_site(data / "test", config.task, base.class_names, config.image_size)
    for seed in args.seeds:  # every row at a seed before the next seed: rows fill evenly
        for row in args.rows:
            run_one(row, seed, base, site, config, split, root, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
