"""Benchmarks: `python -m pneumocnn.bench` measures speed and size against the usual models.

Inference, in one run on this machine: the shipped pneumocnn int8 `.tflite`, its fp16 `.tflite`
and `.keras`, against ResNet50, DenseNet121 and MobileNetV2 (`keras.applications`,
`weights=None`, one sigmoid unit, 224x224x3) and the keras.io pneumonia tutorial's CNN (rebuilt
from its description, 180x180x3), each exported to int8 `.tflite` by `pneumocnn.export.convert`,
the path the shipped model takes. For each: parameters, file size, median and p95 milliseconds
per image on one thread and on all threads, images per second, and peak memory; and the ratio to
pneumocnn's int8 model. Each measurement runs in its own process (so threads and peak memory are
its own), after a warm-up, as the median of repeated single-image runs.

Training: images per second of one training step for pneumocnn (also compiled with XLA, and
under mixed bfloat16) and the tutorial CNN at the same batch size, and of the input pipeline
alone (augmentation of cached images), which shows whether the model or the pipeline limits
training, against a pipeline that decodes the files every epoch (sequential, and parallel with
prefetch).

Writes `bench.json` and `bench.md` into `--output-dir` (default `runs/bench`) and prints the
Markdown tables.

Example:

    python -m pneumocnn.bench                 # everything (about ten minutes on two cores)
    python -m pneumocnn.bench --quick         # smallest setting: pneumocnn and the tutorial CNN
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pneumocnn.metadata import DEFAULT_NAMES, model_files
from pneumocnn.runners import default_model_dir

REFERENCE_MODELS = ("ResNet50", "DenseNet121", "MobileNetV2", "tutorial_cnn")


# --------------------------------------------------------------------------------------------
# The models people use instead.


def tutorial_cnn(image_size: int = 180):
    """The keras.io pneumonia tutorial's from-scratch CNN, rebuilt from its description.

    Two Conv2D(16), then SeparableConv2D blocks of 32, 64, 128 and 256 filters (two convs,
    BatchNormalization, max-pooling; dropout after the last two), then dense blocks of 512, 128
    and 64 units with dropout, and one sigmoid unit, on 180x180x3 inputs.
    """
    import keras
    from keras import layers

    def conv_block(x, filters):
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.SeparableConv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.BatchNormalization()(x)
        return layers.MaxPooling2D()(x)

    def dense_block(x, units, rate):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.BatchNormalization()(x)
        return layers.Dropout(rate)(x)

    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = layers.MaxPooling2D()(x)
    x = conv_block(x, 32)
    x = conv_block(x, 64)
    x = conv_block(x, 128)
    x = layers.Dropout(0.2)(x)
    x = conv_block(x, 256)
    x = layers.Dropout(0.2)(x)
    x = layers.Flatten()(x)
    x = dense_block(x, 512, 0.7)
    x = dense_block(x, 128, 0.5)
    x = dense_block(x, 64, 0.3)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="tutorial_cnn")


def reference_model(name: str, image_size: int | None = None):
    """A reference architecture with random weights and a one-unit sigmoid head."""
    import keras

    if name == "tutorial_cnn":
        return tutorial_cnn(image_size or 180)
    size = image_size or 224
    application = getattr(keras.applications, name)
    base = application(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
    outputs = keras.layers.Dense(1, activation="sigmoid", name="predictions")(base.output)
    return keras.Model(base.input, outputs, name=name)


def export_reference(
    name: str, work_dir: Path, calibration_count: int, image_size: int | None = None
) -> tuple[Path, int]:
    """Builds a reference model and exports it to int8 `.tflite` like pneumocnn's export.

    Calibration uses random 0-255 images: with random weights, the ranges are what matters.

    Returns:
        `(tflite_path, parameters)`.
    """
    from pneumocnn.export import convert

    model = reference_model(name, image_size)
    saved_model = work_dir / f"{name}_saved_model"
    model.export(str(saved_model), format="tf_saved_model", verbose=False)
    shape = model.input_shape[1:]
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (calibration_count, *shape)).astype(np.uint8)
    path = work_dir / f"{name}_int8.tflite"
    path.write_bytes(convert(saved_model, calibration))
    return path, int(model.count_params())


# --------------------------------------------------------------------------------------------
# One measurement, in its own process.


def _percentiles(times: list[float]) -> dict[str, float]:
    milliseconds = np.array(times) * 1000
    return {
        "median_ms": float(np.median(milliseconds)),
        "p95_ms": float(np.percentile(milliseconds, 95)),
    }


def measure_tflite(path: str, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Times single-image inference of a `.tflite` with LiteRT."""
    from pneumocnn.lite import open_interpreter

    interpreter = open_interpreter(path, threads)
    details = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, details["shape"]).astype(details["dtype"])
    times = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        interpreter.set_tensor(details["index"], image)
        interpreter.invoke()
        interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return _percentiles(times)


