"""Adds the per-group intervals to the shipped models' calibration records (and cards).

The shipped models were calibrated on the development half (`evaluate --calibrate-on`) before the
calibration record gave each group's share of right calls a patient-bootstrap interval. This
script scores each shipped int8 model on its calibration folder again, as the calibration does
(`pneumocnn.data.split.load_evaluation_images`, `pneumocnn.runtime.runners.predict_probabilities`,
`pneumocnn.evaluation.uncertainty.uncertainty_of` at the stored threshold), checks that the
figures it recomputes are the recorded ones (threshold, achieved figures, intervals, group
shares), and only then writes the groups with their intervals into the record and regenerates
the card (`pneumocnn.edge.family.describe_again`: the model files are untouched, their checksums
stay). Nothing is chosen here: the threshold stays.

Usage (from the project root):

    .venv/bin/python experiments/tools/record_group_intervals.py --data-dir ../shared/chest_xray
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pneumocnn.core.locations import default_model
from pneumocnn.core.run_folder import resolve_source
from pneumocnn.data.split import load_evaluation_images
from pneumocnn.edge.family import describe_again, read_family
from pneumocnn.evaluation.metrics import pneumonia_figures
from pneumocnn.evaluation.uncertainty import uncertainty_of
from pneumocnn.runtime.runners import predict_probabilities


def _same(recorded, measured, where: str) -> None:
    """Refuses to write when a recomputed figure is not the recorded one."""
    if isinstance(recorded, dict):
        for key, value in recorded.items():
            _same(value, measured.get(key), f"{where}.{key}")
    elif isinstance(recorded, list):
        for index, value in enumerate(recorded):
            _same(value, measured[index], f"{where}[{index}]")
    elif not math.isclose(recorded, measured, rel_tol=0, abs_tol=1e-9):
        raise SystemExit(f"{where}: recorded {recorded}, measured {measured}; nothing written.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/chest_xray")
    args = parser.parse_args()
    for task in ("binary", "subtype"):
        family = read_family(default_model("metadata", task))
        record = family.metadata["calibration"]
        model = family.folder / record["model"]
        folder = Path(args.data_dir) / record["folder"]
        source = resolve_source(model)
        images, labels, _, _, paths = load_evaluation_images(source, "all", folder)
        probabilities = predict_probabilities(model, images)
        spread = uncertainty_of(labels, probabilities, record["threshold"], paths)
        _same(
            record["achieved"],
            pneumonia_figures(labels, probabilities, record["threshold"]),
            f"{task} achieved",
        )
        _same(record["intervals"], spread["intervals"], f"{task} intervals")
        _same(
            {
                name: {"films": row["films"], "recall": row["recall"]}
                for name, row in record["groups"].items()
            },
            spread["groups"],
            f"{task} groups",
        )
        describe_again(family, {"calibration": {**record, "groups": spread["groups"]}})
        shown = ", ".join(
            f"{name} {row['recall']:.3f} [{row['interval'][0]:.3f}-{row['interval'][1]:.3f}]"
            for name, row in spread["groups"].items()
        )
        print(f"{family.folder / family.files['metadata']}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
