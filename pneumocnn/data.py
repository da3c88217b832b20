"""Finding the data, splitting it by patient, and the `tf.data` input pipeline.

The flow: `resolve_data_dir` (flag, else `$PNEUMOCNN_DATA_DIR`, else kagglehub) ->
`find_dataset` (Kaggle layout or plain class folders) -> `make_split` (patient-grouped,
class-stratified, seeded) -> `load_split` (decode once with the shared loader) ->
`make_datasets` (cache, shuffle, batch, augment the training split only, prefetch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

from pneumocnn.config import Config
from pneumocnn.images import FolderScan, load_images, scan_folder
from pneumocnn.task import BINARY_CLASS_NAMES, SUBTYPE_CLASS_NAMES

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "PNEUMOCNN_DATA_DIR"
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
AUTOTUNE = tf.data.AUTOTUNE
# Folders a zip made on macOS, or a file browser, leaves behind; never classes.
_IGNORED_DIRS = {"__MACOSX"}
# Patient id from the Kaggle file names (see ../shared/chest_xray/README.md):
# person<ID>_bacteria_<N>.jpeg, person<ID>_virus_<N>.jpeg, IM-<ID>-<N>.jpeg and
# NORMAL2-IM-<ID>-<N>.jpeg.
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_"),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-"),
)
# The pneumonia subtype, from the same names: person<ID>_bacteria_<N> and person<ID>_virus_<N>.
_SUBTYPE_PATTERN = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)
_SUBTYPE_LABELS = {"bacteria": 1, "virus": 2}


class DataError(ValueError):
    """Raised when the data folder is missing or not laid out as expected."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data folder as found on disk.

    Args:
        root: the folder the user pointed at, after resolving nesting.
        class_names: class folder names, sorted; the label of a class is its index.
        development: folders whose images form the train/validation pool (Kaggle `train/`, and
            `val/` when present; or the root itself for plain class folders).
        test: the Kaggle `test/` folder, or `None`. Never used for training or selection.
    """

    root: Path
    class_names: tuple[str, ...]
    development: tuple[Path, ...]
    test: Path | None


def resolve_data_dir(data_dir: str | None) -> Path:
    """Finds the data: `data_dir`, else `$PNEUMOCNN_DATA_DIR`, else a kagglehub download.

    Args:
        data_dir: a folder given by the user, or `None`.

    Returns:
        The folder to read.

    Raises:
        DataError: if the given folder does not exist, or nothing was given and the download
            failed (no network, no Kaggle credentials).
    """
    source, folder = "--data-dir", data_dir
    if folder is None and os.environ.get(DATA_ENV_VAR):
        source, folder = f"${DATA_ENV_VAR}", os.environ[DATA_ENV_VAR]
    if folder is not None:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise DataError(
                f"Data directory '{path}' does not exist. Received: {source}='{folder}'. "
                "Pass --data-dir pointing at a Kaggle-style chest_xray/ folder."
            )
        return path
    import kagglehub  # imported here: only this path needs it, and it is slow to import.

    logger.info("No --data-dir or $%s; downloading %s with kagglehub", DATA_ENV_VAR, KAGGLE_DATASET)
    try:
        return Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as error:  # noqa: BLE001 - kagglehub raises many types; all mean "no data".
        raise DataError(
            f"No data folder was given and downloading '{KAGGLE_DATASET}' with kagglehub failed "
            f"({type(error).__name__}: {error}). Pass --data-dir /path/to/chest_xray or set "
            f"{DATA_ENV_VAR}=/path/to/chest_xray (a folder holding train/NORMAL and "
            "train/PNEUMONIA, or NORMAL/ and PNEUMONIA/ directly)."
        ) from error


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        child
        for child in folder.iterdir()
        if child.is_dir() and child.name not in _IGNORED_DIRS and not child.name.startswith(".")
    )


def _class_names(folder: Path) -> tuple[str, ...]:
    names = tuple(child.name for child in _subdirs(folder))
    if not names:
        raise DataError(
            f"Data directory '{folder}' has no class subfolders (e.g. NORMAL/ and PNEUMONIA/). "
            f"Received: data_dir='{folder}'. Pass --data-dir pointing at a Kaggle-style "
            "chest_xray/ folder."
        )
    return names


def find_dataset(data_dir: str | Path) -> Dataset:
    """Reads the layout of a data folder.

    Accepted layouts: a folder holding `train/` (with optional `val/` and `test/`); the doubly
    nested `chest_xray/chest_xray/` that the Kaggle archive unpacks to (`__MACOSX` is ignored);
    or a folder whose subfolders are the classes.

    Args:
        data_dir: the folder to read.

    Returns:
        A `Dataset`.

    Raises:
        DataError: if the folder is missing, has no class folders, or a class has no images.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"Data directory '{root}' does not exist. Received: data_dir='{data_dir}'. "
            "Pass --data-dir pointing at a Kaggle-style chest_xray/ folder."
        )
    # Walk down through the single-folder nesting that archives add (chest_xray/chest_xray/).
    while not (root / "train").is_dir():
        children = _subdirs(root)
        if len(children) == 1 and children[0].name.lower() in ("chest_xray", "chest-xray"):
            root = children[0]
        else:
            break
    if (root / "train").is_dir():
        class_names = _class_names(root / "train")
        development = [root / "train"] + ([root / "val"] if (root / "val").is_dir() else [])
        test = root / "test" if (root / "test").is_dir() else None
    else:
        class_names = _class_names(root)
        development, test = [root], None
    if len(class_names) < 2:
        raise DataError(
            f"Data directory '{root}' has only the class folder {list(class_names)}; at least "
            f"two are needed (NORMAL/ and PNEUMONIA/). Received: data_dir='{data_dir}'. Add the "
            "missing class folder, or point --data-dir at a Kaggle-style chest_xray/ folder."
        )
    dataset = Dataset(root, class_names, tuple(development), test)
    for name in class_names:
        if not scan_folder(development[0] / name, frozenset(_IGNORED_DIRS)).files:
            raise DataError(
                f"Class folder '{development[0] / name}' has no JPEG, PNG or DICOM images. "
                f"Received: data_dir='{data_dir}'. Put the {name} images there or remove it."
            )
    return dataset


