"""Tables of the shift study, made from its saved results only (`experiments/shift/results`).

For every row: the mean and standard deviation over seeds, and a 95% bootstrap interval of the
seed mean (patients of the development half resampled, every seed scored on the same resample),
of:

- `dev_auc`: ROC AUC on the development half;
- `dev_acc`, `dev_sens`, `dev_spec`: at the threshold chosen on validation (Youden's J), the
  protocol that chose the old shipped model's threshold;
- `spec@96`: the best specificity at a threshold reaching 96% sensitivity, chosen on the
  development half itself (what site calibration on that half gives: optimistic for it);
- `normal_IM`, `normal_N2`: NORMAL recall of the `IM-` and `NORMAL2-` films at the validation
  threshold;
- `best_dev_epoch_auc`: the development-half AUC of the epoch that scored best there (checkpoint
  selection on the development half; optimistic for it; its interval is that epoch's, chosen
  once on all the films), beside `val_auc`, the validation AUC of
  the checkpoint selected on validation.

- `noise_mean`, `noise_p99`: how far the float checkpoint's P(pneumonia) moves on the
  development half when every pixel moves by one grey level (mean, and 99th percentile over films
  and draws), from `experiments/shift/shift_stability.py` where it was run; lower is steadier.

A second table averages seeds inside a row: for k = 2 and 3 seeds, the mean (and spread) over
every set of k seeds of the development-half AUC and `spec@96` of the averaged P(pneumonia),
with a 95% patient-bootstrap interval of that mean. It is computed from the saved
probabilities; no ensemble file is built (one would be k times the size and inference time of a
single model).

Example:

    python experiments/shift/shift_study.py --table
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pneumocnn.core.task import class_probabilities, pneumonia_probability
from pneumocnn.data.folders import patient_id
from pneumocnn.evaluation.metrics import pneumonia_figures, specificity_at_sensitivity
from pneumocnn.evaluation.thresholds import choose_threshold
from pneumocnn.evaluation.uncertainty import bootstrap_intervals

TARGET_SENSITIVITY = 0.96


def load_results(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def pneumonia_scores(outputs) -> np.ndarray:
    """P(pneumonia) of saved raw outputs: a sigmoid's `(n, 1)` or a softmax's `(n, classes)`."""
    return pneumonia_probability(class_probabilities(np.asarray(outputs, dtype=np.float64)))


def film_group(name: str, label: int) -> str:
    """`normal_IM`, `normal_N2`, `bacterial` or `viral` from a development-half file name."""
    if label == 0:
        return "normal_N2" if name.startswith("NORMAL2") else "normal_IM"
    return "viral" if "virus" in name else "bacterial"


def scores_of(result: dict) -> dict:
    """Per-film arrays of one result: the development half and validation."""
    dev, val = result["dev"], result["val"]
    return {
        "dev_labels": (np.asarray(dev["labels"]) > 0).astype(int),
        "dev_scores": pneumonia_scores(dev["outputs"]),
        "dev_epochs": [pneumonia_scores(outputs) for outputs in dev["per_epoch_outputs"]],
        "val_labels": (np.asarray(val["labels"]) > 0).astype(int),
        "val_scores": pneumonia_scores(val["outputs"]),
        "names": dev["names"],
    }


def figures(labels, scores, groups, val_threshold, epoch_scores) -> dict[str, float]:
    """The table's development-half figures for one model (see the module docstring);
    `epoch_scores`: the scores of the epoch that scored best there, or of every epoch to find
    it."""
    at_val = pneumonia_figures(labels, scores, val_threshold)
    out = {
        "dev_auc": at_val["roc_auc"],
        "dev_acc": at_val["accuracy"],
        "dev_sens": at_val["sensitivity"],
        "dev_spec": at_val["specificity"],
        "spec@96": specificity_at_sensitivity(labels, scores, TARGET_SENSITIVITY)
        if 0 < labels.sum() < len(labels)
        else np.nan,
    }
    predicted = scores >= val_threshold
    for group in ("normal_IM", "normal_N2"):
        mask = groups == group
        out[group] = float(np.mean(~predicted[mask])) if mask.any() else np.nan
    if epoch_scores:
        out["best_dev_epoch_auc"] = max(_auc(labels, s) for s in epoch_scores)
    return out


def best_epoch(labels, epoch_scores) -> list:
    """The scores of the epoch with the best development-half AUC (as a one-item list), or none:
    the bootstrap scores that epoch, chosen once on all the films."""
    if not epoch_scores:
        return []
    aucs = [_auc(labels, s) for s in epoch_scores]
    return [epoch_scores[int(np.argmax(aucs))]]


def row_table(results: list[dict], resamples: int = 500, seed: int = 0) -> pd.DataFrame:
    """One line per row: mean ± sd over seeds and a bootstrap interval of the seed mean."""
    by_row: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        by_row[result["row"]].append(result)
    lines = []
    for row, runs in by_row.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        parts = [scores_of(run) for run in runs]
        names = parts[0]["names"]
        labels = parts[0]["dev_labels"]
        groups = np.array([film_group(n, y) for n, y in zip(names, labels, strict=True)])
        patients = np.array([patient_id(name) for name in names])
        thresholds = [choose_threshold(p["val_labels"], p["val_scores"]) for p in parts]
        per_seed = [
            figures(labels, p["dev_scores"], groups, t, p["dev_epochs"])
            for p, t in zip(parts, thresholds, strict=True)
        ]

        best = [best_epoch(labels, p["dev_epochs"]) for p in parts]

        def seed_mean(
            index, parts=parts, thresholds=thresholds, labels=labels, groups=groups, best=best
        ):
            values = [
                figures(
                    labels[index],
                    p["dev_scores"][index],
                    groups[index],
                    t,
                    [scores[index] for scores in epoch],
                )
                for p, t, epoch in zip(parts, thresholds, best, strict=True)
            ]
            return {key: float(np.mean([v[key] for v in values])) for key in values[0]}

        intervals = bootstrap_intervals(seed_mean, patients, resamples=resamples, seed=seed)
        line = {"row": row, "seeds": ",".join(str(r["seed"]) for r in runs)}
        line["val_auc"] = _mean_sd([r["summary"]["val_auc"] for r in runs])
        for key in per_seed[0]:
            values = [figures_[key] for figures_ in per_seed]
            text = _mean_sd(values)
            if key in intervals:
                low, high = intervals[key]
                text += f" [{low:.3f}-{high:.3f}]"
            line[key] = text
        stability = [_stability(row, r["seed"]) for r in runs]
        stability = [entry for entry in stability if entry]
        for key, column in (("mean_change", "noise_mean"), ("p99_change", "noise_p99")):
            line[column] = _mean_sd([e[key] for e in stability]) if stability else "-"
        line["minutes"] = f"{np.mean([r['summary']['wall_seconds'] for r in runs]) / 60:.1f}"
        lines.append(line)
    return pd.DataFrame(lines)


def ensemble_table(
    results: list[dict], sizes: tuple[int, ...] = (2, 3), resamples: int = 200, seed: int = 0
) -> pd.DataFrame:
    """Per row: the development-half AUC and spec@96 of k averaged seeds for each k in `sizes`
    (see the module docstring), mean ± sd over the sets of k seeds [95% patient-bootstrap
    interval of that mean, `resamples` resamples: fewer than the row table's 500, since every
    resample scores every set]; "-" where a row has fewer than k seeds."""
    by_row: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        by_row[result["row"]].append(result)
    lines = []
    for row, runs in by_row.items():
        parts = [scores_of(run) for run in sorted(runs, key=lambda r: r["seed"])]
        labels = parts[0]["dev_labels"]
        patients = np.array([patient_id(name) for name in parts[0]["names"]])
        averages = {
            k: [np.mean([p["dev_scores"] for p in chosen], axis=0)
                for chosen in itertools.combinations(parts, k)]
            for k in sizes
        }  # fmt: skip

        def ensemble_figures(index, labels=labels, averages=averages) -> dict[str, float]:
            out = {}
            for k, sets in averages.items():
                if sets:
                    out[f"dev_auc, {k} seeds"] = float(
                        np.mean([_auc(labels[index], s[index]) for s in sets])
                    )
                    out[f"spec@96, {k} seeds"] = float(
                        np.mean([_spec_at_96(labels[index], s[index]) for s in sets])
                    )
            return out

        intervals = bootstrap_intervals(ensemble_figures, patients, resamples=resamples, seed=seed)
        line = {"row": row, "seeds": len(parts)}
        cells = {}
        for k, sets in averages.items():
            aucs = [_auc(labels, scores) for scores in sets]
            specs = [_spec_at_96(labels, scores) for scores in sets]
            for name, values in ((f"dev_auc, {k} seeds", aucs), (f"spec@96, {k} seeds", specs)):
                text = _mean_sd(values) if values else "-"
                if name in intervals:
                    low, high = intervals[name]
                    text += f" [{low:.3f}-{high:.3f}]"
                cells[name] = text
        line.update(sorted(cells.items(), key=lambda item: not item[0].startswith("dev_auc")))
        lines.append(line)
    return pd.DataFrame(lines)


def _auc(labels, scores) -> float:
    """ROC AUC as the Mann-Whitney U over the positive-negative pairs (ties count a half), as
    scikit-learn's `roc_auc_score` gives it, without its input checks: the bootstraps call it
    hundreds of thousands of times."""
    labels = np.asarray(labels).astype(bool)
    positive, negative = scores[labels], scores[~labels]
    return float(stats.mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def _spec_at_96(labels, scores) -> float:
    return (
        specificity_at_sensitivity(labels, scores, TARGET_SENSITIVITY)
        if 0 < labels.sum() < len(labels)
        else np.nan
    )


def _stability(row: str, seed: int) -> dict | None:
    path = Path(__file__).resolve().parent / "stability" / f"{row}-s{seed}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def markdown_tables(folder: Path) -> str:
    """Both tables as Markdown (what `--table` prints and `--write-tables` writes)."""
    results = load_results(folder)
    if not results:
        return f"No results in {folder} yet."
    blocks = []
    for table in (row_table(results), ensemble_table(results)):
        lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        lines += [
            "| " + " | ".join(str(value) for value in values) + " |"
            for values in table.itertuples(index=False)
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def print_tables(folder: Path) -> None:
    print(markdown_tables(folder))
