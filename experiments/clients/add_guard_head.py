"""Gives an exported family's RGB variant the guard head, leaving every other file as it is.

The guard head (`pneumocnn.edge.guard_head`) is built from the family's own guard calibration
(the metadata's `"guard"`) and grafted onto the family's RGB variant: the variant's tensors,
operators and buffers are not touched, so its operating scores stay what they were (checked
here, bit for bit, on the films given), and the int8, float16 and `.keras` files are not
touched at all. The new variant gets its TFLite metadata embedded again (both outputs named);
then its checksum, size and records (`edge.rgb_variant.guard_head`, with the head's agreement
with the Python guard on the films) and the model card are written into the family's folder.

    python experiments/clients/add_guard_head.py saved_models/pneumocnn.json \\
        --films ../shared/chest_xray/test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from pneumocnn.core.metadata import sha256_of, write_json_atomically
from pneumocnn.data.images import load_images
from pneumocnn.data.scan import require_inputs
from pneumocnn.edge.embedded import embed_pneumocnn_metadata
from pneumocnn.edge.family import read_family, write_family
from pneumocnn.edge.guard_head import add_guard_head, convert_guard_head, guard_head_record
from pneumocnn.edge.parity import guard_head_agreement
from pneumocnn.edge.rgb import LUMA_WEIGHTS
from pneumocnn.runtime import guard
from pneumocnn.runtime.lite import LiteModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metadata", type=Path, help="The family's metadata JSON.")
    parser.add_argument("--films", type=Path, required=True, help="Films to check it on.")
    args = parser.parse_args(argv)
    family = read_family(args.metadata)
    metadata, files = family.metadata, family.files
    calibration = guard.calibration_of(metadata)
    if calibration is None:
        print(f"{args.metadata} has no guard calibration: nothing to build the head from")
        return 2
    images, _, _ = load_images(require_inputs([args.films]), int(metadata["image_size"]))
    old = LiteModel(family.folder / files["rgb_int8"])
    rgb = np.repeat(images, 3, axis=-1).astype(np.float32)
    old_scores = old.predict_proba(rgb)
    with tempfile.TemporaryDirectory(dir=family.folder, prefix=".guard-head-") as scratch:
        scratch = Path(scratch)
        head = convert_guard_head(metadata["image_size"], calibration, LUMA_WEIGHTS, scratch)
        variant = add_guard_head((family.folder / files["rgb_int8"]).read_bytes(), head)
        path = scratch / files["rgb_int8"]
        path.write_bytes(embed_pneumocnn_metadata(variant, metadata, channels=3))
        new = json.loads(json.dumps(metadata))
        new["sha256"][files["rgb_int8"]] = sha256_of(path)
        new["file_bytes"][files["rgb_int8"]] = path.stat().st_size
        write_json_atomically(scratch / "provisional.json", new)
        grafted = LiteModel(path, scratch / "provisional.json")
        difference = float(np.abs(grafted.predict_proba(rgb) - old_scores).max())
        if difference != 0.0:
            print(f"The grafted variant's scores moved by {difference:g}: nothing written")
            return 1
        record = guard_head_agreement(grafted, images, calibration, films=args.films.name)
        new["edge"]["rgb_variant"]["guard_head"] = guard_head_record(record)
        (scratch / "provisional.json").unlink()
        write_family(scratch, family.folder, files, new, ("rgb_int8",))
    print(f"Operating scores unchanged on {len(images)} films (largest difference 0)")
    print(f"Guard head against the Python guard: {json.dumps(record)}")
    print(f"Wrote {family.folder / files['rgb_int8']} and {args.metadata}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