def list_images(
    folders: tuple[Path, ...] | list[Path], class_names: tuple[str, ...]
) -> pd.DataFrame:
    """Lists the images under `<folder>/<class>/` for each folder, with their labels.

    Every entry left out is logged with its reason, one warning per reason (see
    `pneumocnn.images.scan_folder`): hidden and non-image files, names that are not UTF-8, links
    to folders, dangling links and link loops, FIFOs and devices, unreadable folders.

    Returns:
        A DataFrame with columns `path` (str) and `label` (int index into `class_names`),
        sorted by path so that the order never depends on the file system.
    """
    rows = []
    skipped: list[tuple[str, str]] = []
    for folder in folders:
        for label, name in enumerate(class_names):
            class_dir = folder / name
            if not class_dir.is_dir():
                continue
            scan = scan_folder(class_dir, frozenset(_IGNORED_DIRS))
            rows += [(path, label) for path in scan.files]
            skipped += scan.skipped
    FolderScan([], skipped).log_skipped(logger)
    return pd.DataFrame(rows, columns=["path", "label"]).sort_values("path", ignore_index=True)


def patient_id(path: str | Path) -> str:
    """Returns the patient an image belongs to, from its file name.

    `person12_virus_3.jpeg` -> `person12`; `IM-0115-0001.jpeg` -> `IM-0115`;
    `NORMAL2-IM-0135-0001.jpeg` -> `NORMAL2-IM-0135`. A name matching no scheme is its own
    patient (the file name without extension).
    """
    name = Path(path).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return Path(name).stem


def subtype_of(path: str | Path) -> str | None:
    """Returns "bacteria" or "virus" from a pneumonia film's file name, else `None`.

    `person12_virus_3.jpeg` -> "virus"; `person7_bacteria_30.jpeg` -> "bacteria";
    `IM-0115-0001.jpeg` -> `None`.
    """
    match = _SUBTYPE_PATTERN.search(Path(path).name)
    return match.group(1).lower() if match else None


def film_group(path: str | Path, is_pneumonia: bool) -> str:
    """The group a film is reported in, from its file name: where errors fall.

    NORMAL films are split by the two naming schemes of the Kaggle data (`IM-...` and
    `NORMAL2-IM-...`, which come from different batches), pneumonia films by subtype.

    `IM-0115-0001.jpeg` -> "NORMAL IM-"; `NORMAL2-IM-0135-0001.jpeg` -> "NORMAL NORMAL2-";
    `person12_virus_3.jpeg` -> "PNEUMONIA viral"; `person7_bacteria_30.jpeg` ->
    "PNEUMONIA bacterial"; a name with no scheme -> "NORMAL other" or "PNEUMONIA other".

    Args:
        path: the film's file.
        is_pneumonia: its true class.
    """
    name = Path(path).name
    if is_pneumonia:
        subtype = subtype_of(name)
        return {"bacteria": "PNEUMONIA bacterial", "virus": "PNEUMONIA viral"}.get(
            subtype or "", "PNEUMONIA other"
        )
    if name.upper().startswith("NORMAL2-"):
        return "NORMAL NORMAL2-"
    return "NORMAL IM-" if name.upper().startswith("IM-") else "NORMAL other"


