"""Out-of-fold predictions on a site's films: each film scored by a model that never saw its
patient.

`out_of_fold` fine-tunes one model per patient fold (on the other folds' films and the training
mix) and scores the held-out fold with it. The adapted model's threshold is chosen on these
scores, and the cross-validated figures of a recipe are computed from them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pneumocnn.adaptation.finetune import fine_tune
from pneumocnn.adaptation.site import SiteFilms, patient_folds, sample_patients
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.config import Config
from pneumocnn.data.split import LoadedSplit
from pneumocnn.runtime.runners import keras_probabilities

logger = logging.getLogger(__name__)


def out_of_fold(
    model_path: Path,
    config: Config,
    recipe: AdaptConfig,
    site: SiteFilms,
    mix: LoadedSplit,
    on_fold: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    done: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores every site film with a model fine-tuned without its patient.

    Args:
        model_path: the trained float `.keras` model.
        config: its config.
        recipe: the adaptation recipe (`folds`, `seed` and the fine-tuning's fields).
        site: the site's films.
        mix: the training films mixed in (see `pneumocnn.adaptation.finetune.training_mix`).
        on_fold: called after each fold with `(fold, held-out indices, their probabilities)`,
            e.g. to save progress. Defaults to `None`.
        done: the held-out probabilities of folds already scored (a resumed study), by fold.
            Defaults to `None`: none.

    Returns:
        `(probabilities, fold)`: per-class probabilities of every film `(n, classes)`, and the
        fold each film was held out in.
    """
    folds = patient_folds(site, recipe.folds, recipe.seed)
    probabilities: np.ndarray | None = None
    fold_of = np.full(len(site.labels), -1)
    started = time.perf_counter()
    for fold, held_out in enumerate(folds):
        if done and fold in done:
            scores = done[fold]
        else:
            learn = site.subset(np.setdiff1d(np.arange(len(site.labels)), held_out))
            learn = sample_patients(learn, recipe.site_films, recipe.seed * 100 + fold)
            model = fine_tune(model_path, config, recipe, learn, mix, recipe.seed * 100 + fold)
            scores = keras_probabilities(model, site.images[held_out])
        if probabilities is None:
            probabilities = np.zeros((len(site.labels), scores.shape[1]))
        probabilities[held_out] = scores
        fold_of[held_out] = fold
        if on_fold is not None:
            on_fold(fold, held_out, scores)
        elapsed = time.perf_counter() - started
        logger.info(
            "Fold %d/%d: %d films held out; %.0f s so far, about %.0f s to go",
            fold + 1,
            len(folds),
            len(held_out),
            elapsed,
            elapsed / (fold + 1) * (len(folds) - fold - 1),
        )
    return probabilities, fold_of
