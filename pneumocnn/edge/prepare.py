"""The export's first step: read a run folder once, for every later step.

`prepare` loads the run's config, split, validation films, float model and its outputs, the
threshold, and the training films that calibrate the int8 ranges and fit the input guard; the
steps after it take the `Prepared` object it returns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pneumocnn.core.run_folder import (
    CALIBRATION_IMAGES,
    SPLIT_FILE,
    SUMMARY_FILE,
    resolve_source,
)
from pneumocnn.data.folders import find_dataset, resolve_data_dir
from pneumocnn.data.split import load_split, training_samples
from pneumocnn.edge.convert import pin_input_range
from pneumocnn.evaluation.scoring import choose_threshold
from pneumocnn.network.model import load_model
from pneumocnn.runtime import guard
from pneumocnn.runtime.runners import keras_probabilities

if TYPE_CHECKING:
    import keras
    import numpy as np

    from pneumocnn.core.config import Config
    from pneumocnn.core.run_folder import Source
    from pneumocnn.data.split import LoadedSplit
    from pneumocnn.runtime.guard import GuardCalibration


logger = logging.getLogger(__name__)
# Training films the input guard's out-of-distribution score is fitted on (seeded, stratified
# by class): enough for a 256-dimensional thumbnail's leading components, and quick to decode.
GUARD_FIT_IMAGES = 2000


@dataclasses.dataclass
class Prepared:
    """What every export step needs from the run folder, read once.

    Args:
        source: the run (see `pneumocnn.core.run_folder.resolve_source`).
        root: the data folder.
        split: the run's `split.csv`.
        val: the loaded validation split.
        keras_model: the float model.
        float_probabilities: its per-class probabilities on `val`.
        threshold: the decision threshold, chosen on validation.
        threshold_record: the run's new `threshold.json` when the threshold was chosen now (no
            threshold stored yet, or a target sensitivity asked for); `None` when it is the
            stored one. The export writes it only once its family is in place.
        summary: the run's `summary.json`.
        calibration: the training films that calibrate the int8 ranges (see
            `pneumocnn.edge.convert.pin_input_range`).
        guard_films: the training films the input guard is fitted on.
        guard: the input guard's calibration, fitted on `guard_films` with its threshold on
            `val` (see `pneumocnn.runtime.guard.fit`): the metadata's `guard` entry and the RGB
            variant's guard head.
    """

    source: Source
    root: Path
    split: pd.DataFrame
    val: LoadedSplit
    keras_model: keras.Model
    float_probabilities: np.ndarray
    threshold: float
    threshold_record: dict[str, Any] | None
    summary: dict[str, Any]
    calibration: np.ndarray
    guard_films: np.ndarray
    guard: GuardCalibration

    @property
    def config(self) -> Config:
        return self.source.config


def run_source(run_dir: str | Path) -> Source:
    """The training run an export reads (see `pneumocnn.core.run_folder.resolve_source`).

    Raises:
        ValueError: if `run_dir` is not a training run folder.
    """
    source = resolve_source(run_dir)
    if source.run_dir is None:
        raise ValueError(
            f"Export needs a training run folder (with config.json and split.csv). "
            f"Received: run_dir='{run_dir}'. Pass the folder that `python -m pneumocnn.train` "
            "wrote (runs/<timestamp>)."
        )
    return source


def prepare(
    run_dir: str | Path,
    target_sensitivity: float | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> Prepared:
    """Step 1: reads the run folder, loads its validation split and float model, runs it, reads
    (or chooses, in memory) the threshold, and decodes the training films that calibrate the
    int8 ranges and fit the input guard (two seeded samples, each film decoded once). Nothing
    is written.

    Raises:
        ValueError: if `run_dir` is not a training run folder.
    """
    source = run_source(run_dir)
    config = source.config
    dataset = find_dataset(resolve_data_dir(config.data_dir))
    split = pd.read_csv(source.run_dir / SPLIT_FILE)
    val = load_split(split, "val", config.image_size, dataset.root)
    keras_model = load_model(source.model_path)
    float_probabilities = keras_probabilities(keras_model, val.images)
    threshold, record = choose_threshold(
        source, target_sensitivity, (val.labels, float_probabilities)
    )
    summary = json.loads((source.run_dir / SUMMARY_FILE).read_text())
    films = training_samples(
        split,
        dataset.root,
        config.image_size,
        {"calibration": calibration_images, "guard": GUARD_FIT_IMAGES},
        config.seed,
    )
    return Prepared(
        source,
        dataset.root,
        split,
        val,
        keras_model,
        float_probabilities,
        threshold,
        record,
        summary,
        pin_input_range(films["calibration"]),
        films["guard"],
        guard.fit(films["guard"], val.images),
    )
