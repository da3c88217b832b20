"""Where do a run's int8 and float decisions part? The export's parity check, taken apart.

`python -m pneumocnn.export RUN` refuses an int8 model whose decisions agree with the float model's
on fewer than 99% of validation films. For a three-class (subtype) model that bar counts two kinds
of disagreement: a different pneumonia-vs-NORMAL call, and the same pneumonia call with the other
subtype (BACTERIAL for VIRAL or back). This converts the run's model exactly as the export does
(same calibration images, activation equalization unless `--no-equalize`, uint8 in and out), runs it
on the run's validation split at the run's stored threshold, and prints: the agreement, the
pneumonia calls' agreement, every disagreeing film's float and int8 probabilities, how many subtype
flips are exact ties in the uint8 output (which `pneumocnn.core.task.decide` gives to BACTERIAL, the
first of the two), how many pneumonia-called films lie within a small margin of a BACTERIAL/VIRAL
tie in float, and how far int8 moves P(pneumonia) and P(BACTERIAL) - P(VIRAL). Writes nothing.

Example:

    python experiments/int8/subtype_parity.py runs/subtype-s3 --calibration-images 1000
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pneumocnn.core.task import class_probabilities, decide, pneumonia_probability
from pneumocnn.edge.convert import convert, fixed_batch_saved_model, representative_images
from pneumocnn.edge.equalize import equalize_activations
from pneumocnn.edge.parity import check_parity
from pneumocnn.edge.prepare import prepare
from pneumocnn.runtime.lite import dequantize, open_interpreter, quantize

MARGINS = (0.004, 0.01, 0.02, 0.05)


def int8_probabilities(model: bytes, images: np.ndarray, scratch: Path) -> np.ndarray:
    """Runs a converted classifier (written into `scratch`) on raw 0-255 images, one at a time
    (the exported files have a batch of 1), as `pneumocnn.runtime.lite.LiteModel` does: quantize the
    input, invoke, dequantize the output (a float32 input or output passes through)."""
    path = Path(scratch) / "model.tflite"
    path.write_bytes(model)
    interpreter = open_interpreter(path)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in images:
        interpreter.set_tensor(
            source["index"], quantize(np.asarray(image, np.float32)[np.newaxis], source)
        )
        interpreter.invoke()
        rows.append(dequantize(interpreter.get_tensor(target["index"]), target).reshape(-1))
    return class_probabilities(np.array(rows))


def flips(
    reference: np.ndarray, quantized: np.ndarray, threshold: float, names: list[str]
) -> dict:
    """The calls int8 flips (each printed), and how far it moves the outputs; for a subtype
    model, the bacterial-vs-viral flips, how many are exact uint8 ties, and the films near one."""
    float_calls = np.array(decide(reference, threshold, names))
    int8_calls = np.array(decide(quantized, threshold, names))
    flipped = np.flatnonzero(float_calls != int8_calls)
    for index in flipped:
        print(
            f"float {float_calls[index]:9s} {np.round(reference[index], 4)}  "
            f"int8 {int8_calls[index]:9s} {np.round(quantized[index], 4)}"
        )
    pneumonia_moved = np.abs(pneumonia_probability(quantized) - pneumonia_probability(reference))
    report = {
        "flips": int(len(flipped)),
        "pneumonia_call_flips": int(
            np.sum((float_calls[flipped] == names[0]) != (int8_calls[flipped] == names[0]))
        ),
        "int8_change_of_p_pneumonia": {
            "mean": float(pneumonia_moved.mean()),
            "p90": float(np.percentile(pneumonia_moved, 90)),
            "p99": float(np.percentile(pneumonia_moved, 99)),
        },
    }
    if len(names) == 3:
        subtype = flipped[(float_calls[flipped] != names[0]) & (int8_calls[flipped] != names[0])]
        called = float_calls != names[0]
        margin = np.abs(reference[:, 1] - reference[:, 2])
        moved = np.abs((quantized[:, 1] - quantized[:, 2]) - (reference[:, 1] - reference[:, 2]))
        report |= {
            "subtype_flips": int(len(subtype)),
            "subtype_flips_at_exact_uint8_ties": int(
                np.sum(quantized[subtype, 1] == quantized[subtype, 2])
            ),
            "pneumonia_called": int(called.sum()),
            "pneumonia_called_within_margin_of_a_tie": {
                str(m): int(np.sum(called & (margin < m))) for m in MARGINS
            },
            "int8_change_of_pB_minus_pV": {
                "mean": float(moved.mean()),
                "p90": float(np.percentile(moved, 90)),
                "p99": float(np.percentile(moved, 99)),
            },
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="A finished training run folder.")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument(
        "--float-layers",
        nargs="*",
        default=[],
        help="Keras layers kept in float32 (TFLite's selective quantization; float32 input and "
        "output), e.g. predictions: no uint8 output, so no exact ties.",
    )
    parser.add_argument(
        "--no-equalize",
        action="store_true",
        help="Convert the model as it is, without the export's activation equalization.",
    )
    args = parser.parse_args()

    prepared = prepare(args.run_dir)
    config = prepared.config
    calibration = representative_images(
        prepared.split, prepared.root, config.image_size, args.calibration_images, config.seed
    )
    with tempfile.TemporaryDirectory() as scratch:
        model = (
            prepared.keras_model
            if args.no_equalize
            else equalize_activations(prepared.keras_model, calibration).model
        )
        saved_model = fixed_batch_saved_model(model, Path(scratch) / "sm")
        quantized = int8_probabilities(
            convert(saved_model, calibration, args.float_layers),
            prepared.val.images,
            scratch,
        )
    names = list(prepared.source.class_names)
    reference = class_probabilities(prepared.float_probabilities)
    parity = check_parity(
        prepared.val.labels, reference, quantized, prepared.threshold, names, strict=False
    )
    report = {
        "run": str(args.run_dir),
        "threshold": prepared.threshold,
        "calibration_images": len(calibration),
        "float_layers": args.float_layers,
        "equalized": not args.no_equalize,
        **{key: parity[key] for key in ("images", "agreement", "pneumonia_agreement", "auc_drop")},
        **flips(reference, quantized, prepared.threshold, names),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
