"""How often does a model's call change between clients that read the same film differently?

A stock client decodes and resizes a film its own way: MediaPipe decodes JPEGs with its own
decoder and resizes with bilinear sampling without Pillow's antialiasing; a phone may re-encode
the photo of a film. For each model given and each film of a folder, this compares the call on
the film as `pneumocnn.predict` reads it with the call on the same film

- with one grey level of seeded noise on every pixel of the model input (`--draws` copies);
- re-encoded as JPEG at quality 90 and at quality 75 (the full-size gray film), then read as
  `pneumocnn.predict` reads it;
- resized to the model's input without antialiasing (bilinear sampling at the output pixels'
  centres, as MediaPipe's and most GPU resizers do);
- and, with `--mediapipe` and the family's RGB variant beside the model, through a stock
  MediaPipe ImageClassifier (its own decoder and resize) on each film as it is (a 3-channel
  JPEG) and on a grayscale JPEG copy of it, against the CLI's label on the same file.

No training, no conversion: every model is run as shipped. Prints one JSON line per model:
the flip share of each perturbation, how many films lie within 0.02 and 0.05 of the threshold,
and the agreement a stock client would get with a margin rule (calls within `--margin` of the
threshold shown as "borderline" in every client, the rest compared).

    python experiments/clients/call_stability.py --data-dir ../shared/chest_xray/test \\
        --model saved_models/pneumocnn_int8.tflite saved_models/pneumocnn_subtype_int8.tflite \\
        experiments/previous_model/pneumocnn_int8.tflite --mediapipe
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.core.locations import default_model
from pneumocnn.core.task import decide, pneumonia_probability
from pneumocnn.data.images import load_image, read_grayscale, to_model_input
from pneumocnn.data.scan import require_inputs
from pneumocnn.evaluation.stability import (
    grey_level_noise,
    jpeg_again,
    resize_without_antialiasing,
)
from pneumocnn.runtime.runners import open_model


def perturbed_inputs(paths: list[Path], side: int) -> dict[str, np.ndarray]:
    """The model inputs of every film as `pneumocnn.predict` reads it, and perturbed."""
    inputs = {"as read": [], "jpeg q90": [], "jpeg q75": [], "resize, no antialiasing": []}
    for path in paths:
        gray = read_grayscale(path)
        inputs["as read"].append(to_model_input(gray, side))
        inputs["jpeg q90"].append(jpeg_again(gray, 90, side))
        inputs["jpeg q75"].append(jpeg_again(gray, 75, side))
        inputs["resize, no antialiasing"].append(
            resize_without_antialiasing(np.asarray(gray), side)
        )
    return {name: np.stack(images) for name, images in inputs.items()}


def mediapipe_labels(rgb_model: Path, paths: list[Path]) -> list[str]:
    """A stock MediaPipe ImageClassifier's top category on each file, decoded by MediaPipe
    (`mp.Image.create_from_file`); a grayscale file's one channel is repeated to three, as an
    app must (the RGB model refuses a one-channel image)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(rgb_model))
    )
    labels = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in paths:
            image = mp.Image.create_from_file(str(path))
            if image.image_format == mp.ImageFormat.GRAY8:
                gray = np.asarray(image.numpy_view()).reshape(image.height, image.width, 1)
                pixels = np.ascontiguousarray(np.repeat(gray, 3, axis=-1))
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels)
            result = classifier.classify(image)
            labels.append(result.classifications[0].categories[0].category_name)
    return labels


def gray_copies(paths: list[Path], folder: Path) -> list[Path]:
    """A grayscale ("L") JPEG copy of each film (quality 95), as a detector writes one."""
    copies = []
    for index, path in enumerate(paths):
        copy = folder / f"{index:04d}-{path.stem}-gray.jpeg"
        with Image.open(path) as image:
            image.convert("L").save(copy, quality=95)
        copies.append(copy)
    return copies


def measure(model_path: Path, paths: list[Path], args) -> dict:
    model = open_model(model_path)
    inputs = perturbed_inputs(paths, model.image_size)
    base = model.predict_proba(inputs["as read"])
    labels = np.array(decide(base, model.threshold, model.class_names))
    distance = np.abs(pneumonia_probability(base) - model.threshold)
    record = {
        "model": str(model_path),
        "films": len(paths),
        "threshold": round(float(model.threshold), 4),
        "within_0.02": int(np.sum(distance <= 0.02)),
        "within_0.05": int(np.sum(distance <= 0.05)),
    }
    flips = {}
    noisy = [
        np.array(decide(model.predict_proba(images), model.threshold, model.class_names)) != labels
        for images in grey_level_noise(inputs["as read"], args.draws, args.seed)
    ]
    flips["one grey level (per draw)"] = float(np.mean(noisy))
    for name in ("jpeg q90", "jpeg q75", "resize, no antialiasing"):
        probabilities = model.predict_proba(inputs[name])
        flips[name] = float(
            np.mean(np.array(decide(probabilities, model.threshold, model.class_names)) != labels)
        )
    record["flip_share"] = {name: round(value, 4) for name, value in flips.items()}
    rgb = model_path.with_name(model_path.name.replace("_int8", "_rgb_int8"))
    if args.mediapipe and rgb.is_file() and rgb != model_path:
        with tempfile.TemporaryDirectory() as folder:
            copies = {"rgb": paths, "gray": gray_copies(paths, Path(folder))}
            for name, files in copies.items():
                read = np.stack([load_image(path, model.image_size) for path in files])
                probabilities = model.predict_proba(read)
                expected = np.array(decide(probabilities, model.threshold, model.class_names))
                outside = np.abs(pneumonia_probability(probabilities) - model.threshold)
                outside = outside > args.margin
                same = np.array(mediapipe_labels(rgb, files)) == expected
                record[f"mediapipe_{name}"] = {
                    "agree": int(same.sum()),
                    "of": len(files),
                    "agree_outside_margin": int(same[outside].sum()),
                    "outside_margin": int(outside.sum()),
                    "margin": args.margin,
                }
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/chest_xray/test"))
    parser.add_argument("--model", type=Path, nargs="+", default=[default_model()])
    parser.add_argument("--draws", type=int, default=3, help="Noisy copies (default: 3).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mediapipe", action="store_true", help="Also run stock MediaPipe.")
    parser.add_argument("--margin", type=float, default=0.05, help="Borderline band (0.05).")
    args = parser.parse_args(argv)
    paths = require_inputs([args.data_dir])
    for model_path in args.model:
        print(json.dumps(measure(model_path, paths, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
