"""Adapting a trained model to a site: `adapt`, a list of named steps.

`resolve_base` (the trained model: a run folder or an exported family) -> `load_site` (the site's
labelled films, checked) -> `training_mix` (training films mixed in) -> `out_of_fold` (each site
film scored by a model fine-tuned without its patient) -> `operating_point` (the threshold, from
those scores) -> `fine_tune` on every site film -> `write_adapted_run` (a run folder that
describes the adapted model) -> `pneumocnn.edge.export.export` (the int8 family, written
atomically into the output folder; nothing is written if a check fails).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumocnn.adaptation.crossval import out_of_fold
from pneumocnn.adaptation.finetune import fine_tune, training_mix
from pneumocnn.adaptation.site import SiteFilms, check_site_folder, load_site, sample_patients
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.config import Config
from pneumocnn.core.errors import DataError, UsageError
from pneumocnn.core.files import atomic_path
from pneumocnn.core.metadata import (
    DEFAULT_NAMES,
    METADATA_FILE,
    find_metadata,
    load_metadata,
    write_json_atomically,
)
from pneumocnn.core.run_folder import (
    ADAPT_CALIBRATION_IMAGES,
    ADAPTATION_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    is_run_dir,
    resolve_source,
    write_threshold,
)
from pneumocnn.core.task import Task
from pneumocnn.data.folders import DATA_ENV_VAR, film_group, find_dataset, resolve_data_dir
from pneumocnn.data.split import prepare_split
from pneumocnn.edge.export import export
from pneumocnn.edge.parity import ParityError
from pneumocnn.evaluation.metrics import pneumonia_figures, three_class_figures
from pneumocnn.evaluation.thresholds import choose_pneumonia_threshold, sensitivity_bound_threshold
from pneumocnn.evaluation.uncertainty import point_estimate, uncertainty

logger = logging.getLogger(__name__)

# The adapted run folder, inside the output folder: what the export reads.
RUN_DIR = "run"


@dataclasses.dataclass(frozen=True)
class Base:
    """The trained model an adaptation starts from.

    Args:
        keras_path: its float `.keras` file.
        config: its training config.
        class_names: its classes, NORMAL first.
        name: the stem of the adapted family's files (the base family's own name).
        folder: the folder it was found in (a run folder, or the family's folder).
        described: how the card names it.
        split: its run folder's `split.csv`, or `None` for an exported family (rebuilt from the
            config).
    """

    keras_path: Path
    config: Config
    class_names: list[str]
    name: str
    folder: Path
    described: str
    split: Path | None


def resolve_base(model: str | Path) -> Base:
    """Finds the trained model: a run folder, an exported family's metadata `.json` (or any of
    its files), or a folder holding a family (`saved_models/` means its binary family,
    `pneumocnn.json`; name `saved_models/pneumocnn_subtype.json` for the subtype one).

    Raises:
        FileNotFoundError: if nothing is there.
        MetadataError: if a family's metadata is missing or does not match its files.
    """
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(
            f"Model not found. Received: model='{model}'. Pass a run folder, an exported "
            "family's .json (e.g. saved_models/pneumocnn.json) or the folder holding it."
        )
    if path.is_dir() and is_run_dir(path):
        source = resolve_source(path)
        return Base(
            source.model_path,
            source.config,
            list(source.class_names),
            DEFAULT_NAMES[source.config.task],
            path,
            f"run folder {path.name}",
            path / SPLIT_FILE,
        )
    metadata_path = path / METADATA_FILE if path.is_dir() else path
    if metadata_path.suffix != ".json":
        metadata_path = find_metadata(path)
    if not metadata_path.is_file():
        raise FileNotFoundError(
            f"Folder '{path}' holds no {METADATA_FILE}. Received: model='{model}'. Name the "
            "family's metadata file, e.g. saved_models/pneumocnn_subtype.json."
        )
    metadata = load_metadata(metadata_path)
    keras_path = metadata_path.parent / metadata["files"]["keras"]
    load_metadata(metadata_path, keras_path)  # its checksum must match
    return Base(
        keras_path,
        Config.from_dict(metadata["config"]),
        list(metadata["class_names"]),
        metadata["name"],
        metadata_path.parent,
        f"{metadata['name']} (pneumocnn {metadata.get('package_version')}, exported "
        f"{metadata.get('created')})",
        None,
    )


def training_root(base: Base, data_dir: str | None, site: Path) -> Path:
    """The training data folder whose films are mixed in and check the export.

    In order: `data_dir`; `$PNEUMOCNN_DATA_DIR`; the folder the model's config names, if it is
    here; the site folder's parent, when it holds `train/` (a Kaggle layout whose `test/` is the
    site); else a kagglehub download (see `pneumocnn.data.folders.resolve_data_dir`).
    """
    if data_dir or os.environ.get(DATA_ENV_VAR):
        return resolve_data_dir(data_dir)
    named = Path(base.config.data_dir) if base.config.data_dir else None
    if named is not None and named.is_dir():
        return named
    if (site.parent / "train").is_dir():
        logger.info("Training films from %s (the site folder's parent)", site.parent)
        return site.parent
    try:
        return resolve_data_dir(None)
    except DataError as error:
        raise DataError(
            "Adaptation needs the training data the model learnt from: labelled training films "
            "are mixed into the fine-tuning (so it does not forget) and check the int8 export. "
            f"{error}"
        ) from error


def operating_point(
    site: SiteFilms, probabilities: np.ndarray, recipe: AdaptConfig, folds: int, task: Task
) -> dict[str, Any]:
    """The threshold, chosen on out-of-fold scores, with what it achieved on them.

    With `recipe.confidence`, the Neyman-Pearson bound (see
    `pneumocnn.evaluation.thresholds.sensitivity_bound_threshold`); without, the plain point
    estimate (best specificity reaching the target on these films). Both are recorded.

    Returns:
        A calibration record (as `pneumocnn.adaptation.calibration.calibrate` writes), with
        `method`, `confidence`, `bound` and `point_estimate` besides.
    """
    target = recipe.target_sensitivity
    point = choose_pneumonia_threshold(site.labels, probabilities, target)
    bound = (
        sensitivity_bound_threshold(site.labels, probabilities, target, recipe.confidence)
        if recipe.confidence > 0
        else None
    )
    threshold = bound["threshold"] if bound else point
    positive = site.labels > 0
    spread = uncertainty(
        site.labels,
        probabilities,
        threshold,
        patients=site.patients,
        groups=[film_group(p, bool(y)) for p, y in zip(site.paths, positive, strict=True)],
    )
    return {
        "folder": site.folder.name,
        "films": int(len(site.labels)),
        "films_per_class": site.counts(),
        "patients": spread["patients"],
        "unreadable_files": len(site.skipped),
        "model": "out-of-fold",
        "method": f"out-of-fold predictions: {folds} models, each fine-tuned without one "
        f"patient fold, scored the films of that fold",
        "target_sensitivity": float(target),
        "confidence": float(recipe.confidence),
        "threshold": float(threshold),
        "bound": bound,
        "point_estimate": point_estimate(site.labels, probabilities, point, site.patients),
        "achieved": {
            **pneumonia_figures(site.labels, probabilities, threshold),
            **three_class_figures(site.labels, probabilities, threshold, task),
        },
        "intervals": spread["intervals"],
        "groups": spread["groups"],
        "note": "out-of-fold figures: each film scored by a model that did not learn from its "
        "patient; the adapted model learnt from all of them",
        "date": datetime.date.today().isoformat(),
    }


def write_adapted_run(
    run_dir: Path,
    base: Base,
    config: Config,
    split: pd.DataFrame,
    model,
    record: dict[str, Any],
    adaptation: dict[str, Any],
) -> Path:
    """Writes the run folder the export reads: `config.json` (the base model's, with its data
    folder), `split.csv`, `best.keras` (the adapted model), `summary.json`, `threshold.json`
    (the threshold and its record) and `adaptation.json` (the recipe and what it learnt from)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config.save(run_dir / CONFIG_FILE)
    with atomic_path(run_dir / SPLIT_FILE) as temporary:
        split.to_csv(temporary, index=False)
    with atomic_path(run_dir / MODEL_FILE) as temporary:
        model.save(temporary)
    write_json_atomically(
        run_dir / SUMMARY_FILE,
        {
            "class_names": base.class_names,
            "task": config.task,
            "train_images": int((split["subset"] == "train").sum()),
            "val_images": int((split["subset"] == "val").sum()),
            "unreadable_files": 0,
            "best_epoch": adaptation["recipe"]["epochs"],
            "epochs_run": adaptation["recipe"]["epochs"],
            "parameters": int(model.count_params()),
            "seconds_per_epoch": adaptation["seconds_per_epoch"],
        },
    )
    rule = (
        f"sensitivity >= {record['target_sensitivity']} on new patients of {record['folder']} "
        f"with confidence {record['confidence']}, from out-of-fold scores"
        if record["bound"]
        else f"target_sensitivity={record['target_sensitivity']} on out-of-fold scores of "
        f"{record['folder']}"
    )
    write_threshold(run_dir, record["threshold"], rule, record["folder"], record["films"], record)
    write_json_atomically(run_dir / ADAPTATION_FILE, adaptation)
    return run_dir


