"""Adaptation to a site: the command, its refusals, the folds, and the sensitivity bound."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta

import pneumocnn.adaptation.adapt as adaptation_adapt
from helpers import REAL_DATA, SHIPPED, requires_real_data, requires_shipped_model
from pneumocnn import adapt as adapt_command
from pneumocnn import predict as predict_command
from pneumocnn.adaptation.adapt import resolve_base
from pneumocnn.adaptation.finetune import fine_tune, training_mix
from pneumocnn.adaptation.site import load_site, patient_folds, sample_patients
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.errors import DataError
from pneumocnn.core.metadata import load_metadata, model_files
from pneumocnn.core.run_folder import ADAPT_CALIBRATION_IMAGES
from pneumocnn.core.task import Task
from pneumocnn.data.dicom import patient_key
from pneumocnn.edge.parity import ParityError
from pneumocnn.evaluation.thresholds import fewest_positives, sensitivity_bound_threshold
from pneumocnn.testing import synthetic_xray, write_dataset, write_dicom, write_image

# A quick recipe for the toy model: the behaviour, not the figures, is under test.
QUICK = ["--folds", "3", "--epochs", "2", "--training-films", "40", "--confidence", "0.9"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site's labelled films, Kaggle-named: 40 patients a class, two films each."""
    root = write_dataset(tmp_path_factory.mktemp("site"), patients=40, seed=21)
    return root / "train"  # NORMAL/ and PNEUMONIA/, no train/ inside