def task_class_names(task: str, folder_names: tuple[str, ...]) -> tuple[str, ...]:
    """The class names a model of `task` predicts, index = label: the class folders for
    "binary", NORMAL / BACTERIAL / VIRAL for "subtype"."""
    return SUBTYPE_CLASS_NAMES if task == "subtype" else tuple(folder_names)


def label_for_task(images: pd.DataFrame, class_names: tuple[str, ...], task: str) -> pd.DataFrame:
    """Relabels images listed from class folders for `task`.

    For "binary" the folder labels stand. For "subtype", NORMAL stays 0 and each PNEUMONIA film
    becomes 1 (BACTERIAL) or 2 (VIRAL) from its file name.

    Args:
        images: from `list_images`, labelled by folder.
        class_names: the folder names, index = folder label.
        task: "binary" or "subtype".

    Returns:
        A DataFrame like `images`, labelled for the task.

    Raises:
        DataError: if the folders are not NORMAL/ and PNEUMONIA/, or a PNEUMONIA file name
            carries no subtype.
    """
    if task != "subtype":
        return images
    if tuple(class_names) != BINARY_CLASS_NAMES:
        raise DataError(
            f"--task subtype (and --train-on-subtypes) needs exactly the class folders "
            f"{list(BINARY_CLASS_NAMES)}. Received: {list(class_names)}. Use --task binary "
            "(without --train-on-subtypes) for other classes."
        )
    images = images.copy()
    pneumonia = images["label"].to_numpy() == 1
    subtypes = [subtype_of(path) for path in images.loc[pneumonia, "path"]]
    unlabelled = [p for p, s in zip(images.loc[pneumonia, "path"], subtypes, strict=True) if not s]
    if unlabelled:
        raise DataError(
            f"{len(unlabelled)} PNEUMONIA files carry no subtype in their name, e.g. "
            f"{unlabelled[:3]}. --task subtype (and --train-on-subtypes) reads it from names "
            "like person12_bacteria_3.jpeg and person12_virus_3.jpeg. Rename those files, move "
            "them out, or use --task binary (without --train-on-subtypes)."
        )
    images.loc[pneumonia, "label"] = [_SUBTYPE_LABELS[s] for s in subtypes]
    return images


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


