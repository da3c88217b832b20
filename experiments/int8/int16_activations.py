"""Would 16-bit activations keep an adapted subtype model's three-class calls?

Full-integer int8 rounds every activation to 256 levels; the adapted subtype model's
bacterial-vs-viral near-ties cross on about 1.1% of films (`selection_agreement.py`, beside this
script). TFLite's 16x8 mode keeps the weights in int8 and the activations in int16 (65,536
levels), still integer only. This converts a run as the export does (activation equalization,
the export's calibration films), once full-integer int8 and once 16x8, and measures each one's
three-class agreement with the float model on the validation films at the run's threshold
(labels not used), its size, and its time per film on one thread (median of `--repeats` passes
over `--timed` films, the batch of 1 every client runs). Appends one line per run to
`results/int16_activations.jsonl`. A probe: the export writes int8 only, and whether the clients
(LiteRT.js, MediaPipe, the RGB variant's graft) take a 16x8 file is not tried here.

    .venv/bin/python experiments/int8/int16_activations.py OUT/run --calibration-images 600
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from subtype_parity import int8_probabilities  # beside this script

from pneumocnn.core.task import class_probabilities, decide
from pneumocnn.edge.convert import convert, fixed_batch_saved_model, representative_images
from pneumocnn.edge.equalize import equalize_activations
from pneumocnn.edge.prepare import prepare
from pneumocnn.runtime.lite import open_interpreter

RESULTS = Path(__file__).resolve().parent / "results" / "int16_activations.jsonl"


def convert_16x8(saved_model: Path, calibration: np.ndarray) -> bytes:
    """TFLite's 16x8 quantization: int8 weights, int16 activations, float32 input and output
    (the mode takes no uint8 input)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [image[np.newaxis].astype(np.float32)] for image in calibration
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    ]
    return converter.convert()


def seconds_per_film(model: bytes, images: np.ndarray, repeats: int, scratch: str) -> float:
    """The median over `repeats` passes of the mean time of one film, on one thread."""
    path = Path(scratch) / "timed.tflite"
    path.write_bytes(model)
    interpreter = open_interpreter(path, num_threads=1)
    source = interpreter.get_input_details()[0]
    inputs = [image[np.newaxis].astype(source["dtype"]) for image in images]
    passes = []
    for _ in range(repeats):
        started = time.perf_counter()
        for film in inputs:
            interpreter.set_tensor(source["index"], film)
            interpreter.invoke()
        passes.append((time.perf_counter() - started) / len(inputs))
    return float(np.median(passes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="A run folder (e.g. an adapted one, OUT/run).")
    parser.add_argument("--calibration-images", type=int, default=600)
    parser.add_argument("--timed", type=int, default=100, help="Films per timed pass.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    prepared = prepare(args.run_dir)
    config, names = prepared.config, list(prepared.source.class_names)
    calibration = representative_images(
        prepared.split, prepared.root, config.image_size, args.calibration_images, config.seed
    )
    reference = class_probabilities(prepared.float_probabilities)
    float_calls = np.array(decide(reference, prepared.threshold, names))
    row = {"run": str(args.run_dir), "threshold": prepared.threshold, "films": len(float_calls)}
    with tempfile.TemporaryDirectory() as scratch:
        equalized = equalize_activations(prepared.keras_model, calibration).model
        saved_model = fixed_batch_saved_model(equalized, Path(scratch) / "sm")
        timed = prepared.val.images[: args.timed]
        for mode, model in (
            ("int8", convert(saved_model, calibration)),
            ("16x8", convert_16x8(saved_model, calibration)),
        ):
            outputs = int8_probabilities(model, prepared.val.images, scratch)
            calls = np.array(decide(outputs, prepared.threshold, names))
            row[mode] = {
                "agreement": float(np.mean(calls == float_calls)),
                "bytes": len(model),
                "ms_per_film_one_thread": 1000
                * seconds_per_film(model, timed, args.repeats, scratch),
            }
    print(json.dumps(row, indent=1))
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
