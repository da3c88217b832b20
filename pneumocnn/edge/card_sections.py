"""The sections of the model card, each from the model's metadata (see `pneumocnn.edge.card`).

Each function takes the metadata (and, where the task matters, the `Task` that `model_card` read
from it once) and returns its section's Markdown lines. Figures are read
from the metadata only: what it lacks is said to be `NOT_MEASURED`, never filled in from
another model. The order follows Mitchell et al.'s Model Cards and the Hugging Face template.
"""

from __future__ import annotations

from typing import Any

from pneumocnn.core.metadata import FILM_SIZE
from pneumocnn.core.task import Task
from pneumocnn.edge.card_format import (
    NOT_MEASURED,
    by_model,
    number,
    percent,
    with_interval,
)

CITATION = (
    "The pneumocnn authors, *pneumocnn: a small from-scratch CNN for paediatric chest films, "
    'shipped as int8 TFLite*, version {version}; and Kermany et al., "Identifying Medical '
    'Diagnoses and Treatable Diseases by Image-Based Deep Learning", Cell 172(5), 2018.'
)


def details(metadata: dict[str, Any], task: Task) -> list[str]:
    """What the model is: task, network, files, how its int8 files were made, who made it."""
    size = metadata.get("image_size")
    config, training = metadata.get("config") or {}, metadata.get("training") or {}
    files, sizes = metadata.get("files") or {}, metadata.get("file_bytes") or {}
    lines = [
        "## Model details",
        "",
        f"- Task: {' / '.join(task.class_names)} from one frontal chest film"
        + (
            " (pneumonia when P(pneumonia) = 1 - P(NORMAL) reaches the threshold, then the "
            "likelier subtype)."
            if task.subtype
            else "."
        ),
        f"- A small convolutional network trained from scratch "
        f"({number(training.get('parameters'))} parameters, {config.get('num_blocks', '?')} "
        f"blocks, input {size}x{size} grayscale, raw 0-255 pixels).",
    ]
    if files:
        shipped = ", ".join(
            f"`{files[role]}` ({number(sizes.get(files[role]))} bytes)"
            for role in ("int8", "fp16", "rgb_int8", "keras")
            if role in files
        )
        lines.append(f"- Files: {shipped}.")
    lines += _parity(metadata, task)
    lines += [
        f"- Version: pneumocnn {metadata.get('package_version', '-')}, exported "
        f"{metadata.get('created', '-')}; what changed between shipped models is in the "
        "project's `CHANGELOG.md`.",
        "- Developed by the pneumocnn authors; licence Apache-2.0 (model and code).",
        "",
    ]
    return lines


def _parity(metadata: dict[str, Any], task: Task) -> list[str]:
    lines = []
    parity = metadata.get("parity") or {}
    if parity:
        agreement = number(100 * parity.get("agreement", float("nan")), 2)
        calls = (
            f"; on {number(100 * parity['pneumonia_agreement'], 2)}% of its pneumonia-vs-NORMAL "
            "calls"
            if task.subtype and "pneumonia_agreement" in parity
            else ""
        )
        lines.append(
            f"- The int8 model agrees with the float model on {agreement}% of validation "
            f"decisions{calls} (ROC AUC {number(parity.get('auc_drop'), 5)} lower)."
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
            f"{number(conversion.get('calibration_images'))} training films."
        )
    return lines


def intended_use(task: Task) -> list[str]:
    """Who it is for, and what it must not be used for."""
    subtype = task.subtype
    return [
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
        "and adapting or recalibrating it (see Operating point).",
        "- Telling bacterial from viral pneumonia for care decisions"
        + (": the subtype is a hint, not a finding." if subtype else "."),
        "",
    ]


def factors() -> list[str]:
    """What the figures depend on."""
    return [
        "## Factors",
        "",
        "- **Batch of films.** The official test films come from another batch of the same "
        "centre (tighter framing, brighter borders) than the training films; every figure "
        "below says which films it is on.",
        "- **Groups.** NORMAL films come in two naming batches (`IM-`, `NORMAL2-`) and "
        "pneumonia as bacterial or viral; the figures give each group's share called right.",
        "- **Age, centre, device.** Children aged one to five, one centre, its machines: "
        "nothing else was measured.",
        "",
    ]


