"""Patient-bootstrap intervals for a subtype model's three-class figures on a test folder.

`python -m pneumocnn.evaluate MODEL --split test` gives intervals for the pneumonia-vs-NORMAL
figures only; this adds them for three-class accuracy, NORMAL recall and bacterial-vs-viral
accuracy (the likelier subtype of every pneumonia film, as `evaluate` counts it), resampling
patients with `pneumocnn.evaluation.uncertainty.bootstrap_intervals` (1,000 resamples). Each model
is scored at the threshold given after it (`.tflite` or `.keras`; its decision rule is
`pneumocnn.core.task.decide`).

    python experiments/tools/subtype_intervals.py --data-dir ../shared/chest_xray/test \\
        saved_models/pneumocnn_subtype_int8.tflite 0.68359375 runs/shipped-subtype/best.keras 0.6296
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pneumocnn.core.task import class_probabilities, decide
from pneumocnn.data.folders import patient_id, subtype_of
from pneumocnn.data.images import load_image
from pneumocnn.evaluation.uncertainty import bootstrap_intervals
from pneumocnn.runtime.lite import LiteModel

NAMES = ["NORMAL", "BACTERIAL", "VIRAL"]
SUBTYPES = {"bacteria": "BACTERIAL", "virus": "VIRAL"}


def probabilities(model_path: str, films: list[Path]) -> np.ndarray:
    """Class probabilities of a `.keras` or `.tflite` subtype model on raw films."""
    if model_path.endswith(".keras"):
        from pneumocnn.network.model import load_model  # TensorFlow: a .keras model only

        model = load_model(model_path)
        images = np.stack([load_image(film, model.input_shape[1]) for film in films])
        return class_probabilities(model.predict(images, verbose=0))
    model = LiteModel(model_path)
    size = model.metadata["image_size"]
    return model.predict_proba(np.stack([load_image(film, size) for film in films]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="A folder with NORMAL/ and PNEUMONIA/.")
    parser.add_argument("pairs", nargs="+", help="MODEL THRESHOLD [MODEL THRESHOLD ...]")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error(f"Pass MODEL THRESHOLD pairs. Received: {args.pairs}")

    films = sorted(Path(args.data_dir).rglob("*.jpeg"))
    truth = np.array(
        [
            "NORMAL" if film.parent.name == "NORMAL" else SUBTYPES[subtype_of(film)]
            for film in films
        ]
    )
    patients = [patient_id(film) for film in films]
    pneumonia = truth != "NORMAL"
    for model_path, threshold in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        probs = probabilities(model_path, films)
        calls = np.array(decide(probs, float(threshold), NAMES))
        likelier = np.where(probs[:, 1] >= probs[:, 2], "BACTERIAL", "VIRAL")

        def figures(index, calls=calls, likelier=likelier):
            ill = pneumonia[index]
            return {
                "three_class_accuracy": float(np.mean(calls[index] == truth[index])),
                "normal_recall": float(np.mean(calls[index][~ill] == "NORMAL")),
                "bacterial_vs_viral": float(np.mean(likelier[index][ill] == truth[index][ill])),
            }

        point = figures(np.arange(len(films)))
        intervals = bootstrap_intervals(figures, patients)
        print(f"{model_path} at {float(threshold):.4f} on {len(films)} films:")
        for name, value in point.items():
            low, high = intervals[name]
            print(f"  {name:22s} {value:.3f} [{low:.3f}-{high:.3f}]")


if __name__ == "__main__":
    main()
