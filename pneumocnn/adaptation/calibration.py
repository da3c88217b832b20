"""Site calibration: a new operating threshold chosen on a labelled folder of the site's films.

`calibrate` records it where the model's threshold lives: a run folder's `threshold.json` (the
export then copies it into every file), or an exported family, rewritten consistently by
`pneumocnn.edge.recalibrate`.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumocnn.adaptation.site import check_site_folder
from pneumocnn.core.errors import DataError, UsageError
from pneumocnn.core.metadata import find_metadata, model_name
from pneumocnn.core.run_folder import is_run_dir, resolve_source, write_threshold
from pneumocnn.core.task import pneumonia_labels
from pneumocnn.data.folders import patient_id
from pneumocnn.data.split import load_evaluation_images
from pneumocnn.edge.family import Family, claim_family, read_family
from pneumocnn.edge.recalibrate import recalibrate
from pneumocnn.evaluation.metrics import pneumonia_figures
from pneumocnn.evaluation.reports import group_lines, interval_text
from pneumocnn.evaluation.thresholds import (
    choose_pneumonia_threshold,
    sensitivity_bound_threshold,
)
from pneumocnn.evaluation.uncertainty import point_estimate, uncertainty_of
from pneumocnn.runtime.runners import predict_probabilities

# Fewer films of a class than this, and a threshold chosen on them says nothing: one film more
# or less moves the sensitivity by a tenth or more, and the bootstrap interval collapses to a
# point (one film per class gave "sensitivity 1.0000 [1.0000-1.0000]").
MIN_FILMS_PER_CLASS = 10


def calibrate(
    model: str | Path,
    folder: str | Path,
    target_sensitivity: float = 0.96,
    confidence: float | None = None,
) -> dict[str, Any]:
    """Site calibration: chooses the operating threshold on a labelled folder from the site.

    The threshold is the one of best specificity whose sensitivity on the folder reaches the
    target; or, with `confidence`, the one whose sensitivity on new films of the site reaches
    the target with that confidence (the Neyman-Pearson order statistic of
    `pneumocnn.evaluation.thresholds.sensitivity_bound_threshold`: the model never learnt from
    the folder's films, so they stand for new ones). It is recorded, with the folder's name, its
    size, the achieved figures and their 95% patient-bootstrap intervals and the per-group
    breakdown, where the model's threshold lives: a run folder's `threshold.json` (the export then
    copies it into the metadata and every edge file), or an exported model's whole file family (see
    `pneumocnn.edge.recalibrate.recalibrate`): its RGB variant gets the threshold in its scores (one
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
        confidence: how sure the sensitivity must be to hold on new films, in (0, 1).
            Defaults to `None`: the plain point estimate on the folder.

    Returns:
        The calibration record (also written, see above).

    Raises:
        ValueError: if the target is not in (0, 1], the folder is training data (see
            `pneumocnn.adaptation.site.training_data_reason`), or holds fewer than
            `MIN_FILMS_PER_CLASS` readable films of a class.
        BusyError: if another calibration or export of the same exported family is running.
        UsageError: if an exported family's RGB variant was not made by this version.
        ParityError: if an exported model's retargeted RGB variant fails its check against the
            int8 model on the folder's films (nothing is written).
    """

    if not 0 < target_sensitivity <= 1:
        raise UsageError(
            "--target-sensitivity must be in (0, 1]. "
            f"Received: target_sensitivity={target_sensitivity}. Pass e.g. 0.96."
        )
    if not (Path(model).is_file() and not is_run_dir(Path(model).parent)):
        return _calibrate(model, folder, target_sensitivity, confidence, None)
    metadata_path = find_metadata(model)
    # Claimed before anything is run, so a second calibration or an export of the family is
    # refused at once; reading it completes a write of it that was killed, and verifies it.
    with claim_family(metadata_path.parent, model_name(metadata_path)):
        return _calibrate(model, folder, target_sensitivity, confidence, read_family(model))


def _calibrate(
    model: str | Path,
    folder: str | Path,
    target_sensitivity: float,
    confidence: float | None,
    family: Family | None,
) -> dict[str, Any]:
    """`calibrate`'s work, for a run folder or a claimed and verified exported `family`."""
    source = resolve_source(model)
    check_site_folder(folder, source.config.data_dir, "calibrate on", "calibrate_on")
    images, labels, skipped, root, paths = load_evaluation_images(source, "all", folder)
    counts = np.bincount(pneumonia_labels(labels), minlength=2)
    if counts.min() < MIN_FILMS_PER_CLASS:
        raise DataError(
            f"Calibration needs at least {MIN_FILMS_PER_CLASS} readable NORMAL and "
            f"{MIN_FILMS_PER_CLASS} pneumonia films; '{root}' has {int(counts[0])} NORMAL and "
            f"{int(counts[1])} pneumonia ({len(skipped)} unreadable). Received: "
            f"calibrate_on='{folder}'. Add labelled films of the site: with fewer, one film "
            "moves the sensitivity by a tenth or more."
        )
    probabilities = predict_probabilities(source.model_path, images)
    point = choose_pneumonia_threshold(labels, probabilities, target_sensitivity)
    bound = (
        sensitivity_bound_threshold(labels, probabilities, target_sensitivity, confidence)
        if confidence
        else None
    )
    threshold = bound["threshold"] if bound else point
    spread = uncertainty_of(labels, probabilities, threshold, paths)
    record = {
        "folder": Path(root).name,
        "films": int(len(labels)),
        "films_per_class": np.bincount(labels, minlength=len(source.class_names)).tolist(),
        "patients": spread["patients"],
        "unreadable_files": len(skipped),
        "model": source.model_path.name,
        "target_sensitivity": float(target_sensitivity),
        "confidence": confidence,
        "threshold": threshold,
        "bound": bound,
        "point_estimate": point_estimate(
            labels, probabilities, point, [patient_id(path) for path in paths]
        ),
        "achieved": pneumonia_figures(labels, probabilities, threshold),
        "intervals": spread["intervals"],
        "groups": spread["groups"],
        "note": "figures on the calibration folder itself, where the threshold was chosen: "
        "optimistic for it; films from elsewhere may score lower",
        "date": datetime.date.today().isoformat(),
    }
    rule = (
        f"sensitivity >= {target_sensitivity} on new films of {record['folder']} with "
        f"confidence {confidence}"
        if bound
        else f"target_sensitivity={target_sensitivity} on {record['folder']}"
    )
    if source.run_dir is not None:
        write_threshold(
            source.run_dir,
            threshold,
            rule,
            record["folder"],
            record["films"],
            record,
            model=source.model_path.name,
        )
    else:
        recalibrate(
            family,
            {"threshold": threshold, "threshold_rule": rule, "calibration": record},
            images,
            films=record["folder"],
        )
    return record


def format_calibration(record: dict[str, Any]) -> str:
    """A readable summary of a calibration record."""
    achieved, intervals = record["achieved"], record["intervals"]
    films = (
        f"{record['folder']} ({record['films']} films {record['films_per_class']}, "
        f"{record['patients']} patients)"
    )
    rule = (
        f"sensitivity >= {record['target_sensitivity']} on new films of the site with "
        f"confidence {record['confidence']}, from the {record['bound']['rank']}-th lowest of "
        f"{record['bound']['positives']} pneumonia scores of {films}"
        if record.get("bound")
        else f"the best specificity reaching sensitivity {record['target_sensitivity']} on {films}"
    )
    lines = [f"Threshold {record['threshold']:.4f}: {rule}"]
    for key in ("sensitivity", "specificity", "accuracy", "roc_auc"):
        low, high = intervals[key]
        lines.append(f"  {key:<12} {achieved[key]:.4f}  [95% {low:.4f}-{high:.4f}]")
    lines.append("  by group (share called right [95% interval]):")
    lines += group_lines(record["groups"])
    lines.append(f"  ({record['note']})")
    if record.get("bound"):
        point = record["point_estimate"]
        lines.append(
            f"  The point estimate would be {point['threshold']:.4f} (specificity "
            f"{point['specificity']:.4f}{interval_text(point, 'specificity', 4)} on these films, "
            "no guarantee on new ones)."
        )
    return "\n".join(lines)