def data(metadata: dict[str, Any]) -> list[str]:
    """The training data, and the films the figures are on."""
    training = metadata.get("training_data") or {}
    return [
        "## Data",
        "",
        '- Source: Kermany et al., "Identifying Medical Diagnoses and Treatable Diseases by '
        'Image-Based Deep Learning", Cell 172(5), 2018; Mendeley Data v2 '
        '(doi:10.17632/rscbjbr9sj.2), as the Kaggle data set "Chest X-Ray Images (Pneumonia)". '
        "Licence: CC BY 4.0.",
        "- Patients: children aged one to five, from **one centre**: Guangzhou Women and "
        "Children's Medical Center, Guangzhou, China. Anterior-posterior films, graded by "
        "two expert physicians (the data set's evaluation films also by a third).",
        f"- Training: {number(training.get('train_images'))} films; validation: "
        f"{number(training.get('val_images'))} films of other patients "
        f"({training.get('split', 'patient-grouped split')}); "
        f"{number(training.get('unreadable_files'))} unreadable files skipped.",
        "- The official test split (624 films, another batch) is halved by patient: the "
        "**development half** (313 films) chose recipes and thresholds; the **withheld half** "
        "(311 films, no shared patient) scores what ships, and nothing was chosen on it.",
        "",
    ]


def guard(metadata: dict[str, Any]) -> list[str]:
    """The input guard: what it refuses and flags, how it was fitted, which clients run it."""
    entry = metadata.get("guard")
    lines = [
        "## Input guard",
        "",
        "Every input goes through the input guard first (`pneumocnn.runtime.guard`): a blank, "
        "tiny, strip-shaped or strongly coloured image is refused with the reason; an image unlike "
        "the training films is classified but flagged, with an out-of-distribution score "
        "(1.0 = the 99th percentile of the validation films).",
        "",
    ]
    if entry:
        fitted = entry.get("fitted_on") or {}
        lines += [
            f"Score: {entry.get('method', '')}. Fitted on {number(fitted.get('train_images'))} "
            f"training films; flags {percent(fitted.get('val_flagged'))} of the "
            f"{number(fitted.get('val_images'))} validation films.",
            "",
        ]
    else:
        lines += [f"Out-of-distribution score: {NOT_MEASURED} (refusal checks only).", ""]
    return lines + _guard_clients(metadata)


def _guard_clients(metadata: dict[str, Any]) -> list[str]:
    """Where the guard runs: every client of the family, and what a stock classifier misses."""
    rgb = (metadata.get("edge") or {}).get("rgb_variant", {})
    head = rgb.get("guard_head")
    text = (
        "Where it runs: `pneumocnn.predict`, `explain`, the app and `LiteModel` (Python), and "
        "the web page (the same checks in JavaScript, `web/input_guard.js`, reading this metadata)."
    )
    if head:
        record = head.get("agreement_with_guard", {})
        text += (
            f" A stock image classifier gets it from `{rgb.get('file')}` itself: its second "
            f"output names '{head['labels'][1]}' for an out-of-distribution, near-constant or "
            "strongly coloured input (it sees the image as the client resized it, so a tiny or "
            "strip-shaped image is caught only when it also looks unlike a film); it says what "
            f"the Python guard says on {percent(record.get('agreement'))} of the "
            f"{number(record.get('images'))} {record.get('films', 'validation')} films."
        )
    elif rgb:
        text += (
            f" Not in a stock image classifier: `{rgb.get('file')}` has no guard head (exported "
            "before it); such a client must run the checks itself."
        )
    return [text, ""]


