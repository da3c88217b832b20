"""Prediction: `python -m pneumocnn.predict FILE_OR_FOLDER... [--model M] [--json]`.

Classifies JPEG or PNG chest X-rays with the shipped int8 model (default), another `.tflite`
(e.g. the subtype model, NORMAL / BACTERIAL / VIRAL), a `.keras` file, or a run folder; the task
and classes come from the model's metadata. Prints a table, or one JSON object per line with
`--json`. A bad file gets an error line and a non-zero exit status; the other files are still
classified.

Example:

    python -m pneumocnn.predict xrays/ --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pneumocnn.images import ImageLoadError, is_image_file, load_image
from pneumocnn.lite import LiteModel, Prediction, make_prediction
from pneumocnn.metadata import INT8_FILE, MetadataError
from pneumocnn.paths import shipped_model_dir

DEFAULT_MODEL = shipped_model_dir() / INT8_FILE


class KerasClassifier:
    """A `.keras` model (or run folder) behind the same interface as `LiteModel`.

    Image size, class names and threshold come from the run folder or the metadata beside it.
    """

    def __init__(self, path: str | Path):
        # TensorFlow is imported only on this path: the .tflite path stays light.
        from pneumocnn.evaluate import ensure_threshold, resolve_source
        from pneumocnn.model import load_model

        source = resolve_source(path)
        self.threshold = ensure_threshold(source, None)
        self.image_size = source.config.image_size
        self.class_names = list(source.class_names)
        self.task = source.config.task
        self.model = load_model(source.model_path)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """The model's probabilities for raw-pixel images `(n, image_size, image_size, 1)`, shaped
        as `LiteModel.predict_proba`'s."""
        from pneumocnn.evaluate import keras_probabilities

        return keras_probabilities(self.model, images)

    def predict_file(self, path: str | Path) -> Prediction:
        """Loads an image file and classifies it (see `LiteModel.predict_file`)."""
        output = self.predict_proba(load_image(path, self.image_size)[np.newaxis])[0]
        return make_prediction(path, output, self.threshold, self.class_names)


def load_classifier(model: str | Path) -> LiteModel | KerasClassifier:
    """Opens a `.tflite` with LiteRT, or a `.keras` file or run folder with Keras.

    Raises:
        FileNotFoundError: if the model does not exist.
        MetadataError: if its metadata is missing or does not match it.
    """
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(
            f"Model not found. Received: model='{model}'. Pass --model with an exported .tflite "
            "or .keras (e.g. saved_models/pneumocnn_int8.tflite), or a training run folder."
        )
    return LiteModel(path) if path.suffix == ".tflite" else KerasClassifier(path)


def expand_inputs(inputs: list[str]) -> Iterator[Path]:
    """Yields each file as given, and each image file inside each folder (sorted, recursive)."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        else:
            yield path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.predict",
        description="Classify chest X-rays (JPEG or PNG) as NORMAL or PNEUMONIA, or with a subtype "
        "model (saved_models/pneumocnn_subtype_int8.tflite) as NORMAL, BACTERIAL or VIRAL.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="Image files, or folders searched for JPEG and PNG files.",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="A .tflite, .keras, or run folder (default: the shipped int8 model, "
        f"saved_models/{INT8_FILE}).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object per line.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns 0 when every file was classified, else 1 (2 for usage)."""
    args = build_parser().parse_args(argv)
    try:
        classifier = load_classifier(args.model)
    except (FileNotFoundError, MetadataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failures = 0
    if not args.json:
        print(f"{'label':<10} {'P(pneumonia)':>14} {'threshold':>9}  file")
    files = list(expand_inputs(args.inputs))
    if not files:
        print(f"error: no JPEG or PNG images found in {args.inputs}", file=sys.stderr)
        return 1
    for path in files:
        try:
            result = classifier.predict_file(path)
        except ImageLoadError as error:
            failures += 1
            if args.json:
                print(json.dumps({"path": str(path), "error": str(error)}))
            else:
                print(f"{'ERROR':<10} {'':>14} {'':>9}  {path}: {error}")
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "path": result.path,
                        "label": result.label,
                        "probability": round(result.probability, 6),
                        "threshold": result.threshold,
                        "probabilities": {
                            name: round(value, 6) for name, value in result.probabilities.items()
                        },
                    }
                )
            )
        else:
            print(
                f"{result.label:<10} {result.probability:>14.4f} {result.threshold:>9.4f}  "
                f"{result.path}"
            )
    if failures:
        print(f"{failures} of {len(files)} files could not be read.", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
