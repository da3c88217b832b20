"""The model card: what a model is for, what it saw, how it scores, where it fails.

`model_card(metadata)` renders Markdown from a model's metadata (`<name>.json`), so the card
and the model never disagree: the export writes it beside the model (`MODEL_CARD.md` for the
binary model named `pneumocnn`, `<name>_MODEL_CARD.md` for any other, see `card_file`), and the
app renders it from the metadata it loaded. Figures the metadata does not hold (the development
half of the test split, a site calibration) are said to be "not measured", never left out.
Standard library only, so the edge install can render it too.

Example:


>>> text = model_card({"name": "pneumocnn", "class_names": ["NORMAL", "PNEUMONIA"],
...                    "threshold": 0.27, "image_size": 160})
>>> "Performance on films from other hospitals is unknown" in text
True
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pneumocnn.core.task import Task

CARD_FILE = "MODEL_CARD.md"
# The two findings of the shift study (issue #15) that the card reports as failure modes.
SHIFT_FINDINGS = (
    "**Framing and exposure shortcuts.** The official test films come from another batch than "
    "the training films: tighter framing and brighter borders. The model partly reads those "
    "as signs of pneumonia, so a tightly framed or bright-bordered NORMAL film looks like "
    "PNEUMONIA to it. On the development half of the test split the previous shipped model "
    "called PNEUMONIA 26% of the NORMAL films named `IM-` and 47% of those named `NORMAL2-` "
    "(two batches of NORMAL films)."
)
XIN_2021 = (
    "Performance on films from other hospitals is unknown: this model has never been "
    "scored on them. Expect it to be much worse. A ResNet-50 trained on this same data set fell "
    "from ROC AUC 0.95 on its test split to 0.54, close to chance, on 383 films of children "
    'aged one to five from the NIH ChestX-ray14 data set (Xin, Li and Yi, "Limited '
    "generalizability of deep learning algorithm for pediatric pneumonia classification on "
    'external data", Emergency Radiology, 2021; doi:10.1007/s10140-021-01954-x).'
)
NOT_MEASURED = "not measured"


def card_file(name: str) -> str:
    """The card's file name for the exported model `name`.

    Example:

    >>> card_file("pneumocnn"), card_file("pneumocnn_subtype")
    ('MODEL_CARD.md', 'pneumocnn_subtype_MODEL_CARD.md')
    """
    return CARD_FILE if name == "pneumocnn" else f"{name}_{CARD_FILE}"


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _percent(fraction: Any) -> str:
    """A fraction as a percentage with one decimal ("-" when missing).

    >>> _percent(0.0105), _percent(None)
    ('1.1%', '-')
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or math.isnan(fraction):
        return _number(fraction)
    return f"{100 * fraction:.1f}%"


def _with_interval(figures: dict[str, Any], key: str) -> str:
    value = _number(figures.get(key))
    interval = (figures.get("intervals") or {}).get(key)
    if interval and len(interval) == 2 and None not in interval:
        return f"{value} ({_number(interval[0])}-{_number(interval[1])})"
    return value


FIGURES = (
    ("roc_auc", "ROC AUC"),
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
)


