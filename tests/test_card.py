"""The model card: rendered from the metadata, saying "not measured" for what it lacks."""

import json

from pneumocnn.core.metadata import METADATA_FILE
from pneumocnn.edge.card import NOT_MEASURED, card_file, model_card

BASE = {
    "name": "pneumocnn",
    "task": "binary",
    "class_names": ["NORMAL", "PNEUMONIA"],
    "image_size": 160,
    "threshold": 0.2743,
    "threshold_rule": "youden",
    "validation_metrics": {
        "int8": {"images": 1044, "roc_auc": 0.9981, "accuracy": 0.9789, "sensitivity": 0.9794,
                 "specificity": 0.9777, "threshold": 0.2743},
    },
}  # fmt: skip
DEVELOPMENT = {
    "images": 313,
    "roc_auc": 0.9512,
    "accuracy": 0.8466,
    "sensitivity": 0.9847,
    "specificity": 0.6154,
    "threshold": 0.2743,
    "intervals": {"roc_auc": [0.9231, 0.9734], "specificity": [0.5210, 0.7043]},
    "groups": {"NORMAL IM-": {"films": 60, "recall": 0.7433},
               "NORMAL NORMAL2-": {"count": 57, "recall": 0.5301}},
}  # fmt: skip
CALIBRATION = {
    "folder": "test",
    "films": 313,
    "target_sensitivity": 0.96,
    "threshold": 0.8123,
    "achieved": {"sensitivity": 0.9643, "specificity": 0.8034},
    "intervals": {"sensitivity": [0.93, 0.99], "specificity": [0.72, 0.87]},
    "groups": {"PNEUMONIA viral": {"films": 74, "recall": 0.9459}},
}


def test_a_card_without_test_figures_says_they_were_not_measured():
    card = model_card(BASE)
    assert f"Development half: {NOT_MEASURED}" in card
    assert f"Site calibration: {NOT_MEASURED}" in card
    assert "| int8 | 1,044 | 0.998 | 0.979 | 0.979 | 0.978 | 0.2743 |" in card


def test_the_card_states_the_data_intended_use_limits_and_the_other_hospital_result():
    card = model_card(BASE)
    for needle in (
        "Guangzhou Women and Children's Medical Center",
        "aged one to five",
        "CC BY 4.0",
        "## Intended use and users",
        "## What it must not be used for",
        "Performance on films from other hospitals is unknown",
        "0.95 on its test split to 0.54",
        "Xin, Li and Yi",
        "--calibrate-on DIR --target-sensitivity 0.96",
        "python -m pneumocnn.adapt MODEL --site-dir DIR",
    ):
        assert needle in card, needle


def test_development_half_figures_show_their_intervals_and_groups():
    card = model_card({**BASE, "development_half": DEVELOPMENT})
    assert NOT_MEASURED + "." not in card.split("### Development half")[1].split("###")[0]
    assert "0.951 (0.923-0.973)" in card and "0.615 (0.521-0.704)" in card
    assert "| NORMAL IM- | 60 | 0.743 |" in card
    assert "| NORMAL NORMAL2- | 57 | 0.530 |" in card  # "count" is read as well as "films"


def test_figures_per_model_file_get_a_row_each():
    card = model_card({**BASE, "development_half": {"int8": DEVELOPMENT, "float": DEVELOPMENT}})
    section = card.split("### Development half")[1].split("###")[0]
    assert "| int8 | 313 |" in section and "| float | 313 |" in section


def test_a_site_calibration_is_rendered_with_its_folder_and_intervals():
    card = model_card({**BASE, "calibration": CALIBRATION})
    assert "calibrated for a site on `test` (313 films)" in card
    assert "| sensitivity | 0.964 (0.930-0.990) |" in card
    assert "| PNEUMONIA viral | 74 | 0.946 |" in card
    assert f"Site calibration: {NOT_MEASURED}" not in card


