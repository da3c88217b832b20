"""The shift study: which recipe holds up on another batch of films (the development half).

Validation carved from `train/` is saturated (every recipe 0.99+ AUC) and blind to how the
official test films differ, so recipes are compared here on the development half of the test
split (`<data-dir>/test`, 313 films), over several seeds. Each row is a file
`experiments/shift/<name>.json` that pins every recipe field it depends on. For each row and
seed, one fresh process trains with the package's own `pneumocnn.training.loop.train` (the same code
the CLI runs) into `runs/shift/<name>-s<seed>/`, scores the development half after every epoch (a
callback that only reads it: nothing is trained on it, and checkpoints are still selected on
validation), then saves `experiments/shift/results/<name>-s<seed>.json`: the float model's
probabilities for every validation film and every development-half film, per-epoch
development-half probabilities, and the run's summary. A run killed half-way resumes from its
backup; a finished row is skipped, so the study spans sittings. A distillation row names its
teachers as other rows' runs (`{runs_dir}/<row>-s<seed>/best.keras`): run those rows first. Tables
are made from the saved results only:

    python experiments/shift/shift_study.py --data-dir ../shared/chest_xray      # every row
    python experiments/shift/shift_study.py --data-dir ../shared/chest_xray --only framing --seeds 1
    python experiments/shift/shift_study.py --table                              # Markdown
    python experiments/shift/shift_study.py --write-tables   # into experiments/shift/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The study's folder holds its rows (`<name>.json`, `order.txt`) and its results.
ROWS = Path(__file__).resolve().parent
ROOT = ROWS.parents[1]
RESULTS = ROWS / "results"
DEFAULT_SEEDS = (1, 2, 3)


def row_names() -> list[str]:
    """The study's rows, in the order of `order.txt` (then any others, sorted)."""
    listed = (ROWS / "order.txt").read_text().split() if (ROWS / "order.txt").exists() else []
    others = sorted(p.stem for p in ROWS.glob("*.json") if p.stem not in listed)
    return [name for name in listed if (ROWS / f"{name}.json").exists()] + others


def row_fields(name: str, runs_dir: Path) -> dict:
    """A row's recipe fields; `{runs_dir}` in a text field (a distillation row's teachers, which
    are other rows' runs) becomes the study's runs folder."""
    fields = json.loads((ROWS / f"{name}.json").read_text())
    return {
        key: value.replace("{runs_dir}", str(runs_dir)) if isinstance(value, str) else value
        for key, value in fields.items()
    }


def result_path(name: str, seed: int) -> Path:
    return RESULTS / f"{name}-s{seed}.json"


# The run summary's entries a result file keeps.
SUMMARY_KEYS = (
    "best_epoch",
    "epochs_run",
    "val_auc",
    "parameters",
    "seconds_per_epoch",
    "wall_seconds",
)


def development_half(config, data_dir: str):
    """The data set, the task's class names, and the development half's films, labels and file
    names (the study scores every epoch on them; read only). Called in the training child only
    (see `run_one`)."""
    from pneumocnn.data.folders import find_dataset, label_for_task, list_images, task_class_names
    from pneumocnn.data.images import load_images

    dataset = find_dataset(data_dir)
    if dataset.test is None:
        raise SystemExit(f"No test/ folder under '{data_dir}': the study scores it.")
    class_names = task_class_names(config.task, dataset.class_names)
    dev_table = label_for_task(
        list_images((dataset.test,), dataset.class_names), dataset.class_names, config.task
    )
    dev_images, kept, skipped = load_images(dev_table["path"].tolist(), config.image_size)
    if skipped:
        raise SystemExit(f"Unreadable development-half films: {skipped}")
    dev_labels = dev_table["label"].to_numpy()[kept]
    dev_names = [Path(p).name for p in dev_table["path"]]
    return dataset, class_names, dev_images, dev_labels, dev_names