def _by_model(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"int8": figures, "float": figures}` from an entry shaped either way (one set of
    figures, or one per model file)."""
    if "roc_auc" in entry:
        return {"int8": entry}
    return {key: value for key, value in entry.items() if isinstance(value, dict)}


def _figures_table(entry: dict[str, Any] | None, what: str) -> list[str]:
    if not entry:
        return [f"{what}: {NOT_MEASURED}.", ""]
    models = _by_model(entry)
    lines = [
        "| model | films | " + " | ".join(title for _, title in FIGURES) + " | threshold |",
        "|---|---|" + "---|" * len(FIGURES) + "---|",
    ]
    for model, figures in models.items():
        cells = [_with_interval(figures, key) for key, _ in FIGURES]
        lines.append(
            f"| {model} | {_number(figures.get('images', figures.get('films')))} | "
            + " | ".join(cells)
            + f" | {_number(figures.get('threshold'), 4)} |"
        )
    if any(figures.get("intervals") for figures in models.values()):
        lines += ["", "In brackets: 95% bootstrap intervals, resampling patients."]
    groups = next((figures["groups"] for figures in models.values() if figures.get("groups")), None)
    lines += [""] + _groups_table(groups)
    return lines


def _groups_table(groups: dict[str, Any] | None) -> list[str]:
    if not groups:
        return [f"Per-group breakdown: {NOT_MEASURED}.", ""]
    lines = [
        "By group (share of the group's films called right, pneumonia vs NORMAL):",
        "",
        "| group | films | called right |",
        "|---|---|---|",
    ]
    for name, row in groups.items():
        count = row.get("films", row.get("count"))
        lines.append(f"| {name} | {_number(count)} | {_number(row.get('recall'))} |")
    return lines + [""]


def _calibration(metadata: dict[str, Any]) -> list[str]:
    threshold = metadata.get("threshold")
    rule = metadata.get("threshold_rule", "")
    lines = [
        f"The label is pneumonia when P(pneumonia) reaches **{_number(threshold, 4)}** "
        f"({rule or 'rule not recorded'}).",
        "",
    ]
    record = metadata.get("calibration")
    if record and record.get("model") == "out-of-fold":
        lines += _out_of_fold(record)
    elif record:
        achieved = {**(record.get("achieved") or {}), "intervals": record.get("intervals")}
        if record.get("bound"):
            lines += [_promise(record), ""]
        lines += [
            f"It was calibrated for a site on `{record.get('folder')}` "
            f"({_number(record.get('films'))} films): "
            + (
                "the threshold above"
                if record.get("bound")
                else f"the best specificity reaching sensitivity "
                f"{_number(record.get('target_sensitivity'), 2)}"
            )
            + f" gave {_number(record.get('threshold'), 4)}, with, on that folder (optimistic: "
            "it is where the threshold was chosen):",
            "",
            "| figure | value (95% interval) |",
            "|---|---|",
            *(
                f"| {title} | {_with_interval(achieved, key)} |"
                for key, title in FIGURES
                if key in achieved
            ),
            "",
            *_groups_table(record.get("groups")),
        ]
    else:
        lines += [
            f"Site calibration: {NOT_MEASURED}. The threshold was chosen on the validation "
            "split, the same batch of films as training; on another batch it gives a different "
            "sensitivity and specificity.",
            "",
        ]
    lines += [
        "**To recalibrate it for a site**, label a few hundred of the site's own films into "
        "`NORMAL/` and `PNEUMONIA/` folders and run:",
        "",
        "```",
        "python -m pneumocnn.evaluate MODEL --calibrate-on DIR --target-sensitivity 0.96",
        "```",
        "",
        "It picks the threshold of best specificity that reaches the target sensitivity on "
        "those films and records it, with the folder, its size, the achieved figures, their "
        "intervals and the per-group breakdown, in the model's metadata (or a run's "
        "`threshold.json`, which the export copies).",
        "",
    ]
    return lines


def _guard(metadata: dict[str, Any]) -> list[str]:
    entry = metadata.get("guard")
    lines = [
        "Every input goes through the input guard first (`pneumocnn.runtime.guard`): a blank, "
        "tiny, strip-shaped or strongly coloured image is refused with the reason; an image unlike "
        "the training films is classified but flagged, with an out-of-distribution score "
        "(1.0 = the 99th percentile of the validation films).",
        "",
    ]
    if entry:
        fitted = entry.get("fitted_on") or {}
        lines += [
            f"Score: {entry.get('method', '')}. Fitted on {_number(fitted.get('train_images'))} "
            f"training films; flags {_percent(fitted.get('val_flagged'))} of the "
            f"{_number(fitted.get('val_images'))} validation films.",
            "",
        ]
    else:
        lines += [f"Out-of-distribution score: {NOT_MEASURED} (refusal checks only).", ""]
    return lines + _guard_clients(metadata)


def _guard_clients(metadata: dict[str, Any]) -> list[str]:
    """Where the guard runs: every client of the family, and what a stock classifier misses."""
    rgb = metadata.get("edge", {}).get("rgb_variant", {})
    head = rgb.get("guard_head")
    lines = [
        "Where it runs: `pneumocnn.predict`, the app and `LiteModel` (Python), and the web page "
        "(the same checks in JavaScript, `web/guard.js`, reading this metadata).",
    ]
    if head:
        record = head.get("agreement_with_guard", {})
        lines[0] += (
            f" A stock image classifier gets it from `{rgb.get('file')}` itself: its second "
            f"output names '{head['labels'][1]}' for an out-of-distribution, near-constant or "
            "strongly coloured input (it sees the image as the client resized it, so a tiny or "
            "strip-shaped image is caught only when it also looks unlike a film); it says what "
            f"the Python guard says on {_percent(record.get('agreement'))} of the "
            f"{_number(record.get('images'))} {record.get('films', 'validation')} films."
        )
    elif rgb:
        lines[0] += (
            f" Not in a stock image classifier: `{rgb.get('file')}` has no guard head (exported "
            "before it); such a client must run the checks itself."
        )
    return [*lines, ""]