@pytest.fixture(scope="module")
def adapted(trained_run, site, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("adapted") / "family"
    assert (
        adapt_command.main(
            [str(trained_run), "--site-dir", str(site), "--output-dir", str(output), *QUICK]
        )
        == 0
    )
    return output


def test_adapt_writes_a_complete_family_with_an_out_of_fold_threshold(adapted, site):
    files = model_files("pneumocnn")
    for role in ("int8", "fp16", "rgb_int8", "keras", "labels", "metadata"):
        assert (adapted / files[role]).is_file(), role
    metadata = load_metadata(adapted / files["metadata"], adapted / files["int8"])
    record, adaptation = metadata["calibration"], metadata["adaptation"]
    assert record["model"] == "out-of-fold" and "3 models" in record["method"]
    assert record["films"] == 160 and record["patients"] == 80
    assert metadata["threshold"] == record["threshold"] == record["bound"]["threshold"]
    assert record["confidence"] == 0.9 and record["bound"]["positives"] == 80
    assert adaptation["site"] == site.name and adaptation["recipe"]["epochs"] == 2
    assert adaptation["training_films"] == 40
    card = (adapted / "MODEL_CARD.md").read_text()
    assert "Adapted to a site" in card and "out of fold" in card
    # The point estimate shown beside the bound carries its interval, in the record and card.
    point = record["point_estimate"]
    low, high = point["intervals"]["specificity"]
    assert low <= point["specificity"] <= high
    assert f"would give specificity {point['specificity']:.3f} ({low:.3f}-{high:.3f})" in card


def test_adapt_adapts_a_subtype_family_and_keeps_its_three_classes(subtype_model, tmp_path):
    # "Both tasks": an exported subtype family, named by its metadata, on a site whose
    # pneumonia films are bacterial and viral.
    site = write_dataset(tmp_path / "site", patients=40, seed=23, subtypes=True) / "train"
    family = subtype_model / model_files("pneumocnn_subtype")["metadata"]
    output = tmp_path / "adapted"
    assert (
        adapt_command.main(
            [str(family), "--site-dir", str(site), "--output-dir", str(output), *QUICK]
        )
        == 0
    )
    files = model_files("pneumocnn_subtype")
    metadata = load_metadata(output / files["metadata"], output / files["int8"])
    assert metadata["task"] == "subtype" and len(metadata["class_names"]) == 3
    assert metadata["calibration"]["model"] == "out-of-fold"
    assert metadata["calibration"]["films"] == 160
    assert {"three_class_accuracy", "normal_recall"} <= set(metadata["calibration"]["achieved"])
    card = (output / metadata["files"]["card"]).read_text()
    assert "| three-class accuracy |" in card and "| NORMAL recall |" in card


def test_a_failed_int8_check_keeps_the_adapted_run_and_says_how_to_export_it(
    trained_run, site, tmp_path, monkeypatch, capsys
):
    """The fine-tuning is minutes of work: when the export's int8 check refuses the adapted
    model, the message names the run folder it left and the export command that retries. (And
    a binary model is calibrated with the export's 300 films, a subtype one with 600.)"""
    asked = []

    def refuse(run_dir, output_dir, calibration_images, **kwargs):
        asked.append(calibration_images)
        raise ParityError(
            "The int8 model strays too far from the float model. Nothing was written."
        )

    monkeypatch.setattr(adaptation_adapt, "export", refuse)
    output = tmp_path / "family"
    argv = [str(trained_run), "--site-dir", str(site), "--output-dir", str(output), *QUICK]
    assert adapt_command.main(argv) != 0
    message = " ".join(capsys.readouterr().err.split())
    run_dir = output / adaptation_adapt.RUN_DIR
    assert f"python -m pneumocnn.export {run_dir} --output-dir {output}" in message
    assert (run_dir / "best.keras").is_file()
    assert not list(output.glob("*.tflite")) and not list(output.glob("*.json"))
    assert asked == [ADAPT_CALIBRATION_IMAGES["binary"]] == [300]
    # The float model it names runs as the message says, at the adapted threshold.
    assert f"python -m pneumocnn.predict FILES --model {run_dir}" in message
    film = sorted((Path(site) / "NORMAL").iterdir())[0]
    assert predict_command.main([str(film), "--model", str(run_dir), "--format", "csv"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split(",")
    threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
    assert row[1] in ("NORMAL", "PNEUMONIA") and float(row[3]) == pytest.approx(threshold, abs=1e-6)
    assert ADAPT_CALIBRATION_IMAGES["subtype"] == 600


def test_a_refused_subtype_adaptation_points_to_the_binary_family_not_to_retries(
    tmp_path, monkeypatch
):
    def refuse(run_dir, output_dir, calibration_images, **kwargs):
        raise ParityError("The int8 model strays too far from the float model.")

    monkeypatch.setattr(adaptation_adapt, "export", refuse)
    subtype = Task.of("subtype")
    with pytest.raises(ParityError) as refused:
        adaptation_adapt.export_adapted(tmp_path / "run", tmp_path, 600, "x", subtype)
    message = str(refused.value)
    assert "adapt the binary model" in message and "predict FILES --model" in message
    assert "pneumocnn.export" not in message and "--calibration-images" not in message


def test_missing_training_data_is_named_as_what_adaptation_mixes_in(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import kagglehub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv("PNEUMOCNN_DATA_DIR", raising=False)
    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    base = SimpleNamespace(config=SimpleNamespace(data_dir=str(tmp_path / "gone")))
    (tmp_path / "site").mkdir()
    with pytest.raises(DataError, match="mixed into the fine-tuning.*Pass --data-dir"):
        adaptation_adapt.training_root(base, None, tmp_path / "site")


def test_missing_training_data_is_refused_before_the_site_is_decoded(
    trained_run, site, tmp_path, monkeypatch, capsys
):
    import kagglehub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    def decoded(*args, **kwargs):
        raise AssertionError("the site's films were decoded first")

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(tmp_path / "gone")}))
    monkeypatch.delenv("PNEUMOCNN_DATA_DIR", raising=False)
    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    monkeypatch.setattr(adaptation_adapt, "load_site", decoded)
    clinic = tmp_path / "clinic"  # no train/ beside it
    shutil.copytree(site, clinic)
    argv = [str(run), "--site-dir", str(clinic), "--output-dir", str(tmp_path / "out"), *QUICK]
    assert adapt_command.main(argv) == 2
    assert "mixed into the fine-tuning" in capsys.readouterr().err


def test_the_bound_threshold_misses_no_more_films_than_its_rank_allows(adapted):
    record = load_metadata(adapted / model_files("pneumocnn")["metadata"])["calibration"]
    bound = record["bound"]
    assert bound["films_below"] <= bound["rank"] - 1
    assert record["achieved"]["sensitivity"] >= 1 - (bound["rank"] - 1) / bound["positives"]


def test_adapt_never_writes_over_its_input(exported_model, site, tmp_path):
    folder = tmp_path / "family"
    shutil.copytree(exported_model, folder)
    code = adapt_command.main(
        [str(folder), "--site-dir", str(site), "--output-dir", str(folder), *QUICK]
    )
    assert code == 2


def test_a_site_folder_with_one_class_is_refused_before_any_work(trained_run, site, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(site / "PNEUMONIA", one / "PNEUMONIA")
    with pytest.raises(DataError, match="NORMAL"):
        load_site(one, "binary", ["NORMAL", "PNEUMONIA"], 32)


def test_too_few_films_are_refused_with_the_count_the_curve_asks_for(tmp_path):
    root = write_dataset(tmp_path / "few", patients=8, seed=3) / "train"
    with pytest.raises(DataError, match="at least 50"):
        load_site(root, "binary", ["NORMAL", "PNEUMONIA"], 32)


def test_films_whose_patient_cannot_be_told_are_refused_unless_a_table_names_it(site, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(site, renamed)
    odd = sorted((renamed / "NORMAL").iterdir())[0]
    odd.rename(odd.with_name("scan 17" + odd.suffix))
    with pytest.raises(DataError, match="--patients"):
        load_site(renamed, "binary", ["NORMAL", "PNEUMONIA"], 32)
    table = tmp_path / "patients.csv"
    table.write_text(f"file,patient\nNORMAL/scan 17{odd.suffix},case-17\n")
    films = load_site(renamed, "binary", ["NORMAL", "PNEUMONIA"], 32, table)
    assert patient_key("case-17") in films.patients and "case-17" not in films.patients


def test_a_dicom_site_is_grouped_by_the_patient_id_in_each_header(tmp_path):
    pytest.importorskip("pydicom", reason="the lite extra (pydicom) is not installed")
    rng = np.random.default_rng(5)
    for label, name in enumerate(["NORMAL", "PNEUMONIA"]):
        for patient in range(15):
            for shot in range(2):
                # Named as a PACS export names them: nothing in the name tells the patient.
                path = tmp_path / "site" / name / f"1.2.826.{label}.{patient}.{shot}.dcm"
                film = synthetic_xray(rng, label, (60, 72))
                write_dicom(path, film, patient=("Doe^Jane", f"MRN-{label}-{patient}"))
    # One patient's third film is a PNG, named by number, that only a table names: the table's
    # ID and the header's group the same patient.
    extra = write_image(
        tmp_path / "site" / "PNEUMONIA" / "film-1.png", synthetic_xray(rng, 1, (60, 72))
    )
    (tmp_path / "patients.csv").write_text(f"file,patient\nPNEUMONIA/{extra.name},MRN-1-7\n")
    films = load_site(
        tmp_path / "site", "binary", ["NORMAL", "PNEUMONIA"], 32, tmp_path / "patients.csv"
    )
    assert len(films.labels) == 61 and len(set(films.patients)) == 30
    by_file = dict(zip((Path(p).name for p in films.paths), films.patients, strict=True))
    assert by_file["1.2.826.1.7.0.dcm"] == by_file["1.2.826.1.7.1.dcm"] == by_file["film-1.png"]
    assert by_file["1.2.826.1.7.0.dcm"] != by_file["1.2.826.0.7.0.dcm"]
    assert not any("MRN" in patient for patient in films.patients)
    # Folds keep each patient's films together (see patient_folds).
    for fold in patient_folds(films, 3, seed=0):
        inside = {films.patients[i] for i in fold}
        assert sum(films.patients.count(patient) for patient in inside) == len(fold)


def test_a_subtype_site_may_sort_its_films_into_subtype_folders(tmp_path):
    rng = np.random.default_rng(6)
    table = ["file,patient"]
    for label, name in enumerate(["NORMAL", "BACTERIAL", "VIRAL"]):
        for patient in range(20):
            # No name scheme: the subtype comes from the folder, the patient from the table.
            path = tmp_path / "site" / name / f"case-{label}-{patient}.png"
            subtype = "virus" if name == "VIRAL" else "bacteria"
            write_image(path, synthetic_xray(rng, int(label > 0), (48, 40), subtype))
            table.append(f"{name}/{path.name},patient-{label}-{patient}")
    (tmp_path / "patients.csv").write_text("\n".join(table) + "\n")
    classes = ["NORMAL", "BACTERIAL", "VIRAL"]
    films = load_site(tmp_path / "site", "subtype", classes, 32, tmp_path / "patients.csv")
    folders = [Path(path).parent.name for path in films.paths]
    assert [classes[label] for label in films.labels] == folders
    assert np.bincount(films.labels).tolist() == [20, 20, 20]
    # A binary model is told how to use such a folder.
    with pytest.raises(DataError, match="into one PNEUMONIA/ folder"):
        load_site(tmp_path / "site", "binary", ["NORMAL", "PNEUMONIA"], 32)
    # Neither layout complete: the refusal names both.
    (tmp_path / "site" / "VIRAL").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"\['PNEUMONIA'\].*\['NORMAL', 'BACTERIAL', 'VIRAL'\]"):
        load_site(tmp_path / "site", "subtype", classes, 32, tmp_path / "patients.csv")


def test_a_training_folder_is_refused_as_a_site(trained_run, tmp_path, capsys):
    data = Path(json.loads((trained_run / "config.json").read_text())["data_dir"])
    code = adapt_command.main(
        [str(trained_run), "--site-dir", str(data), "--output-dir", str(tmp_path / "out"), *QUICK]
    )
    assert code == 2
    # Refused as training data, not for lacking NORMAL/ and PNEUMONIA/ (which also exits 2).
    message = " ".join(capsys.readouterr().err.split())
    assert "holds train/" in message and "not to training data" in message


def test_patient_folds_hold_each_film_out_once_with_all_its_patients_films(site):
    films = load_site(site, "binary", ["NORMAL", "PNEUMONIA"], 32)
    folds = patient_folds(films, 4, seed=0)
    held = np.concatenate(folds)
    assert sorted(held.tolist()) == list(range(len(films.labels)))
    for fold in folds:
        inside = {films.patients[i] for i in fold}
        outside = {films.patients[i] for i in np.setdiff1d(held, fold)}
        assert not inside & outside


def test_sampled_sites_take_whole_patients(site):
    films = load_site(site, "binary", ["NORMAL", "PNEUMONIA"], 32)
    sample = sample_patients(films, 60, seed=1)
    assert 55 <= len(sample.labels) <= 65
    for patient in set(sample.patients):
        assert sample.patients.count(patient) == films.patients.count(patient)


def test_the_bound_needs_the_films_the_binomial_asks_for():
    assert fewest_positives(0.96, 0.95) == 74
    labels = np.r_[np.ones(73, int), np.zeros(20, int)]
    scores = np.r_[np.linspace(0.5, 1, 73), np.linspace(0, 0.4, 20)]
    with pytest.raises(ValueError, match="at least 74 pneumonia films"):
        sensitivity_bound_threshold(labels, scores, 0.96, 0.95)
    assert (
        sensitivity_bound_threshold(np.r_[labels, 1], np.r_[scores, 0.9], 0.96, 0.95)["rank"] == 1
    )


def test_the_bound_holds_the_target_on_new_films_as_often_as_its_confidence_says():
    # Draw a site's pneumonia scores, choose the threshold, and measure its true sensitivity on
    # the score distribution itself: it must reach the target in at least ~95% of sites, where
    # the plain point estimate reaches it in about half.
    rng = np.random.default_rng(0)
    target, held, held_point = 0.9, [], []
    for _ in range(400):
        scores = rng.beta(5, 2, 120)
        labels = np.r_[np.ones(120, int), np.zeros(40, int)]
        probabilities = np.r_[scores, rng.beta(2, 5, 40)]
        threshold = sensitivity_bound_threshold(labels, probabilities, target, 0.95)["threshold"]
        held.append(beta.sf(threshold, 5, 2) >= target)
        point = np.quantile(scores, 1 - target)
        held_point.append(beta.sf(point, 5, 2) >= target)
    assert np.mean(held) >= 0.93
    assert np.mean(held_point) < 0.7


def test_a_deterministic_fine_tuning_gives_the_same_weights_twice(trained_run, site):
    base = resolve_base(trained_run)
    config = base.config
    films = load_site(site, config.task, base.class_names, config.image_size)
    recipe = AdaptConfig(epochs=1, training_films=0, deterministic=True)
    mix = training_mix(config, None, None, 0, 0)
    first, second = (
        fine_tune(base.keras_path, config, recipe, films, mix, seed=5).get_weights()
        for _ in range(2)
    )
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other = fine_tune(base.keras_path, config, recipe, films, mix, seed=6).get_weights()
    # Another seed gives other weights: the comparison above can fail.
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_adapt_config_refuses_a_confidence_of_one():
    with pytest.raises(ValueError, match="confidence"):
        AdaptConfig(confidence=1.0)


@pytest.mark.slow
@requires_real_data
@requires_shipped_model
def test_the_readmes_adapt_command_exports_the_shipped_model_adapted_to_the_development_half(
    tmp_path,
):
    # Regression: with augmentation off (the default from 2026-12-03), the adapted model put most
    # validation films' P(pneumonia) within 1/512 of 0 or 1, the int8 output's steps tied them,
    # and the export's parity check refused it: the README's command wrote nothing. The study
    # scores float fold models, so only the command itself meets that check.
    output = tmp_path / "adapted"
    argv = [str(SHIPPED), "--site-dir", str(REAL_DATA / "test"), "--output-dir", str(output)]
    assert adapt_command.main(argv) == 0
    files = model_files("pneumocnn")
    metadata = load_metadata(output / files["metadata"], output / files["int8"])
    assert metadata["parity"]["passed"]
    assert metadata["parity"]["auc_drop"] <= metadata["parity"]["max_auc_drop"]
    assert metadata["calibration"]["model"] == "out-of-fold"
    assert metadata["adaptation"]["recipe"] == AdaptConfig().to_dict()
