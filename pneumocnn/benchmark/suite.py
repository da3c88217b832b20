"""The whole benchmark run: every measurement of `python -m pneumocnn.bench`, and its tables.

`run_benchmarks` times the shipped int8 model against the reference models (see
`pneumocnn.benchmark.reference`), each in its own process (`pneumocnn.benchmark.timing`), on
the same machine in the same run, and the training throughput
(`pneumocnn.benchmark.training_speed`); `markdown` writes the tables.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from pneumocnn.benchmark.reference import REFERENCE_MODELS, export_reference, tutorial_cnn
from pneumocnn.benchmark.timing import measure_in_subprocess
from pneumocnn.benchmark.training_speed import (
    bfloat16_training_speed,
    decode_each_epoch_speed,
    pipeline_speed,
    training_speed,
)
from pneumocnn.core.config import Config
from pneumocnn.core.metadata import DEFAULT_NAMES, load_metadata, model_files
from pneumocnn.network.model import build_model


def run_benchmarks(
    model_dir: Path, output_dir: Path, quick: bool = False, runs: int = 50
) -> dict[str, Any]:
    """Runs every benchmark and writes `bench.json` and `bench.md` into `output_dir`.

    Args:
        model_dir: the exported pneumocnn model (`saved_models/`).
        output_dir: where to write.
        quick: the smallest setting (pneumocnn and the tutorial CNN at 64 px, few runs), for
            the smoke test. Defaults to False.
        runs: timed single-image runs per measurement. Defaults to 50.
    """
    metadata = load_metadata(model_dir / model_files(DEFAULT_NAMES["binary"])["metadata"])
    warmup, runs = (2, 5) if quick else (10, runs)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count() or 1,
            "python": platform.python_version(),
        },
        "quick": quick,
        "runs": runs,
        "inference": inference_rows(model_dir, metadata, quick, warmup, runs),
        "training": training_figures(metadata, quick),
    }
    (output_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "bench.md").write_text(markdown(report))
    return report


def inference_rows(
    model_dir: Path, metadata: dict[str, Any], quick: bool, warmup: int, runs: int
) -> list[dict[str, Any]]:
    """One row per model file: the shipped model's three forms and each reference model in
    int8, timed on one thread and on all, each in its own process, with their ratios to the
    shipped int8 file."""
    files = model_files(DEFAULT_NAMES["binary"])
    parameters = metadata["training"]["parameters"]
    all_threads = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        candidates = [
            (f"pneumocnn {label}", model_dir / files[role], parameters)
            for label, role in (("int8", "int8"), ("fp16", "fp16"), (".keras", "keras"))
        ]
        for name in ("tutorial_cnn",) if quick else REFERENCE_MODELS:
            path, count = export_reference(
                name, Path(scratch), 4 if quick else 16, 64 if quick else None
            )
            candidates.append((f"{name} int8", path, count))
        for name, path, count in candidates:
            one = measure_in_subprocess(path, 1, warmup, runs)
            many = measure_in_subprocess(path, all_threads, warmup, runs)
            rows.append(
                {
                    "model": name,
                    "parameters": count,
                    "file_bytes": path.stat().st_size,
                    "median_ms_1_thread": one["median_ms"],
                    "p95_ms_1_thread": one["p95_ms"],
                    "median_ms_all_threads": many["median_ms"],
                    "p95_ms_all_threads": many["p95_ms"],
                    "images_per_second_1_thread": 1000 / one["median_ms"],
                    "peak_memory_mb": max(one["peak_memory_mb"], many["peak_memory_mb"]),
                }
            )
    base = rows[0]
    for row in rows:
        row["size_ratio_to_pneumocnn_int8"] = row["file_bytes"] / base["file_bytes"]
        row["time_ratio_to_pneumocnn_int8"] = row["median_ms_1_thread"] / base["median_ms_1_thread"]
    return rows


def training_figures(metadata: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Images per second of the training step (plain, XLA, mixed bfloat16; the tutorial CNN's
    too) and of the input pipeline (decoded once and cached, or decoded every epoch)."""
    config = Config(image_size=64 if quick else metadata["image_size"])
    steps, repeats = (2, 2) if quick else (10, 5)
    batch_size, batches = config.batch_size, 4 if quick else 30
    return {
        "batch_size": batch_size,
        "pneumocnn_images_per_second": training_speed(
            build_model(config), batch_size, steps, repeats
        ),
        "pneumocnn_xla_images_per_second": training_speed(
            build_model(config), batch_size, steps, repeats, jit_compile=True
        ),
        "pneumocnn_bfloat16_images_per_second": bfloat16_training_speed(
            config, batch_size, steps, repeats
        ),
        "tutorial_cnn_images_per_second": training_speed(
            tutorial_cnn(64 if quick else 180), batch_size, steps, repeats
        ),
        "input_pipeline_images_per_second": pipeline_speed(config, batches, repeats),
        "decode_each_epoch_images_per_second": decode_each_epoch_speed(
            config, batches, repeats, parallel=False
        ),
        "decode_each_epoch_parallel_images_per_second": decode_each_epoch_speed(
            config, batches, repeats, parallel=True
        ),
        "pneumocnn_image_size": config.image_size,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [
        f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPU "
        f"threads, Python {report['machine']['python']}; median of {report['runs']} runs.",
        "",
        "| model | parameters | file KiB | ms/image 1 thread (median / p95) | ms/image all "
        "threads (median / p95) | images/s 1 thread | peak MiB | size x | time x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["inference"]:
        lines.append(
            f"| {row['model']} | {row['parameters']:,} | {row['file_bytes'] / 1024:,.0f} | "
            f"{row['median_ms_1_thread']:.2f} / {row['p95_ms_1_thread']:.2f} | "
            f"{row['median_ms_all_threads']:.2f} / {row['p95_ms_all_threads']:.2f} | "
            f"{row['images_per_second_1_thread']:,.0f} | {row['peak_memory_mb']:.0f} | "
            f"{row['size_ratio_to_pneumocnn_int8']:.1f} | "
            f"{row['time_ratio_to_pneumocnn_int8']:.1f} |"
        )
    training = report["training"]
    lines += [
        "",
        f"Training, batch {training['batch_size']}: pneumocnn "
        f"({training['pneumocnn_image_size']} px) "
        f"{training['pneumocnn_images_per_second']:.0f} images/s per training step "
        f"(with XLA {training['pneumocnn_xla_images_per_second']:.0f}, with mixed bfloat16 "
        f"{training['pneumocnn_bfloat16_images_per_second']:.0f}); tutorial "
        f"CNN {training['tutorial_cnn_images_per_second']:.0f} images/s. The input pipeline "
        f"alone (decoded once, cached, parallel augmentation, prefetch) "
        f"{training['input_pipeline_images_per_second']:.0f} images/s; decoding the JPEG files "
        f"every epoch instead: {training['decode_each_epoch_images_per_second']:.0f} images/s, "
        f"{training['decode_each_epoch_parallel_images_per_second']:.0f} with parallel maps and "
        "prefetch.",
        "",
    ]
    return "\n".join(lines)
