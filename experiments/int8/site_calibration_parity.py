"""Does calibrating int8 on the site's own films keep an adapted model's decisions closer to
its float model's?

`pneumocnn.adapt` calibrates the int8 conversion with training films (600), and the export then
checks three-class agreement on the training split's validation films, which an adapted
subtype model misses about as often as it passes (98.56-99.23%, 99% needed). An adapted model
runs on the site's films, so their ranges might calibrate it better. For each adapted run folder
(`OUT/run` from `pneumocnn.adapt`), this converts the model as the export does (activation
equalization, uint8 in and out) with four calibration sets: the export's 600 training films,
those plus the site's films, 300 training films plus the site's films, and 1,200 training films;
and reports the three-class and pneumonia-call agreement with the float model on the validation
films and on the site's films (labels not used). Appends one JSON line per run and set to
`--output` (default `experiments/int8/results/site_calibration_parity.jsonl`). Writes no model.

    .venv/bin/python experiments/int8/site_calibration_parity.py OUT/run \\
        --site-dir ../shared/chest_xray/test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from subtype_parity import int8_probabilities  # beside this script

from pneumocnn.data.images import load_images
from pneumocnn.data.scan import require_inputs
from pneumocnn.edge.convert import convert, fixed_batch_saved_model, pin_input_range
from pneumocnn.edge.equalize import equalize_activations
from pneumocnn.edge.parity import check_parity
from pneumocnn.edge.prepare import prepare
from pneumocnn.runtime.runners import keras_probabilities

HERE = Path(__file__).resolve().parent


def agreement(float_probabilities, int8, threshold, names) -> tuple[float, float | None]:
    """Three-class and pneumonia-call agreement (labels are not used: any will do)."""
    labels = np.arange(len(float_probabilities)) % len(names)
    parity = check_parity(labels, float_probabilities, int8, threshold, names, strict=False)
    return parity["agreement"], parity.get("pneumonia_agreement")


def append_row(output: Path, row: dict) -> None:
    """Prints one result and appends it to the JSON-lines file `output`, so a killed run keeps
    what finished."""
    print(json.dumps(row), flush=True)
    with output.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="Adapted run folders (OUT/run).")
    parser.add_argument("--site-dir", required=True, help="The site's films.")
    parser.add_argument("--output", default=str(HERE / "results" / "site_calibration_parity.jsonl"))
    args = parser.parse_args(argv)
    site_paths = sorted(require_inputs([args.site_dir]))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        prepared = prepare(run, calibration_images=600)
        names, threshold = list(prepared.source.class_names), prepared.threshold
        site, _, _ = load_images(site_paths, prepared.config.image_size)
        sets = {
            "600 training films": prepared.calibration,
            "600 training films + site": pin_input_range(np.r_[prepared.calibration, site]),
            "300 training films + site": pin_input_range(np.r_[prepared.calibration[:300], site]),
            "1200 training films": prepare(run, calibration_images=1200).calibration,
        }
        float_site = keras_probabilities(prepared.keras_model, site)
        for name, calibration in sets.items():
            equalized = equalize_activations(prepared.keras_model, calibration).model
            with tempfile.TemporaryDirectory() as scratch:
                model = convert(
                    fixed_batch_saved_model(equalized, Path(scratch) / "sm"), calibration
                )
                val = int8_probabilities(model, prepared.val.images, Path(scratch))
                on_site = int8_probabilities(model, site, Path(scratch))
            row = {"run": str(run), "calibration": name}
            row["validation"], row["validation_pneumonia"] = agreement(
                prepared.float_probabilities, val, threshold, names
            )
            row["site"], row["site_pneumonia"] = agreement(float_site, on_site, threshold, names)
            append_row(output, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
