"""Evaluation: `python -m pneumocnn.evaluate [RUN_DIR | MODEL] --split val|test|all`.

Scores a run's `best.keras`, a `.keras` file, or an exported `.tflite` on the run's own
patient-grouped validation split, on a Kaggle `test/` folder, or on every image of a folder.
Writes `metrics.json` and PNG plots, and prints a summary. A subtype model (NORMAL / BACTERIAL /
VIRAL) gets its 3x3 confusion matrix, per-class and macro metrics, one-vs-rest AUCs, and the
pneumonia-vs-NORMAL metrics of the same model, comparable with a binary model's.

The decision threshold is chosen on the validation split only (Youden's J by default, or the
best specificity that reaches `--target-sensitivity`) and stored in the run folder as
`threshold.json`; the export copies it into the model's metadata. Reports give results at the
stored threshold and at 0.5.

Example:

    python -m pneumocnn.evaluate runs/20261122-003321 --split val
    python -m pneumocnn.evaluate saved_models/pneumocnn_int8.tflite \\
        --data-dir ../shared/chest_xray --split test
    python -m pneumocnn.evaluate runs/shipped --calibrate-on ../shared/chest_xray/test \\
        --target-sensitivity 0.96

Every report carries 95% bootstrap intervals (patients resampled, not films) of the
pneumonia-vs-NORMAL figures and a per-group breakdown (NORMAL `IM-` / `NORMAL2-`, bacterial,
viral). `--calibrate-on DIR` is the site calibration step: it chooses the threshold on a
labelled folder of the site's films and records it (see `calibrate`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pneumocnn import cli
from pneumocnn.runners import default_model
from pneumocnn.runs import EVAL_DIR, HISTORY_FILE, METRICS_FILE, SPLITS


def evaluate(
    model: str | Path,
    split: str = "val",
    data_dir: str | None = None,
    target_sensitivity: float | None = None,
    output_dir: str | Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Scores a model on a split and writes `metrics.json` and plots.

    The steps: find the model (`pneumocnn.runs.resolve_source`), load the split, run the model
    (`pneumocnn.runners`), choose or read the threshold, compute the metrics
    (`pneumocnn.metrics`), write the report and its plots (`pneumocnn.reports`).

    Args:
        model: a run folder, a `.keras` file, or an exported `.tflite`.
        split: "val" (the run's patient-grouped validation split), "test" (a Kaggle `test/`
            folder) or "all" (every development image of the folder). Defaults to "val".
        data_dir: the data folder. Defaults to `None`, the one the model was trained on.
        target_sensitivity: choose the threshold for this sensitivity on validation (run
            folders only). Defaults to `None`: Youden's J, or the stored threshold.
        output_dir: where to write. Defaults to `None`: `<run>/eval/<model>-<split>` or
            `runs/eval/<model>-<split>`.

    Returns:
        `(metrics, output_dir)`.

    Raises:
        ValueError: if `split` is unknown, or a new threshold is asked of an exported model.
        DataError: if the split has no readable image, or the data folder does not fit.
    """
    import pandas as pd

    from pneumocnn import data, reports, runs
    from pneumocnn.metadata import write_json_atomically
    from pneumocnn.metrics import compute_metrics
    from pneumocnn.runners import predict_probabilities

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    source = runs.resolve_source(model)
    images, labels, skipped, root, paths = runs.load_evaluation_images(source, split, data_dir)
    if len(labels) == 0:
        raise data.DataError(
            f"No readable images in the {split} split of '{root}'. Received: split='{split}', "
            f"data_dir='{data_dir}'. Point --data-dir at a folder with readable images."
        )
    probabilities = predict_probabilities(source.model_path, images)
    # Validation predictions double as the threshold's input; any other split never does.
    threshold = runs.ensure_threshold(
        source, target_sensitivity, (labels, probabilities) if split == "val" else None
    )
    report = compute_metrics(labels, probabilities, threshold, source.class_names)
    report["uncertainty"] = uncertainty_of(labels, probabilities, threshold, paths)
    report.update(
        model=str(source.model_path),
        split=split,
        data_dir=str(root),
        unreadable_files=len(skipped),
        unreadable=[p for p, _ in skipped],
    )
    if output_dir is None:
        base = source.run_dir / EVAL_DIR if source.run_dir else Path("runs") / EVAL_DIR
        output_dir = base / f"{source.model_path.stem}-{split}"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output_dir / METRICS_FILE, report)
    history_csv = source.run_dir / HISTORY_FILE if source.run_dir else None
    history = pd.read_csv(history_csv) if history_csv and history_csv.is_file() else None
    title = f"{source.model_path.name} on {split} ({len(labels)} images)"
    reports.write_plots(
        output_dir, labels, probabilities, report, source.class_names, history, title
    )
    return report, output_dir


