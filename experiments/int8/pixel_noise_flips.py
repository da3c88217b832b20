"""How many decisions flip when every pixel moves by at most one grey level?

A client that decodes the JPEG with another library, or resizes with another filter (MediaPipe,
a browser canvas, Android's Bitmap scaling), hands the model pixels that differ from
`pneumocnn.data.images.load_image`'s by a grey level or so. This measures the ceiling that sets on
any such client's agreement with `pneumocnn.predict`: for each film of a folder, the model's
decision on the film as loaded, then on `--draws` seeded copies with independent noise of -1, 0 or
+1 grey level per pixel (clipped to 0-255). Reported: the share of films whose decision flips in at
least one draw, the mean share per draw, the mean and largest change of P(pneumonia), and how close
to the threshold the flipping films lie. Writes nothing; prints one JSON line per model.

Example:

    python experiments/int8/pixel_noise_flips.py --data-dir ../shared/chest_xray/test
    python experiments/int8/pixel_noise_flips.py --data-dir ../shared/chest_xray/test \\
        --model saved_models/pneumocnn_int8.tflite saved_models/pneumocnn.keras
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from pneumocnn.core.locations import default_model
from pneumocnn.core.task import decide, pneumonia_probability
from pneumocnn.data.images import load_images
from pneumocnn.data.scan import require_inputs
from pneumocnn.evaluation.stability import grey_level_noise
from pneumocnn.runtime.runners import open_model


def flips(model, images: np.ndarray, draws: int, seed: int) -> dict[str, float]:
    """The decision flips of `model` under one-grey-level pixel noise on `images` (raw 0-255)."""
    base = model.predict_proba(images)
    labels = np.array(decide(base, model.threshold, model.class_names))
    p_base = pneumonia_probability(base)
    flipped = np.zeros((draws, len(images)), bool)
    changes = np.zeros((draws, len(images)))
    for draw, noisy in enumerate(grey_level_noise(images, draws, seed)):
        probabilities = model.predict_proba(noisy)
        decisions = np.array(decide(probabilities, model.threshold, model.class_names))
        flipped[draw] = decisions != labels
        changes[draw] = np.abs(pneumonia_probability(probabilities) - p_base)
    ever = flipped.any(axis=0)
    distance = np.abs(p_base - model.threshold)
    return {
        "films": int(len(images)),
        "draws": draws,
        "threshold": round(float(model.threshold), 4),
        "flip_in_any_draw": round(float(ever.mean()), 4),
        "flip_per_draw": round(float(flipped.mean()), 4),
        "mean_abs_change": round(float(changes.mean()), 4),
        "max_abs_change": round(float(changes.max()), 4),
        "films_within_0.05_of_threshold": int(np.sum(distance <= 0.05)),
        "largest_distance_of_a_flipping_film": round(float(distance[ever].max()), 4)
        if ever.any()
        else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="a folder of films (searched deeply)")
    parser.add_argument("--model", nargs="+", help="model files (default: the shipped int8)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = [str(path) for path in require_inputs([args.data_dir])]
    for path in args.model or [default_model("int8")]:
        model = open_model(path)
        images, _, skipped = load_images(files, model.image_size)
        if skipped:
            print(f"skipped unreadable files: {skipped}", file=sys.stderr)
        print(json.dumps({"model": str(path), **flips(model, images, args.draws, args.seed)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
