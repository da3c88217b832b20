"""Fine-tunes a finished run with int8 rounding noise, to see whether its int8 model then keeps
the float model's decisions (a stand-in for quantization-aware training, which Keras 3 lacks).

Full-integer int8 TFLite rounds every tensor between ops to a step of (max - min) / 255 of the
range calibration saw. This measures those ranges on calibration films (the export's draw), then
trains the run's model for a few more epochs with uniform noise of one step's width,
U(-step/2, step/2), added after the input scaling and after every ReLU and the pooling, in
training only (the noise layers live in a training twin that shares the run's layers, so the
fine-tuned model is the run's architecture, built-in layers only). BatchNormalization stays
frozen (inference mode), as the int8 model folds it. Writes a copy of the run folder with the
fine-tuned `best.keras` (and no stored threshold, so the next step chooses it on validation as
the export does); check it with `experiments/int8/subtype_parity.py OUTPUT_DIR` or
`python -m pneumocnn.export OUTPUT_DIR`.

Example:

    python experiments/int8/quant_noise_finetune.py runs/subtype-s1 --output-dir runs/subtype-s1-qn
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pneumocnn.core.run_folder import (
    EXPORT_DIR,
    METRICS_FILE,
    MODEL_FILE,
    SPLIT_FILE,
    THRESHOLD_FILE,
    resolve_source,
)
from pneumocnn.data.folders import find_dataset, resolve_data_dir
from pneumocnn.data.pipeline import make_datasets
from pneumocnn.data.split import load_split
from pneumocnn.edge.convert import representative_images
from pneumocnn.network.model import load_model, training_classes_of
from pneumocnn.training.compile import compile_model


class RoundingNoise(keras.layers.Layer):
    """Adds U(-step/2, step/2) noise in training (int8 rounding of a tensor whose int8 step is
    `step`); identity otherwise."""

    def __init__(self, step: float, strength: float = 1.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.step = float(step) * strength
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training:
            return x
        noise = keras.random.uniform(
            keras.ops.shape(x), -0.5 * self.step, 0.5 * self.step, seed=self.generator
        )
        return x + noise


def noise_points(model: keras.Model) -> list[str]:
    """The layers after whose output int8 rounds a tensor we can reach: input scaling, every
    ReLU, the global pooling."""
    return [
        layer.name
        for layer in model.layers
        if isinstance(
            layer, keras.layers.ReLU | keras.layers.Rescaling | keras.layers.GlobalAveragePooling2D
        )
    ]


def int8_steps(model: keras.Model, images: np.ndarray, names: list[str]) -> dict[str, float]:
    """(max(0, max) - min(0, min)) / 255 of each named layer's output over `images`: the step
    TFLite's min/max calibration gives that tensor."""
    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    outputs = probe.predict(images, batch_size=32, verbose=0)
    return {
        name: float((max(0.0, out.max()) - min(0.0, out.min())) / 255.0)
        for name, out in zip(names, outputs, strict=True)
    }


def training_twin(model: keras.Model, steps: dict[str, float], strength: float, seed: int):
    """`model`'s layers in order (a chain), with `RoundingNoise` after each layer in `steps`."""
    x = model.inputs[0]
    for index, layer in enumerate(model.layers[1:]):
        x = layer(x)
        if layer.name in steps:
            x = RoundingNoise(steps[layer.name], strength, seed + index, name=f"{layer.name}_q")(x)
    return keras.Model(model.inputs, x, name="pneumocnn_rounding_noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--strength", type=float, default=1.0, help="Noise width in int8 steps.")
    parser.add_argument("--calibration-images", type=int, default=300)
    args = parser.parse_args()

    source = resolve_source(args.run_dir)
    config = source.config
    output = Path(args.output_dir)
    if output.exists():
        raise SystemExit(f"{output} exists: pass a new --output-dir.")
    dataset = find_dataset(resolve_data_dir(config.data_dir))
    split = pd.read_csv(source.run_dir / SPLIT_FILE)
    model = load_model(source.model_path)
    calibration = representative_images(
        split, dataset.root, config.image_size, args.calibration_images, config.seed
    )
    steps = int8_steps(model, calibration, noise_points(model))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    twin = training_twin(model, steps, args.strength, config.seed)
    tuned_config = dataclasses.replace(
        config, learning_rate=args.learning_rate, lr_schedule="plateau", epochs=args.epochs
    )
    compile_model(twin, tuned_config)
    train = load_split(split, "train", config.image_size, dataset.root)
    val = load_split(split, "val", config.image_size, dataset.root)
    train_ds, val_ds, steps_per_epoch = make_datasets(
        tuned_config, train, val, training_classes_of(config)
    )
    before = twin.evaluate(val_ds, verbose=0, return_dict=True)
    history = twin.fit(
        train_ds,
        validation_data=val_ds,
        epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        verbose=2,
    )
    shutil.copytree(
        source.run_dir,
        output,
        ignore=shutil.ignore_patterns(EXPORT_DIR, THRESHOLD_FILE, "*.png", METRICS_FILE),
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
    model.save(output / MODEL_FILE)
    report = {
        "run": str(args.run_dir),
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "strength": args.strength,
        "steps": steps,
        "val_before": before,
        "val_after": {key: float(values[-1]) for key, values in history.history.items()},
    }
    (output / "rounding_noise.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
