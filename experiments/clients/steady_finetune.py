"""Can the shipped model be made steadier between clients by a short fine-tune?

A stock client (MediaPipe, a phone) reads a film a little differently from `pneumocnn.predict`:
another JPEG decoder, a resize without antialiasing, a re-encode. A call near the threshold then
flips (`call_stability.py`). This fine-tunes a model on its own training films with each film
shown twice, as `pneumocnn.predict` reads it and as a client might (at random: resized without
antialiasing, re-encoded as JPEG at quality 90 or 80, or one grey level of noise), and a penalty
on the difference of the two log-odds of P(pneumonia) (consistency training), so the call moves
less when the pixels do. BatchNormalization stays frozen; no geometric augmentation.

It writes a run folder (rebuilt from the model's metadata by `experiments/tools/rebuild_run.py`,
the same patient-grouped split) holding the fine-tuned `best.keras`, `steady.json` with each
epoch's validation ROC AUC and consistency, and a `threshold.json` chosen without labels: the
threshold at which the fine-tuned model calls the same share of the `--films` folder PNEUMONIA
as the base model does at its stored threshold, so the two are compared at the same call rate.
Validation films (carved from `train/`) score it; the films of `--films` are only read for
their pixels, never their labels. Then measure it beside the base model:

    python experiments/clients/steady_finetune.py saved_models/pneumocnn.json \\
        saved_models/pneumocnn.keras runs/steady --films ../shared/chest_xray/test
    python experiments/clients/call_stability.py --model runs/steady/best.keras \\
        saved_models/pneumocnn.keras
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from pneumocnn.core.files import write_text_atomic
from pneumocnn.core.run_folder import MODEL_FILE, SPLIT_FILE, write_threshold
from pneumocnn.data.folders import find_dataset
from pneumocnn.data.images import read_grayscale, to_model_input
from pneumocnn.data.pipeline import class_weights
from pneumocnn.data.scan import require_inputs
from pneumocnn.evaluation.stability import jpeg_again, resize_without_antialiasing
from pneumocnn.network.model import load_model

HERE = Path(__file__).resolve().parent
CLIENTS = ("resize, no antialiasing", "jpeg q90", "jpeg q80", "one grey level")


def views(paths: list[str], side: int) -> tuple[np.ndarray, np.ndarray]:
    """Each film as `pneumocnn.predict` reads it `(n, side, side, 1)`, and as each client of
    `CLIENTS` but the noise (added per batch) reads it `(n, 3, side, side, 1)`."""
    read, client = [], []
    for index, path in enumerate(paths):
        gray = read_grayscale(path)
        read.append(to_model_input(gray, side))
        client.append(
            [
                resize_without_antialiasing(np.asarray(gray), side),
                jpeg_again(gray, 90, side),
                jpeg_again(gray, 80, side),
            ]
        )
        if (index + 1) % 1000 == 0:
            print(f"read {index + 1}/{len(paths)} films", flush=True)
    return np.stack(read), np.stack(client)


def log_odds(probability: tf.Tensor) -> tf.Tensor:
    p = tf.clip_by_value(probability, 1e-6, 1 - 1e-6)
    return tf.math.log(p) - tf.math.log1p(-p)


def client_batch(read: np.ndarray, client: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One client's reading of each film of a batch, drawn at random."""
    choice = rng.integers(0, len(CLIENTS), len(read))
    out = read.astype(np.float32).copy()
    for k in range(3):
        out[choice == k] = client[choice == k, k]
    noisy = choice == 3
    out[noisy] = np.clip(out[noisy] + rng.integers(-1, 2, out[noisy].shape), 0, 255)
    return out