def measure_keras(path: str, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Times single-image inference of a `.keras` model (a traced function, on the CPU)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from pneumocnn.model import load_model

    model = load_model(path)
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (1, *model.input_shape[1:])).astype(np.float32))
    times = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        predict(image).numpy()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return _percentiles(times)


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB.

    Linux's VmHWM, which starts afresh at exec; `ru_maxrss` would carry over the parent's peak
    (the benchmark process, with every reference model loaded) into each measuring child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    measure = measure_keras if job["path"].endswith(".keras") else measure_tflite
    result = measure(job["path"], job["threads"], job["warmup"], job["runs"])
    result["peak_memory_mb"] = peak_memory_mb()
    return result


def measure_in_subprocess(path: Path, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    job = {"path": str(path), "threads": threads, "warmup": warmup, "runs": runs}
    completed = subprocess.run(
        [sys.executable, "-m", "pneumocnn.bench", "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"Benchmark of '{path}' failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Training speed.


def training_speed(
    model, batch_size: int, steps: int, repeats: int, jit_compile: bool = False
) -> float:
    """Median images per second of `train_on_batch` over `repeats` timings of `steps` steps.

    Args:
        model: an uncompiled Keras model.
        batch_size: images per step.
        steps: steps per timing.
        repeats: timings; the median is returned.
        jit_compile: compile the step with XLA. Defaults to False.
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=jit_compile
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, *model.input_shape[1:])).astype(np.float32)
    labels = rng.integers(0, 2, (batch_size, 1)).astype(np.float32)
    for _ in range(3):
        model.train_on_batch(images, labels)
    speeds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        speeds.append(steps * batch_size / (time.perf_counter() - started))
    return float(statistics.median(speeds))


def bfloat16_training_speed(config, batch_size: int, steps: int, repeats: int) -> float:
    """`training_speed` of pneumocnn under Keras's mixed_bfloat16 policy (restored after)."""
    import keras

    from pneumocnn.model import build_model

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        return training_speed(build_model(config), batch_size, steps, repeats)
    finally:
        keras.config.set_dtype_policy(previous)


def pipeline_speed(config, batches: int, repeats: int) -> float:
    """Median images per second of the training input pipeline alone (cached, augmented)."""
    from pneumocnn import data

    rng = np.random.default_rng(0)
    count = config.batch_size * 8
    images = rng.integers(0, 256, (count, config.image_size, config.image_size, 1)).astype(np.uint8)
    labels = rng.integers(0, 2, count).astype(np.int32)
    loaded = data.LoadedSplit(images, labels, [], [])
    train_ds, _, _ = data.make_datasets(config, loaded, loaded)
    return _batches_per_second(iter(train_ds.repeat()), batches, repeats) * config.batch_size


def _batches_per_second(iterator, batches: int, repeats: int) -> float:
    """Median batches per second of drawing `batches` batches, over `repeats` timings, after
    three warm-up batches."""
    for _ in range(3):
        next(iterator)
    speeds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        speeds.append(batches / (time.perf_counter() - started))
    return float(statistics.median(speeds))


def decode_each_epoch_speed(config, batches: int, repeats: int, parallel: bool) -> float:
    """Median images per second of a pipeline that decodes JPEG files every epoch, as
    `image_dataset_from_directory` pipelines do: read, decode, resize, batch, augment; with
    `parallel`, the maps run in parallel and batches are prefetched. The "before" of the cached
    pipeline that `pneumocnn.data.make_datasets` builds (`pipeline_speed`).

    The files are 224x224 JPEGs like the training data's, written to a temporary folder.
    """
    import tensorflow as tf
    from PIL import Image

    from pneumocnn import data

    rng = np.random.default_rng(0)
    calls = tf.data.AUTOTUNE if parallel else None
    augmentation = data.build_augmentation(config)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(config.batch_size * 8):
            path = Path(folder) / f"{index}.jpeg"
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))

        def decode(path):
            image = tf.io.decode_jpeg(tf.io.read_file(path), channels=1)
            return tf.image.resize(image, (config.image_size, config.image_size))

        dataset = (
            tf.data.Dataset.from_tensor_slices(paths)
            .repeat()
            .map(decode, num_parallel_calls=calls)
            .batch(config.batch_size)
            .map(lambda images: augmentation(images, training=True), num_parallel_calls=calls)
        )
        if parallel:
            dataset = dataset.prefetch(tf.data.AUTOTUNE)
        return _batches_per_second(iter(dataset), batches, repeats) * config.batch_size


# --------------------------------------------------------------------------------------------
# The whole run.


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
    from pneumocnn.config import Config
    from pneumocnn.metadata import load_metadata
    from pneumocnn.model import build_model

    files = model_files(DEFAULT_NAMES["binary"])
    metadata = load_metadata(model_dir / files["metadata"])
    warmup, runs = (2, 5) if quick else (10, runs)
    all_threads = os.cpu_count() or 1
    references = ("tutorial_cnn",) if quick else REFERENCE_MODELS
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        candidates = [
            ("pneumocnn int8", model_dir / files["int8"], metadata["training"]["parameters"]),
            ("pneumocnn fp16", model_dir / files["fp16"], metadata["training"]["parameters"]),
            ("pneumocnn .keras", model_dir / files["keras"], metadata["training"]["parameters"]),
        ]
        for name in references:
            path, parameters = export_reference(
                name, scratch, 4 if quick else 16, 64 if quick else None
            )
            candidates.append((f"{name} int8", path, parameters))
        for name, path, parameters in candidates:
            one = measure_in_subprocess(path, 1, warmup, runs)
            many = measure_in_subprocess(path, all_threads, warmup, runs)
            rows.append(
                {
                    "model": name,
                    "parameters": parameters,
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

    config = Config(image_size=64 if quick else metadata["image_size"])
    steps, repeats = (2, 2) if quick else (10, 5)
    batch_size = config.batch_size
    training = {
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
        "input_pipeline_images_per_second": pipeline_speed(config, 4 if quick else 30, repeats),
        "decode_each_epoch_images_per_second": decode_each_epoch_speed(
            config, 4 if quick else 30, repeats, parallel=False
        ),
        "decode_each_epoch_parallel_images_per_second": decode_each_epoch_speed(
            config, 4 if quick else 30, repeats, parallel=True
        ),
        "pneumocnn_image_size": config.image_size,
    }
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": all_threads,
            "python": platform.python_version(),
        },
        "quick": quick,
        "runs": runs,
        "inference": rows,
        "training": training,
    }
    (output_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "bench.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [
        f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPU "
        f"threads, Python {report['machine']['python']}; median of {report['runs']} runs.",
        "",
        "| model | parameters | file KB | ms/image 1 thread (median / p95) | ms/image all "
        "threads (median / p95) | images/s 1 thread | peak MB | size x | time x |",
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
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    report = run_benchmarks(Path(args.model_dir), Path(args.output_dir), args.quick, args.runs)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
