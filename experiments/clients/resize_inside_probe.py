"""Would Pillow's resize inside the RGB variant make a stock MediaPipe client agree with the CLI?

Written before the variant was built (README, "Pillow's resize inside the RGB variant"): it takes
the data set's 224 px films and does `pneumocnn.predict`'s resize inside, so a client that hands
MediaPipe a 224 px file leaves the resize to the model. What then still differs between the two
is the decoder: MediaPipe decodes the JPEG itself (`mp.Image.create_from_file`). This measures
that bound without the variant (its figures are what the built variant then scored): for each
film, the int8 model's call on the pixels `pneumocnn.predict` reads, against its call on
MediaPipe's decoded pixels put through Pillow's luma and Pillow's resize, which is what such a
variant computes on gray films (its int8 network is the grayscale file's). Three sets, as the
issue "One answer in every client" asks: the films as they are (3-channel JPEGs), a 3-channel
JPEG copy and a grayscale JPEG copy of each (quality 95, 224 px). Labels are not used. Writes
one JSON record per model to `--output`:

    .venv/bin/python experiments/clients/resize_inside_probe.py \\
        --model saved_models/pneumocnn_int8.tflite saved_models/pneumocnn_subtype_int8.tflite
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import mediapipe as mp
import numpy as np
from PIL import Image

from pneumocnn.core.files import write_text_atomic
from pneumocnn.core.task import decide
from pneumocnn.data.images import load_image, to_model_input
from pneumocnn.data.scan import require_inputs
from pneumocnn.runtime.lite import LiteModel

HERE = Path(__file__).resolve().parent


def mediapipe_gray(path: Path) -> tuple[Image.Image, np.ndarray]:
    """The film as MediaPipe decodes it, made gray by Pillow's luma (a one-channel file's
    channel repeated to three first, as an app must), and MediaPipe's RGB pixels."""
    image = mp.Image.create_from_file(str(path))
    # numpy_view() is a view into `image`'s buffer: copy it while `image` is alive.
    pixels = np.array(image.numpy_view()).reshape(image.height, image.width, -1)
    rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]
    return Image.fromarray(np.ascontiguousarray(rgb)).convert("L"), rgb


def copies(paths: list[Path], folder: Path) -> dict[str, list[Path]]:
    """The films, and a 3-channel and a grayscale JPEG copy of each (quality 95)."""
    sets = {"films": paths, "3-channel copies": [], "grayscale copies": []}
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            for name, mode in (("3-channel copies", "RGB"), ("grayscale copies", "L")):
                copy = folder / f"{index:04d}-{mode}.jpeg"
                image.convert(mode).save(copy, quality=95)
                sets[name].append(copy)
    return sets


def measure(model_path: Path, sets: dict[str, list[Path]]) -> dict:
    model = LiteModel(model_path)
    record = {"model": str(model_path), "threshold": round(model.threshold, 4)}
    for name, files in sets.items():
        cli = np.stack([load_image(path, model.image_size) for path in files])
        inside, changed = [], []
        for path in files:
            gray, rgb = mediapipe_gray(path)
            inside.append(to_model_input(gray, model.image_size))
            with Image.open(path) as image:
                pillow = np.asarray(image.convert("RGB"), np.int16)
            changed.append(float(np.mean(np.abs(rgb.astype(np.int16) - pillow).max(-1) > 0)))
        p_cli, p_inside = model.predict_proba(cli), model.predict_proba(np.stack(inside))
        same = np.array(decide(p_cli, model.threshold, model.class_names)) == np.array(
            decide(p_inside, model.threshold, model.class_names)
        )
        record[name] = {
            "agree": int(same.sum()),
            "of": len(files),
            "largest_probability_difference": round(float(np.abs(p_cli - p_inside).max()), 4),
            "decoded_pixels_that_differ_median": round(float(np.median(changed)), 4),
        }
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/chest_xray/test"))
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "resize_inside.json")
    args = parser.parse_args(argv)
    paths = require_inputs([args.data_dir])
    records = []
    with tempfile.TemporaryDirectory() as folder:
        sets = copies(paths, Path(folder))
        for model_path in args.model:
            records.append(measure(model_path, sets))
            print(json.dumps(records[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
