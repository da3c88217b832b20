"""Does a stock MediaPipe classifier show the probability `pneumocnn.predict` shows, not only
its label? And what does an app that hands MediaPipe a whole large film get?

The RGB variant's scores are not P(pneumonia): its head shifts the odds by the threshold's (see
`pneumocnn.edge.rgb.operating_scores`). A client gets the probability back from NORMAL's score
and the threshold (`pneumocnn.edge.rgb.pneumonia_from_scores`, what the embedding page's
snippets do by hand). For each family given and each film of a folder, this compares the CLI
(`LiteModel.predict_file` on the grayscale int8 file) with a stock MediaPipe ImageClassifier on
the RGB variant, fed four ways:

- `file`: the film as it is, decoded by MediaPipe (`mp.Image.create_from_file`);
- `gray 224 file`: a grayscale JPEG copy (quality 95), decoded by MediaPipe, its one channel
  repeated to three as an app must;
- `snippet, gray 1500x1800`: a grayscale 1500x1800 JPEG copy through the embedding page's
  `rgb_image` (Pillow decodes and brings it to 224 px; MediaPipe does not resize);
- `whole, gray 1500x1800`: the same copy decoded by Pillow and handed to MediaPipe whole, so
  MediaPipe resizes it (bilinear, no antialiasing): what an Android app that passes its bitmap
  as it is gets (MediaPipe's C++ preprocessing is the same on Android; not run on a device);
- `halved, gray 1500x1800`: the same copy halved (each pixel the rounded mean of a 2x2 block,
  what a bilinear halving computes) while both sides stay at least 224 px, then resized to 224
  px by bilinear sampling (`pneumocnn.evaluation.stability.resize_without_antialiasing`) and
  handed to MediaPipe at 224 px: an app's cheap antialiasing before MediaPipe.

For each: the share of identical labels, and how far P(pneumonia) lies from the CLI's (largest,
99th percentile, share within one int8 output step, 1/256). Writes one JSON file per family to
`--output` (default `experiments/clients/results/`), and prints it.

    .venv/bin/python experiments/clients/client_probabilities.py \
        --data-dir ../shared/chest_xray/test
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.core.locations import default_model_dir
from pneumocnn.core.metadata import DEFAULT_NAMES, model_files, write_json_atomically
from pneumocnn.data.scan import require_inputs
from pneumocnn.edge.rgb import pneumonia_from_scores
from pneumocnn.evaluation.stability import resize_without_antialiasing
from pneumocnn.runtime.lite import LiteModel

HERE = Path(__file__).resolve().parent
PAGE = HERE.parents[1] / "docs" / "embedding.md"
STEP = 1 / 256


def snippet_rgb_image():
    """The embedding page's `rgb_image`, as printed (its definitions only)."""
    section = PAGE.read_text().split("\n## MediaPipe (Python)\n")[1].split("\n## ")[0]
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "mediapipe" in b]
    namespace = {"__name__": "snippet"}
    exec(compile(snippet.split("\nwith open(")[0], str(PAGE), "exec"), namespace)
    return namespace["rgb_image"]


def copies(paths: list[Path], folder: Path) -> dict[str, list[Path]]:
    """A grayscale 224 px JPEG copy and a grayscale 1500x1800 JPEG copy of each film."""
    made = {"gray 224": [], "gray 1500x1800": []}
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            gray = image.convert("L")
        made["gray 224"].append(folder / f"{index:04d}-gray.jpeg")
        gray.save(made["gray 224"][-1], quality=95)
        made["gray 1500x1800"].append(folder / f"{index:04d}-large.jpeg")
        gray.resize((1500, 1800), Image.Resampling.BICUBIC).save(made["gray 1500x1800"][-1])
    return made


def mediapipe_scores(rgb_model: Path, images) -> np.ndarray:
    """A stock MediaPipe ImageClassifier's scores per class (in the model's class order) on each
    `mp.Image`."""
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(rgb_model))
    )
    rows = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            head = classifier.classify(image).classifications[0]
            rows.append(sorted((c.index, c.score) for c in head.categories))
    return np.array([[score for _, score in row] for row in rows])