def fine_tune(model, train, val, args) -> list[dict]:
    """The consistency fine-tune; returns each epoch's validation record."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    weights = class_weights(train["labels"], 2)
    weight_of = np.array([weights[0], weights[1]], np.float32)
    optimizer = keras.optimizers.Adam(args.learning_rate)
    rng = np.random.default_rng(args.seed)
    bce = keras.losses.BinaryCrossentropy(reduction="none")

    @tf.function
    def step(read, other, labels, sample_weight):
        with tf.GradientTape() as tape:
            both = model(tf.concat([read, other], 0), training=True)[:, 0]
            p_read, p_other = tf.split(both, 2)
            y = tf.cast(labels, tf.float32)[:, None]
            fit = bce(y, p_read[:, None]) + bce(y, p_other[:, None])
            gap = tf.square(log_odds(p_read) - log_odds(p_other))
            loss = tf.reduce_mean(sample_weight * 0.5 * fit) + args.weight * tf.reduce_mean(gap)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    history = [validate(model, val, rng, epoch=0)]
    print(json.dumps(history[-1]), flush=True)
    for epoch in range(1, args.epochs + 1):
        start, order = time.time(), rng.permutation(len(train["read"]))
        for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[first : first + args.batch_size]
            read = train["read"][batch]
            other = client_batch(read, train["client"][batch], rng)
            labels = train["labels"][batch]
            step(read.astype(np.float32), other, labels, weight_of[labels])
        history.append({**validate(model, val, rng, epoch), "seconds": round(time.time() - start)})
        print(json.dumps(history[-1]), flush=True)
    return history


def validate(model, val, rng, epoch: int) -> dict:
    """Validation ROC AUC, and how far the log-odds move between readings (median, 99th pct)."""
    read = model.predict(val["read"].astype(np.float32), batch_size=64, verbose=0)[:, 0]
    other = model.predict(client_batch(val["read"], val["client"], rng), batch_size=64, verbose=0)
    gap = np.abs(np.asarray(log_odds(read)) - np.asarray(log_odds(other[:, 0])))
    return {
        "epoch": epoch,
        "val_auc": round(float(roc_auc_score(val["labels"], read)), 4),
        "log_odds_gap_median": round(float(np.median(gap)), 4),
        "log_odds_gap_p99": round(float(np.percentile(gap, 99)), 4),
    }


def matched_threshold(base, tuned, films: list[Path], threshold: float, side: int) -> float:
    """The threshold at which `tuned` calls the same share of `films` PNEUMONIA as `base` does
    at `threshold` (labels unused)."""
    pixels = np.stack([to_model_input(read_grayscale(p), side) for p in films]).astype(np.float32)
    share = np.mean(base.predict(pixels, verbose=0)[:, 0] >= threshold)
    scores = tuned.predict(pixels, verbose=0)[:, 0]
    return float(np.quantile(scores, 1 - share))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metadata", type=Path)
    parser.add_argument("keras", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--films", type=Path, required=True, help="Pixels for the threshold.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--weight", type=float, default=1.0, help="Consistency weight.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.run_dir.exists():
        raise SystemExit(f"{args.run_dir} exists: pass a new run folder.")
    rebuild = HERE.parent / "tools" / "rebuild_run.py"
    subprocess.run(
        [sys.executable, str(rebuild), str(args.metadata), str(args.keras), str(args.run_dir)],
        check=True,
    )
    metadata = json.loads(args.metadata.read_text())
    side = int(metadata["image_size"])
    keras.utils.set_random_seed(args.seed)
    split = pd.read_csv(args.run_dir / SPLIT_FILE)
    root = find_dataset(json.loads((args.run_dir / "config.json").read_text())["data_dir"]).root
    sets = {}
    for subset in ("train", "val"):
        rows = split[split["subset"] == subset]
        read, client = views([str(Path(root) / p) for p in rows["path"]], side)
        sets[subset] = {"read": read, "client": client, "labels": rows["label"].to_numpy()}
    base = load_model(args.keras)
    model = load_model(args.run_dir / MODEL_FILE)
    history = fine_tune(model, sets["train"], sets["val"], args)
    model.save(args.run_dir / MODEL_FILE)
    films = require_inputs([str(args.films)])
    threshold = matched_threshold(base, model, films, metadata["threshold"], side)
    write_threshold(
        args.run_dir, threshold, "same call rate as the base model", args.films.name, len(films)
    )
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "history": history}
    write_text_atomic(args.run_dir / "steady.json", json.dumps(record, indent=1) + "\n")
    print(f"threshold {threshold:.4f}; wrote {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