def adaptation_record(
    base: Base,
    recipe: AdaptConfig,
    learnt: SiteFilms,
    training_films: int,
    record: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """What `adaptation.json` and the family's metadata say of the adaptation: the model it
    started from, the films it learnt from, the recipe, and the out-of-fold figures."""
    return {
        "base_model": base.described,
        "site": learnt.folder.name,
        "films": int(len(learnt.labels)),
        "patients": len(set(learnt.patients)),
        "training_films": int(training_films),
        "recipe": recipe.to_dict(),
        "seconds_per_epoch": seconds / recipe.epochs,
        "cross_validation": {
            "achieved": record["achieved"],
            "intervals": record["intervals"],
            "roc_auc": record["achieved"]["roc_auc"],
        },
    }


def check_output(output_dir: Path, base: Base) -> None:
    """Refuses to write the adapted family over the model it starts from."""
    if output_dir.resolve() == base.folder.resolve() or (
        output_dir.resolve() == base.keras_path.parent.resolve()
    ):
        raise UsageError(
            f"The adapted family would replace the model it adapts. Received: output_dir="
            f"'{output_dir}', model in '{base.folder}'. Pass --output-dir a new folder (e.g. "
            "runs/adapted)."
        )


def export_adapted(
    run_dir: Path, output_dir: Path, calibration_images: int, name: str, task: Task
) -> dict[str, Any]:
    """Exports the adapted run folder into `output_dir` (see `pneumocnn.edge.export.export`).

    Raises:
        ParityError: if the int8 model fails the export's checks; the message says where the
            adapted run folder is, how to run it meanwhile, and (for a binary model) how to
            export it again without fine-tuning again.
    """
    try:
        metadata = export(run_dir, output_dir, calibration_images, name=name)
    except ParityError as error:
        # The fine-tuning is not lost: say where it is and what can be done with it.
        meanwhile = (
            f"`python -m pneumocnn.predict FILES --model {run_dir}` runs the adapted float "
            "model meanwhile (TensorFlow needed; the input guard's refusal checks only)."
        )
        again = (
            "An adapted subtype model's three-class int8 calls agree with its float model on "
            "about 98.9% of films, around the 99% bar, so another conversion or another run "
            "passes by luck only (docs/adaptation.md, What to expect); its pneumonia-vs-NORMAL "
            "calls hold. For an exported family, adapt the binary model (saved_models); "
            + meanwhile
            if task.subtype
            else f"`python -m pneumocnn.export {run_dir} --output-dir {output_dir} "
            "--calibration-images N` converts it again without fine-tuning again, and " + meanwhile
        )
        raise ParityError(
            f"{error} In '{output_dir}' there is only the adapted model's run folder, "
            f"'{run_dir}' (no family). {again}"
        ) from error
    return metadata


def site_and_training(
    base: Base, site_folder: Path, data_dir: str | None, patients_csv: str | Path | None
) -> tuple[SiteFilms, Config, Path, pd.DataFrame]:
    """Reads the site's films and finds the training data the adaptation mixes in.

    The training data are found first, so a missing copy is refused before the site's films
    are decoded.

    Args:
        base: the model being adapted (see `resolve_base`).
        site_folder: the site's checked folder (see `check_site_folder`).
        data_dir: the training data folder (see `training_root`), or `None`.
        patients_csv: a `file,patient` table for the site's films, or `None`.

    Returns:
        The site's films, the base's config pointed at the training data, the training data's
        root folder and the base's patient split of it.
    """
    root = find_dataset(training_root(base, data_dir, site_folder)).root
    config = base.config
    site = load_site(site_folder, config.task, base.class_names, config.image_size, patients_csv)
    config = dataclasses.replace(config, data_dir=str(root.resolve()))
    split = pd.read_csv(base.split) if base.split else prepare_split(config, find_dataset(root))
    return site, config, root, split


def adapt(
    model: str | Path,
    site_dir: str | Path,
    output_dir: str | Path,
    recipe: AdaptConfig | None = None,
    data_dir: str | None = None,
    patients_csv: str | Path | None = None,
    calibration_images: int | None = None,
) -> dict[str, Any]:
    """Adapts a trained model to a site's labelled films and exports the adapted int8 family.

    Args:
        model: a run folder, or an exported family (see `resolve_base`).
        site_dir: the site's labelled films (see `pneumocnn.adaptation.site.load_site`).
        output_dir: a new folder for the adapted family (and its run folder, `run/`).
        recipe: the adaptation recipe. Defaults to `None`: `AdaptConfig()`, the chosen one.
        data_dir: the training data folder (see `training_root`). Defaults to `None`.
        patients_csv: a `file,patient` table for sites whose names do not carry the patient.
            Defaults to `None`.
        calibration_images: training films for the int8 conversion. Defaults to `None`: the
            task's `ADAPT_CALIBRATION_IMAGES` (300 for a binary model, 600 for a subtype one).

    Returns:
        The adapted family's metadata.

    Raises:
        UsageError, DataError: for a bad site folder, output folder or patient table, before any
            long work.
        ParityError: if the adapted int8 model fails the export's checks (nothing is written).
    """
    started = time.perf_counter()
    recipe = recipe or AdaptConfig()
    site_folder = check_site_folder(site_dir)
    base = resolve_base(model)
    output_dir = Path(output_dir)
    check_output(output_dir, base)
    task = Task.of_classes(base.class_names)
    site, config, root, split = site_and_training(base, site_folder, data_dir, patients_csv)
    mix = training_mix(config, split, root, recipe.training_films, recipe.seed)
    logger.info(
        "Adapting %s to %d films of %s (%d patients), with %d training films mixed in",
        base.described,
        len(site.labels),
        site.folder,
        len(set(site.patients)),
        len(mix.labels),
    )
    probabilities, _ = out_of_fold(base.keras_path, config, recipe, site, mix)
    record = operating_point(site, probabilities, recipe, recipe.folds, task)
    logger.info(
        "Threshold %.4f from out-of-fold scores (sensitivity %.3f, specificity %.3f there)",
        record["threshold"],
        record["achieved"]["sensitivity"],
        record["achieved"]["specificity"],
    )
    tuned_at = time.perf_counter()
    learn = sample_patients(site, recipe.site_films, recipe.seed * 100 + 99)
    adapted = fine_tune(base.keras_path, config, recipe, learn, mix, recipe.seed * 100 + 99)
    adaptation = adaptation_record(
        base, recipe, learn, len(mix.labels), record, (time.perf_counter() - tuned_at)
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    run_dir = write_adapted_run(
        output_dir / RUN_DIR,
        base,
        dataclasses.replace(config, output_dir=str(output_dir / RUN_DIR)),
        split,
        adapted,
        record,
        adaptation,
    )
    images = calibration_images or ADAPT_CALIBRATION_IMAGES[config.task]
    metadata = export_adapted(run_dir, output_dir, images, base.name, task)
    logger.info("Adapted in %.0f s", time.perf_counter() - started)
    return metadata