def as_rgb(pixels: np.ndarray):
    import mediapipe as mp

    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))


def decoded_by_mediapipe(path: Path):
    import mediapipe as mp

    image = mp.Image.create_from_file(str(path))
    if image.image_format == mp.ImageFormat.GRAY8:
        return as_rgb(np.asarray(image.numpy_view()).reshape(image.height, image.width))
    return image


def decoded_by_pillow(path: Path):
    with Image.open(path) as image:
        return as_rgb(np.asarray(image.convert("RGB")))


def halved(path: Path, side: int = 224):
    """Halved by 2x2 means while both sides stay >= `side`, then bilinear sampling to `side`."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), np.float64)
    while min(pixels.shape) >= 2 * side:
        height, width = (pixels.shape[0] // 2) * 2, (pixels.shape[1] // 2) * 2
        blocks = pixels[:height, :width].reshape(height // 2, 2, width // 2, 2)
        pixels = np.floor(blocks.mean(axis=(1, 3)) + 0.5)
    return as_rgb(resize_without_antialiasing(pixels.astype(np.uint8), side)[..., 0])


def compare(expected: list, scores: np.ndarray, names: list[str], threshold: float) -> dict:
    """Labels and P(pneumonia) of MediaPipe's scores against the CLI's predictions."""
    labels = [names[int(i)] for i in scores.argmax(axis=1)]
    cli = np.array([p.probability for p in expected])
    gap = np.abs(pneumonia_from_scores(scores, threshold) - cli)
    return {
        "films": len(expected),
        "same_label": int(sum(a == p.label for a, p in zip(labels, expected, strict=True))),
        "probability_gap_max": round(float(gap.max()), 4),
        "probability_gap_p99": round(float(np.quantile(gap, 0.99)), 4),
        "probability_gap_median": round(float(np.median(gap)), 6),
        "within_one_step": int(np.sum(gap <= STEP)),
        "within_0.01": int(np.sum(gap <= 0.01)),
    }


def measure(name: str, folder: Path, paths: list[Path], scratch: Path) -> dict:
    files = model_files(name)
    model = LiteModel(folder / files["int8"])
    names, threshold = model.class_names, model.threshold
    made = copies(paths, scratch)
    rgb_image = snippet_rgb_image()
    feeds = {
        "file": (paths, decoded_by_mediapipe),
        "gray 224 file": (made["gray 224"], decoded_by_mediapipe),
        "snippet, gray 1500x1800": (made["gray 1500x1800"], rgb_image),
        "whole, gray 1500x1800": (made["gray 1500x1800"], decoded_by_pillow),
        "halved, gray 1500x1800": (made["gray 1500x1800"], halved),
    }
    result = {"model": name, "threshold": threshold, "folder": str(paths[0].parents[1])}
    for feed, (files_fed, decode) in feeds.items():
        expected = [model.predict_file(path) for path in files_fed]
        scores = mediapipe_scores(folder / files["rgb_int8"], (decode(p) for p in files_fed))
        result[feed] = compare(expected, scores, names, threshold)
        print(name, feed, result[feed], flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="A folder of films (e.g. test/).")
    parser.add_argument(
        "--models", nargs="+", default=[DEFAULT_NAMES["binary"], DEFAULT_NAMES["subtype"]]
    )
    parser.add_argument("--model-dir", default=None, help="Defaults to the shipped models.")
    parser.add_argument("--output", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    paths = sorted(require_inputs([args.data_dir]))
    folder = Path(args.model_dir) if args.model_dir else default_model_dir()
    for name in args.models:
        with tempfile.TemporaryDirectory() as scratch:
            result = measure(name, folder, paths, Path(scratch))
        write_json_atomically(Path(args.output) / f"client_probabilities_{name}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
