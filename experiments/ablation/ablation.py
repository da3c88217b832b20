"""The ablation study: each experiment is a `--config` file run with the package's own CLI.

For each `experiments/ablation/<name>.json` (and each `--seeds`), it runs

    python -m pneumocnn.train --config experiments/ablation/<name>.json --seed S \\
        --data-dir DATA --output-dir runs/ablation/<name>-s<S>
    python -m pneumocnn.evaluate runs/ablation/<name>-s<S> --split val
    python -m pneumocnn.export runs/ablation/<name>-s<S>   # into the run's export/ folder

and appends one row to `experiments/ablation/ablation_results.csv`: validation AUC, and accuracy,
sensitivity and specificity at the threshold chosen on validation, parameters, int8 `.tflite`
size, and training minutes. Rows already in the CSV are skipped, so the study resumes.

Example:

    python experiments/ablation/ablation.py --data-dir ../shared/chest_xray     # every experiment
    python experiments/ablation/ablation.py --data-dir ../shared/chest_xray --only base \\
        --seeds 1 2 3
    python experiments/ablation/ablation.py --table                            # Markdown table
    python experiments/ablation/ablation.py --write-tables     # into experiments/ablation/README.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from pneumocnn.core.metadata import DEFAULT_NAMES, model_files
from pneumocnn.core.run_folder import (
    CONFIG_FILE,
    EVAL_DIR,
    EXPORT_DIR,
    METRICS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
)

# The study's folder holds its configs and its results; runs go under the project root's runs/.
EXPERIMENTS = Path(__file__).resolve().parent
ROOT = EXPERIMENTS.parents[1]
RESULTS = EXPERIMENTS / "ablation_results.csv"
TABLES_START, TABLES_END = "<!-- ablation tables: start -->", "<!-- ablation tables: end -->"
# The base first, so every other row has its reference.
ORDER = ["base"]


def experiment_names() -> list[str]:
    names = sorted(path.stem for path in EXPERIMENTS.glob("*.json"))
    return ORDER + [name for name in names if name not in ORDER]


def changes_from_base(name: str) -> dict:
    """The fields in which experiment `name` differs from `base` (all of base's for base).

    Every file spells out the recipe fields it depends on (depth, augmentation, mixup, the
    schedule), so a later change of a `Config` default cannot change what a row means.
    """
    base = json.loads((EXPERIMENTS / "base.json").read_text())
    config = json.loads((EXPERIMENTS / f"{name}.json").read_text())
    if name == "base":
        return config
    return {key: value for key, value in config.items() if base.get(key) != value}


def run(command: list[str], log: Path) -> bool:
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        return (
            subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT).returncode
            == 0
        )


def run_experiment(name: str, seed: int, data_dir: str) -> dict:
    config_file = EXPERIMENTS / f"{name}.json"
    run_dir = ROOT / "runs" / "ablation" / f"{name}-s{seed}"
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    row = {"experiment": name, "seed": seed, "changes": json.dumps(changes_from_base(name))}
    if not (run_dir / SUMMARY_FILE).exists():
        resume = (
            ["--resume", str(run_dir)]
            if (run_dir / CONFIG_FILE).exists()
            else [
                "--config",
                str(config_file),
                "--seed",
                str(seed),
                "--data-dir",
                data_dir,
                "--output-dir",
                str(run_dir),
            ]
        )
        if not run([python, "-m", "pneumocnn.train", *resume], log):
            return {**row, "status": f"training failed (see {log.relative_to(ROOT)})"}
    if not run([python, "-m", "pneumocnn.evaluate", str(run_dir), "--split", "val"], log):
        return {**row, "status": "evaluation failed"}
    # export writes into the run's own export/ folder by default.
    exported = run([python, "-m", "pneumocnn.export", str(run_dir)], log)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    pinned = json.loads(config_file.read_text())
    differs = {key: (value, config[key]) for key, value in pinned.items() if config[key] != value}
    if differs:
        return {**row, "status": f"run config differs from {config_file.name}: {differs}"}
    # Where `evaluate RUN --split val` and `export RUN` write for a binary run.
    evaluation = run_dir / EVAL_DIR / f"{Path(MODEL_FILE).stem}-val"
    metrics = json.loads((evaluation / METRICS_FILE).read_text())
    at = metrics["at_threshold"]
    int8 = run_dir / EXPORT_DIR / model_files(DEFAULT_NAMES["binary"])["int8"]
    return {
        **row,
        "status": "ok" if exported else "int8 parity failed",
        "image_size": config["image_size"],
        "val_auc": metrics["roc_auc"],
        "val_accuracy": at["accuracy"],
        "val_sensitivity": at["sensitivity"],
        "val_specificity": at["specificity"],
        "threshold": at["threshold"],
        "ece": metrics["ece"],
        "parameters": summary["parameters"],
        "tflite_kb": round(int8.stat().st_size / 1024, 1) if exported else None,
        "epochs": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "train_minutes": round(summary["wall_seconds"] / 60, 1),
        "seconds_per_epoch": round(summary["seconds_per_epoch"], 1),
    }


def markdown_table(results: pd.DataFrame) -> str:
    columns = [
        "experiment",
        "seed",
        "val_auc",
        "val_accuracy",
        "val_sensitivity",
        "val_specificity",
        "parameters",
        "tflite_kb",
        "train_minutes",
    ]
    table = results[columns].copy()
    for column in ("val_auc", "val_accuracy", "val_sensitivity", "val_specificity"):
        table[column] = table[column].map("{:.4f}".format)
    # The CSV's `tflite_kb` is the file size / 1024: KiB, so the table says so.
    header = [column.replace("tflite_kb", "int8_kib") for column in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.to_numpy()]
    return "\n".join(lines)


def seed_summary(results: pd.DataFrame) -> str:
    """Mean and standard deviation over seeds of each experiment run on more than one seed."""
    metrics = ["val_auc", "val_accuracy", "val_sensitivity", "val_specificity"]
    ok = results[results["status"] == "ok"]
    repeated = ok.groupby("experiment").filter(lambda rows: rows["seed"].nunique() > 1)
    if repeated.empty:
        return ""
    lines = [
        "| experiment | seeds | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 2),
    ]
    for name, rows in repeated.groupby("experiment", sort=False):
        cells = [f"{rows[m].mean():.4f} ± {rows[m].std(ddof=1):.4f}" for m in metrics]
        seeds = ", ".join(str(seed) for seed in sorted(rows["seed"]))
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(results: pd.DataFrame) -> str:
    """The results table and, where an experiment has several seeds, their summary."""
    text = markdown_table(results)
    summary = seed_summary(results)
    if summary:
        text += "\n\nMean ± standard deviation over seeds:\n\n" + summary
    return text


def write_tables(path: Path, text: str) -> None:
    """Replaces what stands between the ablation-table markers of `path` with `text`."""
    content = path.read_text()
    if TABLES_START not in content or TABLES_END not in content:
        raise SystemExit(f"{path} has no '{TABLES_START}' ... '{TABLES_END}' markers.")
    before, rest = content.split(TABLES_START, 1)
    after = rest.split(TABLES_END, 1)[1]
    path.write_text(f"{before}{TABLES_START}\n{text}\n{TABLES_END}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "chest_xray"))
    parser.add_argument("--only", nargs="+", help="Experiment names (default: all).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--table", action="store_true", help="Print the results and stop.")
    parser.add_argument(
        "--write-tables",
        action="store_true",
        help="Write the tables between the markers of the study's README.md and stop.",
    )
    args = parser.parse_args()
    results = pd.read_csv(RESULTS) if RESULTS.exists() else pd.DataFrame()
    if args.table:
        print(tables(results))
        return 0
    if args.write_tables:
        write_tables(EXPERIMENTS / "README.md", tables(results))
        print(f"Wrote the ablation tables into {EXPERIMENTS / 'README.md'}")
        return 0
    for name in args.only or experiment_names():
        for seed in args.seeds:
            done = (
                not results.empty
                and ((results["experiment"] == name) & (results["seed"] == seed)).any()
            )
            if done:
                continue
            print(f"running {name} (seed {seed})", flush=True)
            row = run_experiment(name, seed, args.data_dir)
            print(row, flush=True)
            results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)
            results.to_csv(RESULTS, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