def integration(metadata: dict[str, Any]) -> list[str]:
    """What an integrator needs: each file's input and output, and which client takes which."""
    files = metadata.get("files") or {}
    tensors = metadata.get("tensors") or {}
    threshold = number(metadata.get("threshold"), 4)
    rows = []
    for role, client in (
        ("int8", "Python (`LiteModel`, `predict`), the web page (LiteRT.js), any LiteRT app"),
        ("fp16", "LiteRT where float is preferred"),
        ("rgb_int8", "stock image classifiers (MediaPipe Tasks, Android)"),
        ("keras", "Keras: Grad-CAM, adaptation, retraining"),
    ):
        entry = tensors.get(files.get(role), {})
        io = entry.get("input", {}), entry.get("output", {})
        rows.append(
            f"| `{files.get(role, '-')}` | {client} | {io[0].get('dtype', '-')} "
            f"{io[0].get('shape', '-')} | {io[1].get('dtype', '-')} {io[1].get('shape', '-')}"
            f"{_scale(io[1])} |"
        )
    return [
        "## For integrators",
        "",
        f"Input: raw 0-255 pixels of the grayscale film resized to {_resize_steps(metadata)} "
        "(bilinear as Pillow does it, no crop); no normalisation outside the model. Output: "
        "P(pneumonia) (one probability per class for "
        f"a subtype model); the call is pneumonia at P(pneumonia) >= **{threshold}**. The RGB "
        "variant outputs one score per class instead, whose highest names the call at that "
        "threshold (0.5 is the threshold, not a probability: with s the top score, or 1 minus "
        "it when the top class is NORMAL, and t the threshold, P(pneumonia) = s t / (s t + "
        f"(1 - s)(1 - t))){_rgb_input(metadata)}.",
        "",
        "| file | for | input | output |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _resize_steps(metadata: dict[str, Any]) -> str:
    """The resize `pneumocnn.data.images.to_model_input` does, in words."""
    size = metadata.get("image_size")
    if isinstance(size, int) and size < FILM_SIZE:
        return (
            f"{FILM_SIZE}x{FILM_SIZE} (the data set's films' size; skipped at that size), then "
            f"{size}x{size}"
        )
    return f"{size}x{size}"


def _rgb_input(metadata: dict[str, Any]) -> str:
    """What the RGB variant takes, when it is not the model's side: the films' 224 px, resized
    inside as pneumocnn resizes (see `pneumocnn.edge.rgb.with_film_input`)."""
    rgb = (metadata.get("edge") or {}).get("rgb_variant", {})
    side, size = rgb.get("input_size"), metadata.get("image_size")
    if not side or side == size:
        return ""
    return (
        f", and it takes RGB at {side}x{side}, the data set's films' size, resizing to "
        f"{size}x{size} inside exactly as pneumocnn does: hand a stock classifier the film at "
        f"{side} px (the data set's films are; resize others with Pillow's bilinear filter, as "
        "the embedding snippet does) and it passes the pixels on unchanged, so it makes "
        "`pneumocnn.predict`'s call; a client that resizes a film of another size itself does "
        "so without antialiasing, which can tip a call near the threshold"
    )


def _scale(tensor: dict[str, Any]) -> str:
    if tensor.get("dtype") == "uint8" and tensor.get("scale"):
        return f" (value x {tensor['scale']:g} = probability)"
    return ""


def caveats(metadata: dict[str, Any], task: Task) -> list[str]:
    """Known failure modes, ethical considerations, recommendations."""
    subtype = task.subtype
    lines = [
        "## Known failure modes",
        "",
        f"- {_shortcuts(metadata)}",
        f"- {_validation_overstates(metadata)}",
        "- **Anything that is not a paediatric chest film** still gets a label if the guard "
        "lets it through; a flagged input's label is unreliable.",
        "- **Grad-CAM is coarse.** It shows which regions raised the pneumonia score, not "
        "where a lesion is; it can point at borders, labels or the diaphragm.",
    ]
    stability = metadata.get("stability")
    if stability:
        lines.append(
            f"- **Calls near the threshold are fragile.** One grey level of pixel noise (what "
            f"another JPEG decoder or resizer does) moves P(pneumonia) by "
            f"{number(stability.get('mean_change'), 3)} on average and by up to "
            f"{number(stability.get('p99_change'), 3)} on 99% of {stability.get('films_used')} "
            f"films: a call within that distance of the threshold may differ between apps. "
            "Feed the model pixels loaded as `pneumocnn.data.images.load_image` does."
        )
    if subtype:
        recalls = (metadata.get("validation_metrics") or {}).get("int8", {}).get(
            "subtype_recall"
        ) or {}
        viral = recalls.get("VIRAL")
        found = f": on validation only {number(viral)} of viral films are called viral"
        lines.append("- **Bacterial or viral is unreliable**" + (found if viral else "") + ".")
    return lines + [
        "",
        "## Ethical considerations and recommendations",
        "",
        "- Every model so far scored lower on new patients than on the films its threshold was "
        "chosen on; plan for the withheld-half figures, not the development half's.",
        "- A missed pneumonia costs more than a false alarm: the threshold is set for "
        "sensitivity, and a NORMAL call must not stop a clinician from reading the film.",
        "- One centre's children: its errors may not be spread evenly over other populations; "
        "measure on yours before use.",
        "",
    ]


def _shortcuts(metadata: dict[str, Any]) -> str:
    """The framing shortcut, with this model's own NORMAL-group figures where it has them."""
    groups = (metadata.get("development_half") or {}).get("groups")
    where = "On the development half"
    if not groups:
        calibration = metadata.get("calibration") or {}
        groups = calibration.get("groups")
        where = f"On `{calibration.get('folder')}`, where the threshold was chosen"
    text = (
        "**Framing and exposure shortcuts.** The official test films come from another batch "
        "than the training films: tighter framing and brighter borders. A model partly reads "
        "those as signs of pneumonia, so a tightly framed or bright-bordered NORMAL film can "
        "look like PNEUMONIA to it."
    )
    named = {name: row for name, row in (groups or {}).items() if name.startswith("NORMAL")}
    if not named:
        return text + f" This model's NORMAL groups: {NOT_MEASURED}."
    def share(row: dict[str, Any]) -> str:
        interval = row.get("interval")
        if not interval or len(interval) != 2 or None in interval:
            return percent(1 - row["recall"])
        low, high = percent(1 - interval[1]), percent(1 - interval[0])
        return f"{percent(1 - row['recall'])} ({low}-{high})"

    shares = ", ".join(
        f"{share(row)} of the {number(row.get('films', row.get('count')))} films of {name}"
        for name, row in named.items()
    )
    ranged = any(row.get("interval") for row in named.values())
    return (
        text + f" {where}, this model called PNEUMONIA {shares}"
        + (" (95% intervals over patients)." if ranged else ".")
    )


def _validation_overstates(metadata: dict[str, Any]) -> str:
    """The failure mode "validation overstates it", with this model's own ROC AUCs where its
    metadata holds them (never figures of another model)."""
    validation = by_model(metadata.get("validation_metrics") or {})
    figures = validation.get("int8") or next(iter(validation.values()), {})
    shifted, where = {}, "the development half (used to choose the recipe)"
    if metadata.get("development_half"):
        shifted = by_model(metadata["development_half"])
        shifted = shifted.get("int8") or next(iter(shifted.values()), {})
    elif metadata.get("calibration"):
        shifted = {
            **(metadata["calibration"].get("achieved") or {}),
            "intervals": metadata["calibration"].get("intervals"),
        }
        where = f"`{metadata['calibration'].get('folder')}` (where the threshold was chosen)"
    text = "**Validation overstates it.** Validation comes from the training batch of films"
    if figures.get("roc_auc") is not None:
        text += f" (ROC AUC {number(figures['roc_auc'])})"
    if shifted.get("roc_auc") is not None:
        return (
            text + f"; on another batch, {where}, ROC AUC is "
            f"{with_interval(shifted, 'roc_auc')}, and the threshold chosen on validation gives "
            "lower specificity there."
        )
    return (
        text + "; expect another batch of films to score lower, and the threshold chosen on "
        f"validation to give lower specificity there (development half: {NOT_MEASURED})."
    )


def compute_and_citation(metadata: dict[str, Any]) -> list[str]:
    """Training compute, licence, citation and contact."""
    training = metadata.get("training") or {}
    seconds, epochs = training.get("seconds_per_epoch"), training.get("epochs_run")
    compute = (
        f"{number(epochs)} epochs of {number(seconds, 0)} s each "
        f"({number(seconds * epochs / 60, 1)} min) on the machine that trained it; the hardware "
        "was not recorded."
        if isinstance(seconds, int | float) and isinstance(epochs, int)
        else NOT_MEASURED + "."
    )
    return [
        "## Training compute",
        "",
        f"Training: {compute}",
        "",
        "## Licence, citation and contact",
        "",
        "Data: CC BY 4.0 (Kermany et al., 2018). Code and model: Apache-2.0, pneumocnn.",
        "",
        "Cite: " + CITATION.format(version=metadata.get("package_version", "-")),
        "",
        "Contact: the pneumocnn authors, through the project's repository (issues).",
        "",
    ]