def model_card(metadata: dict[str, Any]) -> str:
    """The model card of an exported model, as Markdown.

    Args:
        metadata: the model's metadata (see `pneumocnn.core.metadata`). Renders what it holds:
            `validation_metrics`, `development_half` (figures on the development half of the
            test split, with `intervals` `{figure: [low, high]}` and `groups` `{group:
            {films, recall}}`, one set or one per model file), `calibration` (a site
            calibration record), `guard`, `training_data`, `parity`, `training`, `config`;
            anything absent is said to be not measured.

    Returns:
        The card's Markdown text.
    """
    name = metadata.get("name", "pneumocnn")
    task = Task.of_metadata(metadata)
    classes, subtype = list(task.class_names), task.subtype
    size = metadata.get("image_size")
    data = metadata.get("training_data") or {}
    config = metadata.get("config") or {}
    files = metadata.get("files") or {}
    sizes = metadata.get("file_bytes") or {}
    parity = metadata.get("parity") or {}
    training = metadata.get("training") or {}
    made = ", ".join(
        str(metadata[key]) for key in ("package_version", "created") if metadata.get(key)
    )
    lines = [
        f"# Model card: {name}",
        "",
        f"Generated from `{name}.json` by `python -m pneumocnn.export`"
        + (f" (pneumocnn {made})" if made else "")
        + ". A research tool, **not a medical device**: it gives no diagnosis.",
        "",
        "## The model",
        "",
        f"- Task: {' / '.join(classes)} from one frontal chest film"
        + (
            " (pneumonia when P(pneumonia) = 1 - P(NORMAL) reaches the threshold, then the "
            "likelier subtype)."
            if subtype
            else "."
        ),
        f"- A small convolutional network trained from scratch "
        f"({_number(training.get('parameters'))} parameters, {config.get('num_blocks', '?')} "
        f"blocks, input {size}x{size} grayscale, raw 0-255 pixels).",
    ]
    if files:
        shipped = ", ".join(
            f"`{files[role]}` ({_number(sizes.get(files[role]))} bytes)"
            for role in ("int8", "fp16", "rgb_int8", "keras")
            if role in files
        )
        lines.append(f"- Files: {shipped}.")
    if parity:
        agreement = _number(100 * parity.get("agreement", math.nan), 2)
        calls = (
            f"; on {_number(100 * parity['pneumonia_agreement'], 2)}% of its pneumonia-vs-NORMAL "
            "calls"
            if subtype and "pneumonia_agreement" in parity
            else ""
        )
        lines.append(
            f"- The int8 model agrees with the float model on {agreement}% of validation "
            f"decisions{calls} (ROC AUC {_number(parity.get('auc_drop'), 5)} lower)."
        )
    conversion = metadata.get("int8_conversion")
    if conversion:
        equalized = (
            "from its activation-equalized form (the same float function, each channel "
            "stretched to share int8's range)"
            if conversion.get("equalization")
            else "as trained, without activation equalization"
        )
        lines.append(
            f"- The int8 files were converted {equalized}, calibrated on "
            f"{_number(conversion.get('calibration_images'))} training films."
        )
    stability = metadata.get("stability")
    if stability:
        lines.append(
            f"- **Calls near the threshold are fragile.** One grey level of pixel noise (what "
            f"another JPEG decoder or resizer does) moves P(pneumonia) by "
            f"{_number(stability.get('mean_change'), 3)} on average and by up to "
            f"{_number(stability.get('p99_change'), 3)} on 99% of {stability.get('films_used')} "
            f"films: a call within that distance of the threshold may differ between apps. "
            "Feed the model pixels loaded as `pneumocnn.data.images.load_image` does."
        )
    lines += [
        "",
        "## Intended use and users",
        "",
        "- **Use:** research on, and teaching of, automated reading of paediatric chest films; "
        "engineering of small on-device models; a second opinion inside a research protocol "
        "in which a clinician reads every film.",
        "- **Users:** machine-learning researchers and engineers; clinicians and researchers "
        "only within such a protocol.",
        "- **Input:** one frontal (anterior-posterior) chest radiograph of a child aged one to "
        "five, as JPEG, PNG or DICOM.",
        "",
        "## What it must not be used for",
        "",
        "- Diagnosis, triage or treatment decisions for any patient, or in place of a "
        "clinician's reading. It is not a medical device and has no regulatory clearance.",
        "- Adults, infants under one, older children, lateral films, other body parts, CT, or "
        "diseases other than pneumonia (tuberculosis, COVID-19, effusion, ...): it has never "
        "seen them and answers NORMAL or PNEUMONIA regardless.",
        "- Films from another hospital, scanner or protocol without first measuring it there "
        "and recalibrating the threshold (below).",
        "- Telling bacterial from viral pneumonia for care decisions"
        + (": the subtype is a hint, not a finding." if subtype else "."),
        "",
        "## Data",
        "",
        '- Source: Kermany et al., "Identifying Medical Diagnoses and Treatable Diseases by '
        'Image-Based Deep Learning", Cell 172(5), 2018; Mendeley Data v2 '
        '(doi:10.17632/rscbjbr9sj.2), as the Kaggle data set "Chest X-Ray Images (Pneumonia)". '
        "Licence: CC BY 4.0.",
        "- Patients: children aged one to five, from **one centre**: Guangzhou Women and "
        "Children's Medical Center, Guangzhou, China. Anterior-posterior films, graded by "
        "two expert physicians (the data set's evaluation films also by a third).",
        f"- Training: {_number(data.get('train_images'))} films; validation: "
        f"{_number(data.get('val_images'))} films of other patients "
        f"({data.get('split', 'patient-grouped split')}); "
        f"{_number(data.get('unreadable_files'))} unreadable files skipped.",
        "- The development half of the official test split (313 films of another batch) is "
        "used to choose recipes and is reported below; the other half is withheld.",
        "",
        "## Performance",
        "",
        "Pneumonia vs NORMAL"
        + (" (the subtype model's pneumonia call)" if subtype else "")
        + f", at the threshold {_number(metadata.get('threshold'), 4)} unless stated.",
        "",
        "### Validation (the training batch, other patients)",
        "",
        *_figures_table(metadata.get("validation_metrics"), "Validation"),
        "Validation comes from the same batch of films as training, so it flatters the model.",
        "",
        "### Development half of the test split (another batch of the same centre)",
        "",
        *_development_half(metadata),
        "### Films from other hospitals",
        "",
        XIN_2021,
        "",
        *_adaptation(metadata),
        "## Operating point",
        "",
        *_calibration(metadata),
        "## Input guard",
        "",
        *_guard(metadata),
        "## Known failure modes",
        "",
        f"- {SHIFT_FINDINGS}",
        f"- {_validation_overstates(metadata)}",
        "- **Anything that is not a paediatric chest film** still gets a label if the guard "
        "lets it through; a flagged input's label is unreliable.",
        "- **Grad-CAM is coarse.** It shows which regions raised the pneumonia score, not "
        "where a lesion is; it can point at borders, labels or the diaphragm.",
    ]
    if subtype:
        recalls = (metadata.get("validation_metrics") or {}).get("int8", {}).get(
            "subtype_recall"
        ) or {}
        viral = recalls.get("VIRAL")
        found = f": on validation only {_number(viral)} of viral films are called viral"
        lines.append("- **Bacterial or viral is unreliable**" + (found if viral else "") + ".")
    lines += [
        "",
        "## Licence and citation",
        "",
        "Data: CC BY 4.0 (Kermany et al., 2018). Code and model: Apache-2.0, pneumocnn.",
        "",
    ]
    return "\n".join(lines)


