"""The export's first step: read a run folder once, for every later step.

`prepare` loads the run's config, split, validation films, float model and its outputs, and the
threshold; the steps after it take the `Prepared` object it returns. `guard_calibration` fits the
input guard on a sample of the training films.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pneumocnn.core.run_folder import SPLIT_FILE, SUMMARY_FILE, resolve_source
from pneumocnn.data.folders import find_dataset, resolve_data_dir
from pneumocnn.data.split import limit_per_class, load_split
from pneumocnn.evaluation.scoring import ensure_threshold
from pneumocnn.network.model import load_model
from pneumocnn.runtime import guard
from pneumocnn.runtime.runners import keras_probabilities

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd

    from pneumocnn.core.config import Config
    from pneumocnn.core.run_folder import Source
    from pneumocnn.data.split import LoadedSplit


logger = logging.getLogger(__name__)
# Training films the input guard's out-of-distribution score is fitted on (seeded, stratified
# by class): enough for a 256-dimensional thumbnail's leading components, and quick to decode.
GUARD_FIT_IMAGES = 2000


@dataclasses.dataclass
class Prepared:
    """What every export step needs from the run folder.

    Args:
        source: the run (see `pneumocnn.core.run_folder.resolve_source`).
        root: the data folder.
        split: the run's `split.csv`.
        val: the loaded validation split.
        keras_model: the float model.
        float_probabilities: its per-class probabilities on `val`.
        threshold: the decision threshold, chosen on validation.
        summary: the run's `summary.json`.
    """

    source: Source
    root: Path
    split: pd.DataFrame
    val: LoadedSplit
    keras_model: keras.Model
    float_probabilities: np.ndarray
    threshold: float
    summary: dict[str, Any]

    @property
    def config(self) -> Config:
        return self.source.config


def prepare(run_dir: str | Path, target_sensitivity: float | None = None) -> Prepared:
    """Step 1: reads the run folder, loads its validation split and float model, runs it, and
    reads (or chooses and stores) the threshold.

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
    dataset = find_dataset(resolve_data_dir(source.config.data_dir))
    split = pd.read_csv(source.run_dir / SPLIT_FILE)
    val = load_split(split, "val", source.config.image_size, dataset.root)
    keras_model = load_model(source.model_path)
    float_probabilities = keras_probabilities(keras_model, val.images)
    threshold = ensure_threshold(source, target_sensitivity, (val.labels, float_probabilities))
    summary = json.loads((source.run_dir / SUMMARY_FILE).read_text())
    return Prepared(
        source, dataset.root, split, val, keras_model, float_probabilities, threshold, summary
    )


def guard_calibration(
    split: pd.DataFrame,
    root: Path,
    config: Config,
    val_images: np.ndarray,
    fit_images: int = GUARD_FIT_IMAGES,
) -> Any:
    """Fits the input guard's out-of-distribution score (see `pneumocnn.runtime.guard.fit`) on a
    seeded, class-stratified sample of up to `fit_images` training films, with its threshold on the
    validation films.

    Returns:
        A `pneumocnn.runtime.guard.GuardCalibration`.
    """

    train = split[split["subset"] == "train"]
    per_class = max(1, fit_images // max(1, train["label"].nunique()))
    sample = limit_per_class(train, per_class, config.seed)
    logger.info("Fitting the input guard on %d training films", len(sample))
    images = load_split(sample, "train", config.image_size, root).images
    return guard.fit(images, val_images)