def uncertainty_of(labels, probabilities, threshold: float, paths: list[str]) -> dict[str, Any]:
    """Patient-bootstrap intervals and the per-group breakdown (see
    `pneumocnn.metrics.uncertainty`), patients and groups read from the file names."""
    from pneumocnn import data
    from pneumocnn.metrics import uncertainty
    from pneumocnn.task import pneumonia_labels

    positive = pneumonia_labels(labels)
    return uncertainty(
        labels,
        probabilities,
        threshold,
        patients=[data.patient_id(path) for path in paths],
        groups=[
            data.film_group(path, bool(is_pneumonia))
            for path, is_pneumonia in zip(paths, positive, strict=True)
        ],
    )


def calibrate(
    model: str | Path, folder: str | Path, target_sensitivity: float = 0.96
) -> dict[str, Any]:
    """Site calibration: chooses the operating threshold on a labelled folder from the site.

    The threshold is the one of best specificity whose sensitivity on the folder reaches the
    target. It is recorded, with the folder's name, its size, the achieved figures and their
    95% patient-bootstrap intervals and the per-group breakdown, where the model's threshold
    lives: a run folder's `threshold.json` (the export then copies it into the metadata and
    every edge file), or an exported model's whole file family (see
    `pneumocnn.export.recalibrate`): its RGB variant gets the threshold in its scores (one
    constant of its float head; its int8 network is untouched) and is checked against the int8
    model on the folder's films, the TFLite metadata embedded in each `.tflite` names the new
    threshold, and the metadata `<name>.json` records it with the new checksums; all written
    atomically, metadata last.

    Args:
        model: a run folder, or an exported `.tflite`/`.keras` with its metadata.
        folder: a labelled folder of films from the site: one subfolder per class (NORMAL/,
            PNEUMONIA/; for a subtype model the pneumonia films' names carry the subtype).
        target_sensitivity: the sensitivity the threshold must reach on the folder. Defaults
            to 0.96.

    Returns:
        The calibration record (also written, see above).

    Raises:
        ValueError: if the target is not in (0, 1], the folder is a training-data folder
            (it holds `train/`) or lacks a class.
        UsageError: if an exported family's RGB variant was not made by this version.
        ParityError: if an exported model's retargeted RGB variant fails its check against the
            int8 model on the folder's films (nothing is written).
    """
    import datetime

    import numpy as np

    from pneumocnn import data, runs
    from pneumocnn.metadata import write_json_atomically
    from pneumocnn.metrics import choose_pneumonia_threshold, pneumonia_figures
    from pneumocnn.runners import predict_probabilities
    from pneumocnn.task import pneumonia_labels

    if not 0 < target_sensitivity <= 1:
        raise cli.UsageError(
            "--target-sensitivity must be in (0, 1]. "
            f"Received: target_sensitivity={target_sensitivity}. Pass e.g. 0.96."
        )
    if (Path(folder) / "train").is_dir():
        raise cli.UsageError(
            f"'{folder}' holds train/: calibrate on films from the site, not on training data. "
            f"Received: calibrate_on='{folder}'. Pass a folder of class subfolders (e.g. "
            "chest_xray/test)."
        )
    family = None
    if Path(model).is_file() and not runs.is_run_dir(Path(model).parent):
        from pneumocnn import export

        # Before anything is run: it completes an interrupted recalibration and verifies the
        # family's checksums.
        family = export.read_family(model)
    source = runs.resolve_source(model)
    images, labels, skipped, root, paths = runs.load_evaluation_images(source, "all", folder)
    if len(np.unique(pneumonia_labels(labels))) < 2:
        raise data.DataError(
            f"Calibration needs NORMAL and pneumonia films; '{root}' has "
            f"{np.bincount(labels, minlength=len(source.class_names)).tolist()} films per class "
            f"{source.class_names}. Received: calibrate_on='{folder}'."
        )
    probabilities = predict_probabilities(source.model_path, images)
    threshold = choose_pneumonia_threshold(labels, probabilities, target_sensitivity)
    spread = uncertainty_of(labels, probabilities, threshold, paths)
    record = {
        "folder": Path(root).name,
        "films": int(len(labels)),
        "films_per_class": np.bincount(labels, minlength=len(source.class_names)).tolist(),
        "patients": spread["patients"],
        "unreadable_files": len(skipped),
        "model": source.model_path.name,
        "target_sensitivity": float(target_sensitivity),
        "threshold": threshold,
        "achieved": pneumonia_figures(labels, probabilities, threshold),
        "intervals": spread["intervals"],
        "groups": spread["groups"],
        "note": "figures on the calibration folder itself, where the threshold was chosen: "
        "optimistic for it; films from elsewhere may score lower",
        "date": datetime.date.today().isoformat(),
    }
    rule = f"target_sensitivity={target_sensitivity} on {record['folder']}"
    if source.run_dir is not None:
        write_json_atomically(
            source.run_dir / runs.THRESHOLD_FILE,
            {
                "threshold": threshold,
                "rule": rule,
                "chosen_on": record["folder"],
                "images": record["films"],
                "model": source.model_path.name,
                "calibration": record,
            },
        )
    else:
        from pneumocnn import export

        export.recalibrate(
            family,
            {"threshold": threshold, "threshold_rule": rule, "calibration": record},
            images,
            probabilities if source.model_path.name == family.files["int8"] else None,
            films=record["folder"],
        )
    return record