def _validation_overstates(metadata: dict[str, Any]) -> str:
    """The failure mode "validation overstates it", with this model's own ROC AUCs where its
    metadata holds them (never figures of another model)."""
    validation = _by_model(metadata.get("validation_metrics") or {})
    figures = validation.get("int8") or next(iter(validation.values()), {})
    shifted, where = {}, "the development half (used to choose the recipe)"
    if metadata.get("development_half"):
        shifted = _by_model(metadata["development_half"])
        shifted = shifted.get("int8") or next(iter(shifted.values()), {})
    elif metadata.get("calibration"):
        shifted = metadata["calibration"].get("achieved") or {}
        where = f"`{metadata['calibration'].get('folder')}` (where the threshold was chosen)"
    text = "**Validation overstates it.** Validation comes from the training batch of films"
    if figures.get("roc_auc") is not None:
        text += f" (ROC AUC {_number(figures['roc_auc'])})"
    if shifted.get("roc_auc") is not None:
        return (
            text + f"; on another batch, {where}, ROC AUC is {_number(shifted['roc_auc'])}, and "
            "the threshold chosen on validation gives lower specificity there."
        )
    return (
        text + "; expect another batch of films to score lower, and the threshold chosen on "
        f"validation to give lower specificity there (development half: {NOT_MEASURED})."
    )


