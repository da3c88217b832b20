"""How small must pneumocnn be to run 30 times faster than ResNet-50 int8? (issue: benchmarks)

Exports untrained variants of the model (speed does not depend on the weights) and ResNet-50 to
int8 `.tflite` by the same path as the shipped model, and times one-thread single-image
inference of each in its own process, like `python -m pneumocnn.bench`. Prints a Markdown
table; the accuracy of a variant comes from training it (see experiments/ablation/).

Example:

    python experiments/speed/speed_variants.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from pneumocnn.benchmark.reference import export_reference
from pneumocnn.benchmark.timing import measure_in_subprocess
from pneumocnn.core.config import Config
from pneumocnn.edge.convert import convert
from pneumocnn.network.model import build_model

VARIANTS = {
    "shipped (128 px, 16 filters, 5 blocks)": {},
    "160 px": {"image_size": 160},
    "112 px": {"image_size": 112},
    "96 px": {"image_size": 96},
    "64 px": {"image_size": 64},
    "128 px, 8 filters": {"base_filters": 8},
    "128 px, 24 filters": {"base_filters": 24},
    "128 px, 4 blocks": {"num_blocks": 4},
    # The second network of the adaptation issue (about the shipped one's parameters, wider
    # early layers), which fine-tuned to a better operating point on the withheld half.
    "160 px, 32 filters, 4 blocks": {"image_size": 160, "base_filters": 32, "num_blocks": 4},
    "128 px, 32 filters, 4 blocks": {"base_filters": 32, "num_blocks": 4},
}


def main() -> int:
    # No options: the parser answers --help (without it, the script would do its work).
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        reference, _ = export_reference("ResNet50", scratch, 16)
        resnet = measure_in_subprocess(reference, 1, 10, 50)["median_ms"]
        for name, changes in VARIANTS.items():
            config = dataclasses.replace(Config(), **changes)
            model = build_model(config)
            saved_model = scratch / f"variant{len(rows)}"
            model.export(str(saved_model), format="tf_saved_model", verbose=False)
            rng = np.random.default_rng(0)
            size = config.image_size
            calibration = rng.integers(0, 256, (16, size, size, 1)).astype(np.uint8)
            path = scratch / f"variant{len(rows)}.tflite"
            path.write_bytes(convert(saved_model, calibration))
            median = measure_in_subprocess(path, 1, 10, 50)["median_ms"]
            rows.append((name, model.count_params(), median, resnet / median))
    print(f"ResNet-50 int8, one thread: {resnet:.2f} ms per image (median of 50)\n")
    print("| variant | parameters | ms/image, 1 thread | times faster than ResNet-50 int8 |")
    print("|---|---|---|---|")
    for name, parameters, median, ratio in rows:
        print(f"| {name} | {parameters:,} | {median:.2f} | {ratio:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