def format_calibration(record: dict[str, Any]) -> str:
    """A readable summary of a calibration record."""
    achieved, intervals = record["achieved"], record["intervals"]
    lines = [
        f"Threshold {record['threshold']:.4f}: the best specificity reaching sensitivity "
        f"{record['target_sensitivity']} on {record['folder']} ({record['films']} films "
        f"{record['films_per_class']}, {record['patients']} patients)"
    ]
    for key in ("sensitivity", "specificity", "accuracy", "roc_auc"):
        low, high = intervals[key]
        lines.append(f"  {key:<12} {achieved[key]:.4f}  [95% {low:.4f}-{high:.4f}]")
    lines.append(
        "  by group: "
        + ", ".join(
            f"{name} {row['recall']:.3f} of {row['films']}"
            for name, row in record["groups"].items()
        )
    )
    lines.append(f"  ({record['note']})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.evaluate",
        description="Score a run folder, .keras or .tflite model; write metrics.json and plots.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=str(default_model()),
        help="Run folder, .keras or .tflite (default: the shipped int8 model, "
        "saved_models/pneumocnn_int8.tflite, or the one in $PNEUMOCNN_MODEL_DIR).",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="val",
        help="val: the run's validation split; test: a Kaggle test/ folder; "
        "all: every development image of --data-dir (default: val).",
    )
    parser.add_argument("--data-dir", help="Data folder (default: the one the model trained on).")
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        help="Choose the threshold reaching this sensitivity on validation "
        "(default: maximise Youden's J).",
    )
    parser.add_argument("--output-dir", help="Where to write metrics.json and the plots.")
    parser.add_argument(
        "--calibrate-on",
        metavar="DIR",
        help="Site calibration: choose the threshold reaching --target-sensitivity (default "
        "0.96) on this labelled folder of the site's films (NORMAL/, PNEUMONIA/) and record it, "
        "with the folder, its size and the achieved figures' intervals, in the run's "
        "threshold.json, or in an exported model's files (the RGB variant's threshold, "
        "embedded TFLite metadata and pneumocnn.json rewritten).",
    )
    return parser


def _command(args: argparse.Namespace) -> int:
    from pneumocnn.reports import format_summary

    if args.calibrate_on:
        target = 0.96 if args.target_sensitivity is None else args.target_sensitivity
        print(format_calibration(calibrate(args.model, args.calibrate_on, target)))
        return cli.EXIT_OK
    report, output_dir = evaluate(
        args.model, args.split, args.data_dir, args.target_sensitivity, args.output_dir
    )
    print(format_summary(report))
    print(f"Wrote {output_dir / METRICS_FILE} and plots to {output_dir}")
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
