"""Would percentile calibration rescue a run's int8 parity? (A probe; the export does not do it.)

TFLite's converter sets each activation's int8 range from the minimum and maximum it sees on the
calibration films, so a few extreme activations coarsen the grid for all the others. This caps
every ReLU of the run's model at a percentile of its calibration activations (ReLU(max_value),
weights unchanged), then prints one JSON line: how many validation decisions the capped float
model shares with the original, and the int8 parity of the capped model against the capped
float model, as the export would measure it (same calibration films, the run's threshold).

Example:

    python experiments/int8/activation_clip_parity.py runs/subtype-s1 --calibration-images 300 \\
        --percentile 99.99
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import keras
import numpy as np
from subtype_parity import int8_probabilities

from pneumocnn.core.task import class_probabilities, decide
from pneumocnn.edge.convert import convert, fixed_batch_saved_model, representative_images
from pneumocnn.edge.parity import check_parity
from pneumocnn.edge.prepare import prepare
from pneumocnn.runtime.runners import keras_probabilities


def capped(model: keras.Model, images: np.ndarray, percentile: float) -> keras.Model:
    """A copy of `model` with each ReLU capped at `percentile` of its activations on `images`."""
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    probe = keras.Model(model.inputs, [layer.output for layer in relus])
    activations = probe.predict(images.astype("float32"), batch_size=32, verbose=0)
    caps = {
        layer.name: float(np.percentile(values, percentile))
        for layer, values in zip(relus, activations, strict=True)
    }

    def clone(layer):
        if layer.name in caps:
            return keras.layers.ReLU(max_value=caps[layer.name], name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="A finished training run folder.")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--percentile", type=float, default=99.99)
    args = parser.parse_args()

    prepared = prepare(args.run_dir)
    config = prepared.config
    calibration = representative_images(
        prepared.split, prepared.root, config.image_size, args.calibration_images, config.seed
    )
    model = capped(prepared.keras_model, calibration, args.percentile)
    names, threshold = list(prepared.source.class_names), prepared.threshold
    original = class_probabilities(prepared.float_probabilities)
    reference = class_probabilities(keras_probabilities(model, prepared.val.images))
    with tempfile.TemporaryDirectory() as scratch:
        saved_model = fixed_batch_saved_model(model, Path(scratch) / "sm")
        quantized = int8_probabilities(
            convert(saved_model, calibration), prepared.val.images, scratch
        )
    parity = check_parity(
        prepared.val.labels, reference, quantized, threshold, names, strict=False
    )
    same = np.array(decide(original, threshold, names)) == np.array(
        decide(reference, threshold, names)
    )
    print(
        json.dumps(
            {
                "run": str(args.run_dir),
                "percentile": args.percentile,
                "calibration_images": len(calibration),
                "capped_float_agrees_with_original": float(same.mean()),
                **{k: parity[k] for k in ("agreement", "pneumonia_agreement", "auc_drop")},
            }
        )
    )


if __name__ == "__main__":
    main()
