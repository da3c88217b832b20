"""Does adapting with int8-sized rounding noise let the adapted subtype family pass the export?

`pneumocnn.adapt` of the subtype family wrote a family in 2 of 6 runs
(`experiments/adaptation/export_rate.py`): its three-class int8 agreement sits around the 99%
bar. Three more epochs with rounding noise removed a quarter of two refused runs' flips
(`quant_noise_finetune.py`, beside this script). This runs the command as a user would, but
with every fine-tuning (the fold models and the final one) trained through
`quant_noise_finetune.training_twin`: uniform noise one int8 step wide (steps measured on the
export's 600 calibration films, on the model before fine-tuning) after the input scaling, every
ReLU and the pooling, in training only. Saves for each seed whether a family was written, the
int8 agreement, the threshold and the out-of-fold figures the command printed, as
`results/noisy_adapt_rate/<family>-s<seed>.json` (one file as each run finishes; a killed
study resumes). A probe: the package's adaptation has no such option.

    .venv/bin/python experiments/int8/noisy_adapt_rate.py saved_models/pneumocnn_subtype.json \\
        --site-dir ../shared/chest_xray/test --seeds 1 2 3 4 5 6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from quant_noise_finetune import int8_steps, noise_points, training_twin  # beside this script

import pneumocnn.adaptation.finetune as finetune
from pneumocnn.adaptation.adapt import RUN_DIR, adapt, resolve_base, training_root
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.files import write_text_atomic
from pneumocnn.core.run_folder import ADAPT_CALIBRATION_IMAGES, read_threshold_record
from pneumocnn.data.folders import find_dataset
from pneumocnn.data.split import prepare_split
from pneumocnn.edge.convert import representative_images
from pneumocnn.edge.parity import ParityError

RESULTS = Path(__file__).resolve().parent / "results" / "noisy_adapt_rate"
AGREEMENT = re.compile(r"decisions agree on ([0-9.]+)%")


def noisy_fitting(calibration, strength: float, seed: int):
    """`finetune.fitting_model`, with rounding noise after every noise point."""
    plain = finetune.fitting_model

    def fitting_model(model):
        fitting = plain(model)
        steps = int8_steps(fitting, calibration, noise_points(fitting))
        return training_twin(fitting, steps, strength, seed)

    return fitting_model


def run_one(model: str, site_dir: str, seed: int) -> dict:
    """One run of the command with noisy fine-tuning; what it wrote or why it refused."""
    recipe = dataclasses.replace(AdaptConfig(), seed=seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="noisy-adapt-") as scratch:
        output = Path(scratch) / "adapted"
        try:
            metadata = adapt(model, site_dir, output, recipe)
        except ParityError as error:
            found = AGREEMENT.search(str(error))
            record = read_threshold_record(output / RUN_DIR)
            return {
                "exported": False,
                "agreement": float(found.group(1)) / 100 if found else None,
                "threshold": record["threshold"],
                "out_of_fold": record.get("calibration", {}).get("achieved"),
                "seconds": round(time.perf_counter() - started),
            }
        finally:
            shutil.rmtree(output, ignore_errors=True)
    return {
        "exported": True,
        "agreement": metadata["parity"]["agreement"],
        "pneumonia_agreement": metadata["parity"].get("pneumonia_agreement"),
        "threshold": metadata["threshold"],
        "out_of_fold": (metadata.get("calibration") or {}).get("achieved"),
        "seconds": round(time.perf_counter() - started),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="The family's .json.")
    parser.add_argument("--site-dir", required=True, help="The site's labelled films.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--strength", type=float, default=1.0, help="Noise width in int8 steps.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base = resolve_base(args.model)
    dataset = find_dataset(training_root(base, None, Path(args.site_dir)))
    split = pd.read_csv(base.split) if base.split else prepare_split(base.config, dataset)
    calibration = representative_images(
        split,
        dataset.root,
        base.config.image_size,
        ADAPT_CALIBRATION_IMAGES[base.config.task],
        base.config.seed,
    )
    finetune.fitting_model = noisy_fitting(calibration, args.strength, base.config.seed)
    family = Path(args.model).stem
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        target = RESULTS / f"{family}-s{seed}.json"
        if target.exists():
            logging.info("%s exists; skipped", target.name)
            continue
        row = {"family": family, "strength": args.strength, "seed": seed}
        row.update(run_one(args.model, args.site_dir, seed))
        write_text_atomic(target, json.dumps(row, indent=1))
        logging.info("%s: %s", target.name, json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