def run_one(name: str, seed: int, data_dir: str, runs_dir: Path) -> None:
    """Trains row `name` with `seed` and saves its result file (in this process)."""
    # Imported here, in the child process that trains one row (`--one`): the driver that runs
    # the rows one after another (`run_all`) stays without TensorFlow and its memory.
    import keras
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from pneumocnn.core.config import Config
    from pneumocnn.core.run_folder import CONFIG_FILE, MODEL_FILE, SPLIT_FILE, SUMMARY_FILE
    from pneumocnn.core.task import class_probabilities, pneumonia_probability
    from pneumocnn.data.split import load_split
    from pneumocnn.network.model import load_model
    from pneumocnn.training.loop import read_history, train

    fields = row_fields(name, runs_dir)
    run_dir = runs_dir / f"{name}-s{seed}"
    config = Config.from_dict(
        {**fields, "seed": seed, "data_dir": data_dir, "output_dir": str(run_dir)}
    )
    dataset, class_names, dev_images, dev_labels, dev_names = development_half(config, data_dir)
    epochs_dir = run_dir / "dev_epochs"

    class DevelopmentHalf(keras.callbacks.Callback):
        """Scores the development half after each epoch (read only), saving its outputs."""

        def on_epoch_end(self, epoch, logs=None):
            outputs = self.model.predict(dev_images.astype(np.float32), batch_size=64, verbose=0)
            epochs_dir.mkdir(parents=True, exist_ok=True)
            np.save(epochs_dir / f"epoch{epoch + 1:03d}.npy", outputs.astype(np.float32))
            if logs is not None:
                p = pneumonia_probability(class_probabilities(outputs))
                logs["dev_auc"] = float(roc_auc_score(dev_labels > 0, p))

    resume = (run_dir / CONFIG_FILE).exists() and not (run_dir / SUMMARY_FILE).exists()
    if not (run_dir / SUMMARY_FILE).exists():
        train(config, resume=resume, callbacks=[DevelopmentHalf()])
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    model = load_model(run_dir / MODEL_FILE)
    split = pd.read_csv(run_dir / SPLIT_FILE)
    val = load_split(split, "val", config.image_size, dataset.root)
    val_outputs = model.predict(val.images.astype(np.float32), batch_size=64, verbose=0)
    dev_outputs = model.predict(dev_images.astype(np.float32), batch_size=64, verbose=0)
    history = read_history(run_dir)
    per_epoch = [
        np.round(np.load(path).reshape(len(dev_labels), -1), 5).tolist()
        for path in sorted(epochs_dir.glob("epoch*.npy"))
    ]
    result = {
        "row": name,
        "seed": seed,
        "fields": fields,
        "config": json.loads((run_dir / CONFIG_FILE).read_text()),
        "class_names": list(class_names),
        "summary": {key: summary[key] for key in SUMMARY_KEYS},
        "history_dev_auc": history.get("dev_auc", pd.Series(dtype=float)).round(5).tolist(),
        "history_val_auc": history["val_auc"].round(5).tolist(),
        "val": {
            "names": [Path(p).name for p in val.paths],
            "labels": val.labels.tolist(),
            "outputs": np.round(val_outputs.reshape(len(val.labels), -1), 5).tolist(),
        },
        "dev": {
            "names": dev_names,
            "labels": dev_labels.tolist(),
            "outputs": np.round(dev_outputs.reshape(len(dev_labels), -1), 5).tolist(),
            "per_epoch_outputs": per_epoch,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = result_path(name, seed)
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result) + "\n")
    os.replace(temporary, target)


def run_all(names: list[str], seeds: list[int], data_dir: str, runs_dir: Path) -> None:
    """Runs every missing (row, seed), seeds in the outer loop so partial studies are even."""
    for seed in seeds:
        for name in names:
            if result_path(name, seed).exists():
                continue
            log = runs_dir / f"{name}-s{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            start = time.time()
            print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed} ...", flush=True)
            with open(log, "a") as handle:
                code = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        name,
                        str(seed),
                        "--data-dir",
                        data_dir,
                        "--runs-dir",
                        str(runs_dir),
                    ],
                    cwd=ROOT,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                ).returncode
            status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
            print(f"    {status} in {(time.time() - start) / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/chest_xray")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "shift"))
    parser.add_argument("--only", nargs="+", help="rows to run (default: every row)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--one", nargs=2, metavar=("ROW", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help="print the tables and exit")
    parser.add_argument(
        "--write-tables",
        nargs="?",
        const=str(ROWS / "README.md"),
        metavar="FILE",
        help="replace the tables between the shift-study markers of FILE (default: the study's "
        "README.md) and exit",
    )
    args = parser.parse_args(argv)
    if args.table or args.write_tables:
        from shift_tables import markdown_tables

        tables = markdown_tables(RESULTS)
        if not args.write_tables:
            print(tables)
            return 0
        readme = Path(args.write_tables)
        start, end = "<!-- shift-study tables: start -->", "<!-- shift-study tables: end -->"
        content = readme.read_text()
        if start not in content or end not in content:
            parser.error(f"{readme} has no '{start}' ... '{end}' markers to replace between")
        before, rest = content.split(start, 1)
        after = rest.split(end, 1)[1]
        readme.write_text(f"{before}{start}\n{tables}\n{end}{after}")
        print(f"Wrote the shift-study tables into {readme}")
        return 0
    if args.one:
        run_one(args.one[0], int(args.one[1]), args.data_dir, Path(args.runs_dir))
        return 0
    names = args.only or row_names()
    unknown = [name for name in names if not (ROWS / f"{name}.json").exists()]
    if unknown:
        parser.error(f"no such row(s) {unknown}; rows: {row_names()}")
    run_all(names, args.seeds, args.data_dir, Path(args.runs_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