def test_group_shares_and_predictive_values_carry_their_intervals_when_recorded():
    groups = {
        "NORMAL IM-": {"films": 36, "recall": 0.9722, "interval": [0.9091, 1.0]},
        "PNEUMONIA viral": {"films": 74, "recall": 0.9459, "interval": [0.88, 0.99]},
    }
    card = model_card({**BASE, "calibration": {**CALIBRATION, "groups": groups}})
    assert "| group | films | called right (95% interval) |" in card
    assert "| NORMAL IM- | 36 | 0.972 (0.909-1.000) |" in card
    assert "| PNEUMONIA viral | 74 | 0.946 (0.880-0.990) |" in card
    # The shortcut's share called PNEUMONIA is 1 - recall: its interval turns round.
    line = next(line for line in card.splitlines() if "Framing and exposure" in line)
    assert "On `test`, where the threshold was chosen" in line
    assert "2.8% (0.0%-9.1%) of the 36 films of NORMAL IM-" in line
    # PPV and NPV at the ends of the sensitivity (0.93-0.99) and specificity (0.72-0.87)
    # intervals: 0.93 * 0.1 / (0.93 * 0.1 + 0.28 * 0.9) = 0.270 at 10% prevalence.
    assert "sensitivity 0.964 (0.930-0.990) and specificity 0.803 (0.720-0.870)" in card
    assert "| 10.0% | 0.353 (0.270-0.458) |" in card
    # Without intervals, the header does not promise them.
    assert "| group | films | called right |" in model_card({**BASE, "calibration": CALIBRATION})


def test_the_binary_card_is_model_card_md_and_others_are_named_after_their_model():
    assert card_file("pneumocnn") == "MODEL_CARD.md"
    assert card_file("pneumocnn_subtype") == "pneumocnn_subtype_MODEL_CARD.md"


def test_the_export_writes_the_card_from_the_metadata_it_writes(exported_model):
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    assert metadata["files"]["card"] == "MODEL_CARD.md"
    assert (exported_model / "MODEL_CARD.md").read_text() == model_card(metadata)
    assert "Fitted on" in model_card(metadata)  # the guard's calibration is described


def test_the_shortcut_failure_mode_gives_this_models_own_normal_groups_not_a_literal():
    # The bug: "26% of the NORMAL films named IM- and 47% of NORMAL2-" were the previous
    # model's figures, written into every card as a literal.
    card = model_card({**BASE, "development_half": DEVELOPMENT})
    line = next(line for line in card.splitlines() if "Framing and exposure" in line)
    assert "25.7% of the 60 films of NORMAL IM-" in line and "47.0% of the 57" in line
    assert "26% of the NORMAL films" not in model_card(BASE)
    assert f"NORMAL groups: {NOT_MEASURED}" in model_card(BASE)


def test_the_withheld_half_is_rendered_with_its_source_and_gives_the_predictive_values():
    withheld = {
        "source": "Scored by a scorer outside this repository",
        "films": 311,
        "threshold": 0.5234,
        "achieved": {"roc_auc": 0.932, "accuracy": 0.887, "sensitivity": 0.938,
                     "specificity": 0.803},
        "intervals": {"roc_auc": [0.901, 0.960]},
    }  # fmt: skip
    card = model_card({**BASE, "withheld_half": withheld})
    section = card.split("### Withheld half")[1].split("###")[0]
    assert "Scored by a scorer outside this repository (311 films" in section
    assert "| ROC AUC | 0.932 (0.901-0.960) |" in section
    assert "sensitivity 0.938 and specificity 0.803 (withheld half)" in card
    assert "| 10.0% | 0.346 | 0.991 |" in card  # PPV and NPV by Bayes' rule
    assert f"Withheld half: {NOT_MEASURED}" in model_card(BASE)
    assert f"Predictive values: {NOT_MEASURED}" in model_card(BASE)