def build_augmentation(
    config: Config, strength: float | None = None, name: str = "augmentation"
) -> keras.Sequential:
    """Augmentation for training batches, as Keras preprocessing layers on raw 0-255 pixels.

    Small rotations, shifts and zooms mimic how a child is positioned on the film; contrast
    mimics exposure differences between machines; brightness, blur and noise
    (`intensity_strength`; the noise is added in `make_datasets`, as Keras's GaussianNoise
    takes no pixel-scale deviation) mimic detectors and hospitals. Horizontal flips are off by
    default: a chest film is not mirror-symmetric (the heart sits on the left, and films carry
    side markers), so a flipped film is not a realistic input.

    Args:
        config: uses `augment_strength`, `intensity_strength`, `framing_strength`,
            `horizontal_flip` and `seed`.
        strength: overrides `config.augment_strength`. Defaults to `None`.
        name: the model's name. Defaults to "augmentation".

    Returns:
        A `keras.Sequential` (empty when every strength is 0 and flips are off).
    """
    strength = config.augment_strength if strength is None else strength
    intensity, seed, framing = config.intensity_strength, config.seed, config.framing_strength
    layers = []
    if framing > 0:
        # The test films are framed tighter than the training films, and a model that learnt
        # "tight frame = pneumonia" calls tightly framed NORMAL films PNEUMONIA. Zooming in on
        # films of both classes (negative factors zoom in) takes that cue away; "nearest" fills
        # the edge a shift uncovers with the film's own border rather than a black band.
        layers += [
            keras.layers.RandomZoom(
                (-min(0.6, 0.25 * framing), 0.0), fill_mode="nearest", seed=seed + 8
            ),
            keras.layers.RandomTranslation(
                0.08 * framing, 0.08 * framing, fill_mode="nearest", seed=seed + 9
            ),
        ]
    if strength > 0:
        layers += [
            keras.layers.RandomRotation(0.02 * strength, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(
                0.05 * strength, 0.05 * strength, fill_mode="constant", seed=seed + 1
            ),
            keras.layers.RandomZoom(0.1 * strength, fill_mode="constant", seed=seed + 2),
            keras.layers.RandomContrast(min(0.9, 0.2 * strength), seed=seed + 3),
        ]
    if intensity > 0:
        layers += [
            keras.layers.RandomBrightness(min(0.9, 0.1 * intensity), seed=seed + 5),
            keras.layers.RandomGaussianBlur(
                factor=min(1.0, 0.5 * intensity), sigma=min(1.0, 0.7 * intensity), seed=seed + 6
            ),
        ]
    if config.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(layers, name=name)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights (n_samples / (n_classes * count)) from the training labels."""
    classes = np.arange(num_classes)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def load_teachers(config: Config, num_classes: int) -> list:
    """Loads the teacher models `config.distill_from` names (comma-separated `.keras` files).

    Returns:
        The models (uncompiled), or `[]` when `distill_from` is empty.

    Raises:
        FileNotFoundError: if a teacher file does not exist.
        ValueError: if a teacher's input size or outputs do not match the run's.
    """
    from pneumocnn.model import load_model

    teachers = []
    for path in [part.strip() for part in config.distill_from.split(",") if part.strip()]:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"Teacher model '{path}' does not exist. Received: distill_from="
                f"{config.distill_from!r}. Name .keras files (e.g. RUN_DIR/best.keras), "
                "separated by commas."
            )
        teacher = load_model(path)
        outputs = 1 if num_classes == 2 else num_classes
        if tuple(teacher.input_shape[1:3]) != (config.image_size,) * 2 or (
            teacher.output_shape[-1] != outputs
        ):
            raise ValueError(
                f"Teacher '{path}' takes {teacher.input_shape[1:3]} films and gives "
                f"{teacher.output_shape[-1]} outputs; this run needs ({config.image_size}, "
                f"{config.image_size}) and {outputs}. Received: distill_from="
                f"{config.distill_from!r}. Use teachers of the same task and image size."
            )
        teacher.trainable = False
        teachers.append(teacher)
    return teachers


def _to_float(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32), labels


def _mixup(alpha: float, seed: int):
    """Returns a batch map that blends each film with another of the batch (Zhang et al., 2018):
    x = l*x1 + (1-l)*x2, likewise labels and sample weights, l ~ Beta(alpha, alpha) per film."""

    def mix(images, labels, weights):
        batch = tf.shape(images)[0]
        first = tf.random.gamma([batch], alpha, seed=seed)
        second = tf.random.gamma([batch], alpha, seed=seed + 1)
        share = first / (first + second + 1e-12)
        partner = tf.random.shuffle(tf.range(batch), seed=seed + 2)
        blend = share[:, tf.newaxis]
        images = blend[:, :, tf.newaxis, tf.newaxis] * images + (
            1 - blend[:, :, tf.newaxis, tf.newaxis]
        ) * tf.gather(images, partner)
        labels = blend * labels + (1 - blend) * tf.gather(labels, partner)
        weights = share * weights + (1 - share) * tf.gather(weights, partner)
        return images, labels, weights

    return mix


def _distill(teachers: list, weight: float):
    """Returns a batch map that moves each target towards the teachers' mean prediction on the
    very film the student sees (augmented and mixed): y = (1 - w) y + w mean_k teacher_k(x)."""

    def blend(images, labels, weights):
        predictions = tf.add_n([teacher(images, training=False) for teacher in teachers])
        soft = tf.cast(predictions, labels.dtype) / len(teachers)
        return images, (1.0 - weight) * labels + weight * soft, weights

    return blend


def make_datasets(
    config: Config,
    train: LoadedSplit,
    val: LoadedSplit,
    num_classes: int = 2,
    teachers: list | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """Builds the training and validation `tf.data` pipelines from decoded images.

    Training: cache -> shuffle (each epoch) -> batch -> augment -> (mixup) -> (distill) ->
    prefetch, yielding
    `(images, labels, sample_weights)`. With `balance="class_weight"` the sample weights are
    the class weights of the training split (as weights they survive mixup, which Keras's
    `class_weight` would not); with `"oversample"` each class is repeated and sampled equally,
    so batches are balanced. With `normal_augment_strength`, NORMAL films (label 0) get their
    own augmentation strength. Validation: cache -> batch -> prefetch, never augmented. Three
    classes (`--task subtype`) get one-hot labels, so mixup and label smoothing apply as well.

    Args:
        config: uses `batch_size`, `balance`, `seed`, `mixup_alpha` and the augmentation fields.
        train: decoded training images.
        val: decoded validation images.
        num_classes: number of classes. Defaults to 2.
        teachers: Keras models whose mean prediction on each training film is blended into its
            target with `config.distill_weight` (knowledge distillation; see `load_teachers`).
            Defaults to `None`: none.

    Returns:
        `(train_ds, val_ds, steps_per_epoch)`. Images are float32 raw pixels; labels float32 of
        shape `(batch, 1)` for two classes (P(positive)), else one-hot `(batch, num_classes)`.
    """
    one_hot = num_classes > 2

    def labelled(images: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
        targets = (
            np.eye(num_classes, dtype=np.float32)[labels]
            if one_hot
            else labels.astype(np.float32)[:, np.newaxis]
        )
        return tf.data.Dataset.from_tensor_slices((images, targets)).cache()

    def class_index(labels: tf.Tensor) -> tf.Tensor:
        if one_hot:
            return tf.argmax(labels, axis=-1, output_type=tf.int32)
        return tf.cast(tf.round(labels[:, 0]), tf.int32)

    steps = max(1, int(np.ceil(len(train.labels) / config.batch_size)))
    if config.balance == "oversample":
        per_class = [
            labelled(train.images[train.labels == c], train.labels[train.labels == c])
            .shuffle(int(np.sum(train.labels == c)), seed=config.seed + c)
            .repeat()
            for c in range(num_classes)
            if np.any(train.labels == c)
        ]
        train_ds = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[1.0 / len(per_class)] * len(per_class), seed=config.seed
        )
    else:
        train_ds = labelled(train.images, train.labels).shuffle(
            len(train.labels), seed=config.seed, reshuffle_each_iteration=True
        )
    # Cached as uint8 (a quarter of the memory); cast per batch.
    train_ds = train_ds.batch(config.batch_size).map(_to_float, num_parallel_calls=AUTOTUNE)

    augmentation = build_augmentation(config)
    normal_augmentation = (
        build_augmentation(config, config.normal_augment_strength, "normal_augmentation")
        if config.normal_augment_strength > 0
        else None
    )

    def augment(images, labels):
        augmented = augmentation(images, training=True) if augmentation.layers else images
        if normal_augmentation is not None:
            is_normal = tf.reshape(class_index(labels) == 0, [-1, 1, 1, 1])
            augmented = tf.where(is_normal, normal_augmentation(images, training=True), augmented)
        if config.gamma_strength > 0:  # exposure curve: 255 * (x / 255) ** gamma, per film
            spread = float(np.log1p(0.5 * config.gamma_strength))
            gamma = tf.exp(
                tf.random.uniform(
                    [tf.shape(augmented)[0], 1, 1, 1], -spread, spread, seed=config.seed + 12
                )
            )
            augmented = 255.0 * tf.pow(tf.clip_by_value(augmented / 255.0, 0.0, 1.0), gamma)
        if config.intensity_strength > 0:  # detector noise, in pixel units
            noise = tf.random.normal(
                tf.shape(augmented), stddev=3.0 * config.intensity_strength, seed=config.seed + 7
            )
            augmented = tf.clip_by_value(augmented + noise, 0.0, 255.0)
        return augmented, labels

    if (
        augmentation.layers
        or normal_augmentation is not None
        or config.intensity_strength > 0
        or config.gamma_strength > 0
    ):
        train_ds = train_ds.map(augment, num_parallel_calls=AUTOTUNE)

    table = (
        class_weights(train.labels, num_classes)
        if config.balance == "class_weight"
        else dict.fromkeys(range(num_classes), 1.0)
    )
    weight_of = tf.constant([table[c] for c in range(num_classes)], tf.float32)
    train_ds = train_ds.map(
        lambda x, y: (x, y, tf.gather(weight_of, class_index(y))),
        num_parallel_calls=AUTOTUNE,
    )
    if config.mixup_alpha > 0:
        train_ds = train_ds.map(_mixup(config.mixup_alpha, config.seed + 11))
    if teachers:
        train_ds = train_ds.map(_distill(teachers, config.distill_weight))
    val_ds = labelled(val.images, val.labels).batch(config.batch_size).map(_to_float)
    return train_ds.prefetch(AUTOTUNE), val_ds.prefetch(AUTOTUNE), steps
