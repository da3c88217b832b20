"""Benchmarks: `python -m pneumocnn.bench` measures speed and size against the usual models.

The shipped int8 model against ResNet-50, DenseNet-121, MobileNetV2 and a tutorial CNN, each
exported to int8 `.tflite` the same way and timed in its own process on the same machine in the
same run, and the training throughput (see `pneumocnn.benchmark.suite`). Prints a markdown table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pneumocnn.core.locations import default_model_dir

# The benchmarks need TensorFlow: imported in `main` once the flags are read. A `--worker`
# process (one model timed alone) imports only LiteRT for a `.tflite`, so its peak memory is the
# model's own, and TensorFlow only for a `.keras`.


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m pneumocnn.bench", description=__doc__)
    parser.add_argument(
        "--model-dir",
        default=str(default_model_dir()),
        help="The exported pneumocnn model (default: saved_models, or $PNEUMOCNN_MODEL_DIR).",
    )
    parser.add_argument("--output-dir", default="runs/bench")
    parser.add_argument("--runs", type=int, default=50, help="Timed runs per measurement.")
    parser.add_argument("--quick", action="store_true", help="Smallest setting (smoke test).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from pneumocnn.benchmark.timing import measure_tflite, run_job

        job = json.loads(args.worker)
        if job["path"].endswith(".keras"):
            from pneumocnn.benchmark.keras_timing import measure_keras as measure
        else:
            measure = measure_tflite
        print(json.dumps(run_job(job, measure)))
        return 0
    from pneumocnn.benchmark.suite import markdown, run_benchmarks

    report = run_benchmarks(Path(args.model_dir), Path(args.output_dir), args.quick, args.runs)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
