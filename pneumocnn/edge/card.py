"""The model card: what a model is for, what it saw, how it scores, where it fails.

`model_card(metadata)` renders Markdown from a model's metadata (`<name>.json`), so the card
and the model never disagree: the export writes it beside the model (`MODEL_CARD.md` for the
binary model named `pneumocnn`, `<name>_MODEL_CARD.md` for any other, see `card_file`), and the
app renders it from the metadata it loaded. Figures the metadata does not hold (the development
or withheld half of the test split, a site calibration) are said to be "not measured", never
left out or taken from another model. The sections (`pneumocnn.edge.card_sections`, and
`pneumocnn.edge.card_performance` for the figures) follow
Mitchell et al.'s Model Cards and the Hugging Face template; this module holds the operating
point's. Standard library only, so the edge install can render it too.

Example:

>>> text = model_card({"name": "pneumocnn", "class_names": ["NORMAL", "PNEUMONIA"],
...                    "threshold": 0.27, "image_size": 160})
>>> "Performance on films from other hospitals is unknown" in text
True
"""

from __future__ import annotations

from typing import Any

from pneumocnn.core.task import Task
from pneumocnn.edge import card_performance
from pneumocnn.edge import card_sections as sections
from pneumocnn.edge.card_format import (
    NOT_MEASURED,
    groups_table,
    number,
    percent,
    record_table,
    with_interval,
)

CARD_FILE = "MODEL_CARD.md"

__all__ = ["CARD_FILE", "NOT_MEASURED", "card_file", "model_card"]


def card_file(name: str) -> str:
    """The card's file name for the exported model `name`.

    Example:

    >>> card_file("pneumocnn"), card_file("pneumocnn_subtype")
    ('MODEL_CARD.md', 'pneumocnn_subtype_MODEL_CARD.md')
    """
    return CARD_FILE if name == "pneumocnn" else f"{name}_{CARD_FILE}"


def model_card(metadata: dict[str, Any]) -> str:
    """The model card of an exported model, as Markdown.

    Args:
        metadata: the model's metadata (see `pneumocnn.core.metadata`). Renders what it holds:
            `validation_metrics`, `development_half` (figures on the development half of the
            test split, with `intervals` `{figure: [low, high]}` and `groups` `{group:
            {films, recall}}`, one set or one per model file), `withheld_half` (figures on the
            withheld half, with their `source`), `adaptation_estimate` (what adapting the
            model gave, cross-validated, with its `source` and `selection`), `calibration` (a
            site calibration record, or an adaptation's out-of-fold one), `adaptation`,
            `guard`, `training_data`, `parity`, `stability`, `tensors`, `training`, `config`;
            anything absent is said to be not measured.

    Returns:
        The card's Markdown text.
    """
    name = metadata.get("name", "pneumocnn")
    task = Task.of_metadata(metadata)  # read once; every section is handed it
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
        *sections.details(metadata, task),
        *sections.intended_use(task),
        *sections.factors(),
        *sections.data(metadata),
        *card_performance.performance(metadata, task),
        *_adaptation(metadata),
        "## Operating point",
        "",
        *_calibration(metadata),
        *sections.guard(metadata),
        *sections.integration(metadata),
        *sections.caveats(metadata, task),
        *sections.compute_and_citation(metadata),
    ]
    return "\n".join(lines)


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
        f"{number(adaptation.get('films'))} labelled films of "
        f"{number(adaptation.get('patients'))} patients from `{adaptation.get('site')}`, with "
        f"{number(adaptation.get('training_films'))} of its own training films mixed in "
        f"({number(recipe.get('epochs'))} epochs, learning rate "
        f"{recipe.get('learning_rate')}, BatchNormalization "
        f"{'kept as trained' if recipe.get('freeze_batchnorm') else 'trained'}). It is meant "
        "for new patients of that site; on other sites, measure it first.",
        "",
    ]


