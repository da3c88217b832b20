"""The patient-grouped train/validation split, and loading a split's films once.

`make_split` (patient-grouped, class-stratified, seeded; byte-identical duplicates kept on one
side) -> `load_split` (decode once with the shared loader). `load_evaluation_images` loads the
films a model is scored on. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pneumocnn.core.config import Config
from pneumocnn.core.errors import DataError
from pneumocnn.core.run_folder import SPLIT_FILE
from pneumocnn.data.folders import (
    find_dataset,
    label_for_task,
    list_images,
    patient_id,
    resolve_data_dir,
    task_class_names,
)
from pneumocnn.data.images import load_images

if TYPE_CHECKING:
    from pneumocnn.core.run_folder import Source
    from pneumocnn.data.folders import Dataset


logger = logging.getLogger(__name__)


def load_evaluation_images(
    source: Source, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]], Path, list[str]]:
    """Loads the images of `split` for `source`.

    Args:
        source: the model (see `resolve_source`).
        split: "val" (the run's own validation split), "test" (a Kaggle `test/` folder) or
            "all" (every development image of the folder).
        data_dir: the data folder. `None`: the one the model was trained on.

    Returns:
        `(images, labels, skipped, root, paths)`: `paths` names the file of each image.

    Raises:
        DataError: if the folder has no such split, or its classes differ from the model's.
    """

    dataset = find_dataset(resolve_data_dir(data_dir or source.config.data_dir))
    task = source.config.task
    if list(task_class_names(task, dataset.class_names)) != list(source.class_names):
        raise DataError(
            f"The data folder's classes {list(dataset.class_names)} (task {task}) differ from "
            f"the model's {source.class_names}. Received: data_dir='{dataset.root}'. Pass "
            "--data-dir pointing at a folder with the model's classes."
        )
    if split == "val":
        split_csv = source.run_dir / SPLIT_FILE if source.run_dir else None
        table = (
            pd.read_csv(split_csv)
            if split_csv and split_csv.is_file()
            else prepare_split(source.config, dataset)
        )
        loaded = load_split(table, "val", source.config.image_size, dataset.root)
        return loaded.images, loaded.labels, loaded.skipped, dataset.root, loaded.paths
    if split == "test":
        if dataset.test is None:
            raise DataError(
                f"Data folder '{dataset.root}' has no test/ folder. Received: split='test'. "
                "Point --data-dir at a Kaggle-style folder holding test/, or use --split all "
                "with --data-dir at a folder of class subfolders."
            )
        folders = (dataset.test,)
    else:
        folders = dataset.development
    table = label_for_task(list_images(folders, dataset.class_names), dataset.class_names, task)
    images, kept, skipped = load_images(table["path"].tolist(), source.config.image_size)
    labels = table["label"].to_numpy()[kept].astype(np.int32)
    paths = table["path"].tolist()
    return images, labels, skipped, dataset.root, [paths[i] for i in kept]


def _merge_duplicate_groups(paths: list[str], groups: list[str]) -> list[str]:
    """Puts byte-identical files into one group, so a duplicate cannot straddle the split."""
    parent = {group: group for group in groups}

    def find(group: str) -> str:
        while parent[group] != group:
            group = parent[group]
        return group

    first_by_digest: dict[str, str] = {}
    for path, group in zip(paths, groups, strict=True):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        other = first_by_digest.setdefault(digest, group)
        root_a, root_b = find(other), find(group)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    return [find(group) for group in groups]


def make_split(images: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Splits images into train and val, grouped by patient and stratified by class.

    Exact duplicate files are grouped with each other as well. The same input and seed always
    give the same split.

    Args:
        images: DataFrame with `path` and `label` columns (see `list_images`).
        val_fraction: share of images (about the same share of patients) for validation.
        seed: seeds the assignment of patients to subsets.

    Returns:
        A DataFrame with columns `path`, `label`, `patient`, `subset` ("train" or "val").

    Raises:
        DataError: if a class has too few patients to put some on each side.
    """
    paths = images["path"].tolist()
    patients = [patient_id(path) for path in paths]
    groups = _merge_duplicate_groups(paths, patients)
    n_splits = max(2, round(1 / val_fraction))
    per_class = pd.Series(groups).groupby(images["label"].to_numpy()).nunique()
    if per_class.min() < n_splits:
        raise DataError(
            f"A class has only {per_class.min()} patients; a patient-grouped split with "
            f"val_fraction={val_fraction} needs at least {n_splits} per class. "
            "Add images, or raise --limit-per-class."
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_index = next(splitter.split(paths, images["label"], groups))
    subset = np.full(len(paths), "train", dtype=object)
    subset[val_index] = "val"
    return pd.DataFrame(
        {"path": paths, "label": images["label"].to_numpy(), "patient": patients, "subset": subset}
    )


def limit_per_class(images: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """Keeps a seeded random sample of at most `limit` images per class (0 keeps all)."""
    if limit <= 0:
        return images
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(index, size=min(limit, len(index)), replace=False)
        for index in images.groupby("label").indices.values()
    ]
    return images.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)


def prepare_split(config: Config, dataset: Dataset) -> pd.DataFrame:
    """Lists the development images of `dataset`, applies the limit, and splits them.

    Returns:
        The split (see `make_split`), with paths relative to `dataset.root`.
    """
    listed = label_for_task(
        list_images(dataset.development, dataset.class_names), dataset.class_names, config.task
    )
    seed = config.split_seed_used
    images = limit_per_class(listed, config.limit_per_class, seed)
    split = make_split(images, config.val_fraction, seed)
    # Paths relative to the data root keep the run folder valid wherever the data is mounted.
    split["path"] = [Path(path).relative_to(dataset.root).as_posix() for path in split["path"]]
    counts = split.groupby(["subset", "label"]).size().to_dict()
    logger.info("Split by patient (seed %d): %s", seed, counts)
    return split


@dataclasses.dataclass(frozen=True)
class LoadedSplit:
    """Decoded images of one subset.

    Args:
        images: uint8 array `(n, size, size, 1)` of raw pixels.
        labels: int array `(n,)`.
        paths: the file of each image.
        skipped: `(path, reason)` for each file that could not be read.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]]


def load_split(split: pd.DataFrame, subset: str, image_size: int, root: str | Path) -> LoadedSplit:
    """Decodes every readable image of `subset` ("train" or "val") with the shared loader.

    Args:
        split: from `prepare_split` (or a run's `split.csv`); paths relative to `root`.
        subset: which rows to load.
        image_size: side of the square images.
        root: the data folder the paths are relative to.
    """
    rows = split[split["subset"] == subset]
    paths = [str(Path(root) / path) for path in rows["path"]]
    logger.info("Decoding %d %s images at %dx%d", len(paths), subset, image_size, image_size)
    images, kept, skipped = load_images(paths, image_size)
    labels = rows["label"].to_numpy()[kept].astype(np.int32)
    return LoadedSplit(images, labels, [paths[i] for i in kept], skipped)


def training_samples(
    split: pd.DataFrame, root: str | Path, image_size: int, counts: dict[str, int], seed: int
) -> dict[str, np.ndarray]:
    """Seeded, class-stratified samples of the training subset, every film decoded once.

    Each sample takes an equal share of its count per class (`limit_per_class` with the same
    seed), so samples of different sizes overlap, and the union of their films is decoded once.

    Args:
        split: from `prepare_split` (or a run's `split.csv`).
        root: the data folder the paths are relative to.
        image_size: side of the square images.
        counts: how many films each named sample holds, e.g. `{"calibration": 300}`.
        seed: seeds the samples.

    Returns:
        The decoded films of each sample, by name, in the order `limit_per_class` keeps them
        (unreadable films left out).
    """
    train = split[split["subset"] == "train"]
    classes = max(1, train["label"].nunique())
    samples = {
        name: limit_per_class(train, max(1, count // classes), seed)
        for name, count in counts.items()
    }
    union = pd.concat(samples.values()).drop_duplicates("path")
    loaded = load_split(union, "train", image_size, root)
    where = {path: index for index, path in enumerate(loaded.paths)}
    return {
        name: loaded.images[
            [where[key] for key in (str(Path(root) / p) for p in sample["path"]) if key in where]
        ]
        for name, sample in samples.items()
    }