def test_the_adaptation_estimate_is_rendered_with_its_source_and_selection_or_left_out():
    estimate = {
        "source": "Adaptation study, out of fold",
        "films": 313,
        "selection": "these films chose the adaptation recipe",
        "achieved": {"roc_auc": 0.972, "specificity": 0.835},
        "intervals": {"roc_auc": [0.95, 0.988]},
    }
    card = model_card({**BASE, "adaptation_estimate": estimate})
    section = card.split("### Adapted to the development half")[1].split("###")[0]
    assert "Adaptation study, out of fold (313 films; these films chose the" in section
    assert "| ROC AUC | 0.972 (0.950-0.988) |" in section
    assert "| specificity | 0.835 |" in section
    assert "### Adapted to the development half" not in model_card(BASE)


def test_the_integrator_block_gives_each_files_tensors_from_the_metadata(exported_model):
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    section = model_card(metadata).split("## For integrators")[1].split("## ")[0]
    assert "| `pneumocnn_int8.tflite` |" in section and "uint8 [1, 32, 32, 1]" in section
    assert "(value x 0.00390625 = probability)" in section
    assert "| `pneumocnn_rgb_int8.tflite` | stock image classifiers" in section
    assert f"**{metadata['threshold']:.4f}**" in section
    # How a stock client gets P(pneumonia) back (`pneumocnn.edge.rgb.pneumonia_from_scores`).
    assert "P(pneumonia) = s t / (s t + (1 - s)(1 - t))" in " ".join(section.split())


def test_the_validation_calibration_error_is_given_when_measured():
    ece = {"int8": {**BASE["validation_metrics"]["int8"], "ece": 0.0941}}
    assert "calibration error of P(pneumonia) there: 0.094" in model_card(
        {**BASE, "validation_metrics": ece}
    )
    assert f"Calibration error: {NOT_MEASURED}" in model_card(BASE)


def test_the_card_warns_that_calls_near_the_threshold_are_fragile_when_measured():
    stability = {"films": 1044, "draws": 5, "mean_change": 0.012, "p99_change": 0.081,
                 "max_change": 0.17, "films_used": "validation"}  # fmt: skip
    card = model_card({**BASE, "stability": stability})
    assert "Calls near the threshold are fragile" in card
    assert "0.012" in card and "0.081" in card and "validation" in card
    assert "fragile" not in model_card(BASE)


def test_a_subtype_card_gives_the_pneumonia_calls_agreement_apart():
    parity = {"agreement": 0.977, "pneumonia_agreement": 0.9923, "auc_drop": 0.00001}
    subtype = {**BASE, "task": "subtype", "class_names": ["NORMAL", "BACTERIAL", "VIRAL"]}
    card = model_card({**subtype, "parity": parity})
    assert "97.70% of validation decisions; on 99.23% of its pneumonia-vs-NORMAL calls" in card
    assert "pneumonia-vs-NORMAL calls" not in model_card({**BASE, "parity": parity})


def test_validation_overstates_it_gives_this_models_own_aucs_not_literal_ones():
    # The bug: the card said "Validation ROC AUC is about 0.99 and the development half's about
    # 0.95" for every model, from a literal, even on a card whose development half was not
    # measured or was measured at another figure.
    line = next(line for line in model_card(BASE).splitlines() if "overstates" in line)
    assert "0.998" in line and f"development half: {NOT_MEASURED}" in line
    assert "0.95" not in line
    measured = model_card({**BASE, "development_half": DEVELOPMENT})
    line = next(line for line in measured.splitlines() if "overstates" in line)
    assert (
        "0.998" in line
        and "the development half (used to choose the recipe), ROC AUC is 0.951" in line
    )
    calibrated = model_card(
        {**BASE, "calibration": {**CALIBRATION, "achieved": {"roc_auc": 0.9627}}}
    )
    line = next(line for line in calibrated.splitlines() if "overstates" in line)
    assert "`test` (where the threshold was chosen), ROC AUC is 0.963" in line