def _development_half(metadata: dict[str, Any]) -> list[str]:
    """The development half's figures, or where they are: a threshold calibrated on a folder
    reports that folder's figures, intervals and groups under the operating point."""
    calibration = metadata.get("calibration")
    if metadata.get("development_half") or not calibration:
        return _figures_table(metadata.get("development_half"), "Development half")
    return [
        f"No separate report: the threshold was calibrated on `{calibration['folder']}` "
        f"({calibration['films']} films), and the figures there, with their intervals and the "
        "per-group breakdown, are under Operating point below (optimistic for that folder).",
        "",
    ]


def write_card(metadata_path: str | Path) -> Path:
    """Writes (or refreshes) the card beside a model's metadata file, e.g. after its threshold
    was recalibrated for a site; the export writes it on its own.

    Args:
        metadata_path: the model's `<name>.json`.

    Returns:
        The card's path.
    """
    metadata_path = Path(metadata_path)
    metadata = json.loads(metadata_path.read_text())
    path = metadata_path.parent / card_file(metadata.get("name") or metadata_path.stem)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(model_card(metadata))
    temporary.replace(path)
    return path


def _adaptation(metadata: dict[str, Any]) -> list[str]:
    """The card's account of an adaptation to a site (see `pneumocnn.adaptation.adapt`)."""
    adaptation = metadata.get("adaptation")
    if not adaptation:
        return []
    recipe = adaptation.get("recipe") or {}
    return [
        "## Adapted to a site",
        "",
        f"This model is {adaptation.get('base_model')} fine-tuned on "
        f"{_number(adaptation.get('films'))} labelled films of "
        f"{_number(adaptation.get('patients'))} patients from `{adaptation.get('site')}`, with "
        f"{_number(adaptation.get('training_films'))} of its own training films mixed in "
        f"({_number(recipe.get('epochs'))} epochs, learning rate "
        f"{recipe.get('learning_rate')}, BatchNormalization "
        f"{'kept as trained' if recipe.get('freeze_batchnorm') else 'trained'}). It is meant "
        "for new patients of that site; on other sites, measure it first.",
        "",
    ]


def _out_of_fold(record: dict[str, Any]) -> list[str]:
    """The threshold of an adapted model: chosen on out-of-fold scores of the site's films."""
    achieved = {**(record.get("achieved") or {}), "intervals": record.get("intervals")}
    bound, point = record.get("bound"), record.get("point_estimate") or {}
    promise = _promise(record)
    lines = [
        f"It was chosen on `{record.get('folder')}` ({_number(record.get('films'))} films, "
        f"{_number(record.get('patients'))} patients) from scores out of fold: "
        f"{record.get('method')}. So every film was scored by a model that never learnt from "
        "its patient.",
        "",
        promise,
        "",
        "Out of fold on those films, at this threshold:",
        "",
        "| figure | value (95% interval) |",
        "|---|---|",
        *(
            f"| {title} | {_with_interval(achieved, key)} |"
            for key, title in FIGURES
            if key in achieved
        ),
        "",
    ]
    if bound and point:
        lines += [
            f"The point estimate ({_number(point.get('threshold'), 4)}) would give specificity "
            f"{_number(point.get('specificity'))} there, with sensitivity "
            f"{_number(point.get('sensitivity'))} on these films but no guarantee on new "
            "patients.",
            "",
        ]
    return lines + _groups_table(record.get("groups"))


def _promise(record: dict[str, Any]) -> str:
    """What a site threshold promises on new patients, in words a clinician reads."""
    bound = record.get("bound")
    if not bound:
        return (
            f"It is the plain point estimate: the best specificity whose sensitivity on those "
            f"films reaches {_number(record.get('target_sensitivity'), 2)}, with no guarantee "
            "on new patients."
        )
    return (
        f"**With {_percent(record.get('confidence'))} confidence, this threshold calls at "
        f"least {_percent(record.get('target_sensitivity'))} of pneumonia films pneumonia on "
        f"new patients of `{record.get('folder')}`**, if they resemble the "
        f"{_number(record.get('films'))} films it was chosen on. It is pneumonia score number "
        f"{_number(bound.get('rank'))} of {_number(bound.get('positives'))}, counted from "
        "the lowest: a threshold so placed misses more new pneumonia films than that only "
        f"with probability {_percent(1 - record.get('confidence', 0))} (a Neyman-Pearson "
        "order statistic). Films of one patient count as independent draws here."
    )