def _calibration(metadata: dict[str, Any]) -> list[str]:
    """Where the threshold comes from, in plain words, and what it achieved where it was
    chosen; then how to set it for another site."""
    rule = metadata.get("threshold_rule", "")
    lines = [
        "The label is pneumonia when P(pneumonia) reaches "
        f"**{number(metadata.get('threshold'), 4)}** ({rule or 'rule not recorded'}).",
        "",
    ]
    record = metadata.get("calibration")
    if record and record.get("model") == "out-of-fold":
        lines += _out_of_fold(record)
    elif record:
        if record.get("bound"):
            lines += [_promise(record), ""]
        lines += [
            f"It was calibrated for a site on `{record.get('folder')}` "
            f"({number(record.get('films'))} films): "
            + (
                "the threshold above"
                if record.get("bound")
                else f"the best specificity reaching sensitivity "
                f"{number(record.get('target_sensitivity'), 2)}"
            )
            + f" gave {number(record.get('threshold'), 4)}, with, on that folder (optimistic: "
            "it is where the threshold was chosen):",
            "",
            *([f"Those films {record['selection']}.", ""] if record.get("selection") else []),
            *record_table(record),
            *groups_table(record.get("groups")),
        ]
    else:
        lines += [
            f"Site calibration: {NOT_MEASURED}. The threshold was chosen on the validation "
            "split, the same batch of films as training; on another batch it gives a different "
            "sensitivity and specificity.",
            "",
        ]
    return lines + [
        "**To set it for a site**, label a few hundred of the site's own films into `NORMAL/` "
        "and `PNEUMONIA/` folders. To adapt the model to them and choose a threshold whose "
        "sensitivity holds on the site's new patients:",
        "",
        "```",
        "python -m pneumocnn.adapt MODEL --site-dir DIR",
        "```",
        "",
        "or, to keep the weights and only choose the threshold:",
        "",
        "```",
        "python -m pneumocnn.evaluate MODEL --calibrate-on DIR --target-sensitivity 0.96",
        "```",
        "",
        "(add `--confidence 0.95` for the same guarantee on new patients). Either records the "
        "folder, its size, the achieved figures, their intervals and the per-group breakdown "
        "in the model's metadata.",
        "",
    ]


def _out_of_fold(record: dict[str, Any]) -> list[str]:
    """The threshold of an adapted model: chosen on out-of-fold scores of the site's films."""
    bound, point = record.get("bound"), record.get("point_estimate") or {}
    promise = _promise(record)
    lines = [
        f"It was chosen on `{record.get('folder')}` ({number(record.get('films'))} films, "
        f"{number(record.get('patients'))} patients) from scores out of fold: "
        f"{record.get('method')}. So every film was scored by a model that never learnt from "
        "its patient.",
        "",
        promise,
        "",
        "Out of fold on those films, at this threshold:",
        "",
        *record_table(record),
    ]
    if bound and point:
        lines += [
            f"The point estimate ({number(point.get('threshold'), 4)}) would give specificity "
            f"{with_interval(point, 'specificity')} there, with sensitivity "
            f"{with_interval(point, 'sensitivity')} on these films (95% intervals over "
            "patients, where recorded) but no guarantee on new patients.",
            "",
        ]
    return lines + groups_table(record.get("groups"))


def _promise(record: dict[str, Any]) -> str:
    """What a site threshold promises on new patients, in words a clinician reads."""
    bound = record.get("bound")
    if not bound:
        return (
            f"It is the plain point estimate: the best specificity whose sensitivity on those "
            f"films reaches {number(record.get('target_sensitivity'), 2)}, with no guarantee "
            "on new patients."
        )
    return (
        f"**With {percent(record.get('confidence'))} confidence, this threshold calls at "
        f"least {percent(record.get('target_sensitivity'))} of pneumonia films pneumonia on "
        f"new patients of `{record.get('folder')}`**, if they resemble the "
        f"{number(record.get('films'))} films it was chosen on. It is pneumonia score number "
        f"{number(bound.get('rank'))} of {number(bound.get('positives'))}, counted from "
        "the lowest: a threshold so placed misses more new pneumonia films than that only "
        f"with probability {percent(1 - record.get('confidence', 0))} (a Neyman-Pearson "
        "order statistic). Films of one patient count as independent draws here."
    )
