"""Test-time augmentation probe: does averaging a model's P(pneumonia) over zoomed-in views of
the film (a centred crop of 95%, 90% or 85% of the side, resized back with bilinear
interpolation, as a Resizing layer inside a `.tflite` would do it) rank the development half
better than the film alone?

    python experiments/shift/zoom_tta.py --data-dir ../shared/chest_xray/test \\
        MODEL.keras [MODEL ...]

Prints, per model and per view or average of views, ROC AUC / specificity at 96% sensitivity on
the folder (the development half, used for selection: a probe, not a result).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pneumocnn.core.task import class_probabilities, pneumonia_probability
from pneumocnn.data.images import load_images


def main() -> None:
    import keras  # TensorFlow: after --help

    from pneumocnn.network.model import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with NORMAL/ and PNEUMONIA/")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("models", nargs="+", help=".keras files")
    args = parser.parse_args()
    size = args.image_size
    paths, labels = [], []
    for label, folder in enumerate(("NORMAL", "PNEUMONIA")):
        found = sorted((Path(args.data_dir) / folder).iterdir())
        paths += found
        labels += [label] * len(found)
    images, kept, _ = load_images(paths, size)
    labels = np.array(labels)[kept]
    films = images.astype("float32")

    def spec_at_96(p):
        fpr, tpr, _ = roc_curve(labels, p)
        return 1 - fpr[np.argmax(tpr >= 0.96)]

    def zoom(fraction):
        side = int(round(size * fraction))
        start = (size - side) // 2
        crop = films[:, start : start + side, start : start + side, :]
        return keras.ops.convert_to_numpy(keras.ops.image.resize(crop, (size, size)))

    views = {"film": films, **{f"zoom{f}": zoom(f) for f in (0.95, 0.9, 0.85)}}
    averages = (("film", "zoom0.95"), ("film", "zoom0.9"), ("film", "zoom0.95", "zoom0.9"))
    for path in args.models:
        model = load_model(path)
        scores = {
            name: pneumonia_probability(class_probabilities(model.predict(x, verbose=0)))
            for name, x in views.items()
        }
        for combo in averages:
            scores["+".join(combo)] = np.mean([scores[name] for name in combo], axis=0)
        cells = [
            f"{name} {roc_auc_score(labels, p):.4f}/{spec_at_96(p):.3f}"
            for name, p in scores.items()
        ]
        print(f"{path}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
