"""Gives a shipped family's RGB variant the films' input: Pillow's resize grafted before it.

A fresh export makes the RGB variant take the data set's 224 px films and resize to the model's
side inside (`pneumocnn.edge.rgb.with_film_input`). The shipped variants were exported before,
at the model's side; a new export would convert their int8 network again (see README, "the
guard inside the RGB variant"). This grafts the same resize before the shipped file instead, so
its int8 network, head and guard head stay byte for byte; checks, on every film of `--films`
(224 px files), that both outputs are exactly what the old file gave on Pillow's resize of the
film; then writes the file, its checksum, size, tensors and `edge.rgb_variant.input_size`, and
the card. How the shipped `pneumocnn_rgb_int8.tflite` and `pneumocnn_subtype_rgb_int8.tflite`
got their 224 px input:

    .venv/bin/python experiments/clients/film_input.py saved_models/pneumocnn.json \\
        --films ../shared/chest_xray/test
    .venv/bin/python experiments/clients/film_input.py saved_models/pneumocnn_subtype.json \\
        --films ../shared/chest_xray/test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pneumocnn.core.metadata import FILM_SIZE, model_name, sha256_of, write_json_atomically
from pneumocnn.data.images import load_images
from pneumocnn.data.scan import require_inputs
from pneumocnn.edge.describe import tensor_description
from pneumocnn.edge.embedded import embed_pneumocnn_metadata, without_packed_files
from pneumocnn.edge.family import claim_family, read_family, write_family
from pneumocnn.edge.rgb import with_film_input
from pneumocnn.runtime.lite import LiteModel

PROVISIONAL = "film-input-provisional.json"


def outputs(model: LiteModel, images: np.ndarray) -> list[np.ndarray]:
    """Every output of `model` on each gray image (fed as gray RGB), stacked per output."""
    interpreter, details = model.interpreter, model.interpreter.get_output_details()
    rows = []
    for image in np.repeat(images, 3, axis=-1).astype(np.float32):
        interpreter.set_tensor(model.input["index"], image[np.newaxis])
        interpreter.invoke()
        rows.append([interpreter.get_tensor(detail["index"])[0].copy() for detail in details])
    return [np.stack(column) for column in zip(*rows, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metadata", type=Path, help="The family's metadata (.json).")
    parser.add_argument("--films", type=Path, required=True, help="224 px films to check on.")
    args = parser.parse_args(argv)
    family = read_family(args.metadata)
    metadata, files = family.metadata, family.files
    size = int(metadata["image_size"])
    old = LiteModel(family.folder / files["rgb_int8"])
    if int(old.input["shape"][1]) != size:
        print(f"{files['rgb_int8']} takes {old.input['shape'][1]} px already: nothing to do")
        return 0
    paths = require_inputs([args.films])
    films, _, _ = load_images(paths, FILM_SIZE)
    before = outputs(old, load_images(paths, size)[0])
    with claim_family(family.folder, model_name(files["metadata"])) as scratch:
        content = without_packed_files((family.folder / files["rgb_int8"]).read_bytes())
        variant = with_film_input(content, size, scratch)
        path = scratch / files["rgb_int8"]
        path.write_bytes(embed_pneumocnn_metadata(variant, metadata, channels=3))
        new = json.loads(json.dumps(metadata))
        new["sha256"][files["rgb_int8"]] = sha256_of(path)
        new["file_bytes"][files["rgb_int8"]] = path.stat().st_size
        write_json_atomically(scratch / PROVISIONAL, new)
        grafted = LiteModel(path, scratch / PROVISIONAL)
        after = outputs(grafted, films)
        (scratch / PROVISIONAL).unlink()
        for index, (a, b) in enumerate(zip(before, after, strict=True)):
            if not np.array_equal(a, b):
                print(f"Output {index} moved by {np.abs(a - b).max():g}: nothing written")
                return 1
        new["tensors"][files["rgb_int8"]]["input"] = tensor_description(grafted.input)
        record = new["edge"]["rgb_variant"]
        record["input_size"] = FILM_SIZE
        record["film_input"] = {
            "films": args.films.name,
            "images": len(films),
            "what": f"Pillow's bilinear resize from {FILM_SIZE} px to {size} px grafted before "
            "the file exported at the model's side; every output on these films is the old "
            "file's on Pillow's resize of them, bit for bit.",
        }
        write_family(scratch, family.folder, files, new, ("rgb_int8",))
    print(f"Both outputs unchanged, bit for bit, on {len(films)} films of {args.films}")
    print(
        f"Wrote {family.folder / files['rgb_int8']} ({new['file_bytes'][files['rgb_int8']]} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
