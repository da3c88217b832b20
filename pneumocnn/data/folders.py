"""Finding the data and reading what its file names say: classes, patients, subtypes.

`resolve_data_dir` (flag, else `$PNEUMOCNN_DATA_DIR`, else kagglehub) -> `find_dataset` (Kaggle
layout or plain class folders) -> `list_images` -> `label_for_task`. `patient_id` and
`subtype_of` read the Kaggle file names (`patient_id` also a DICOM film's PatientID). No
TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import kagglehub
import pandas as pd

from pneumocnn.core.errors import DataError
from pneumocnn.core.task import BINARY_CLASS_NAMES, SUBTYPE_CLASS_NAMES, Task
from pneumocnn.data.dicom import dicom_patient
from pneumocnn.data.scan import FolderScan, scan_folder

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "PNEUMOCNN_DATA_DIR"
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
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
    `pneumocnn.data.scan.scan_folder`): hidden and non-image files, names that are not UTF-8, links
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


def match_patient(path: str | Path) -> str | None:
    """The patient a film names: its Kaggle file name, else a DICOM film's header (see
    `pneumocnn.data.dicom.dicom_patient`: a one-way key of its PatientID), else `None`.

    `person12_virus_3.jpeg` -> `person12`; `IM-0115-0001.jpeg` -> `IM-0115`;
    `NORMAL2-IM-0135-0001.jpeg` -> `NORMAL2-IM-0135`; `1.2.840.5.dcm` with PatientID `4711`
    -> `dicom-` and 16 hex digits.
    """
    name = Path(path).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return dicom_patient(path)


def patient_id(path: str | Path) -> str:
    """Returns the patient an image belongs to, from its file name or DICOM header (see
    `match_patient`).

    A film that names no patient is its own patient (the file name without extension).
    """
    return match_patient(path) or Path(path).stem


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
    return Task.of_folders(task, folder_names).class_names


def label_for_task(images: pd.DataFrame, class_names: tuple[str, ...], task: str) -> pd.DataFrame:
    """Relabels images listed from class folders for `task`.

    For "binary" the folder labels stand. For "subtype", class folders named NORMAL/, BACTERIAL/
    and VIRAL/ give the labels 0, 1 and 2 themselves; with NORMAL/ and PNEUMONIA/, NORMAL stays 0
    and each PNEUMONIA film becomes 1 (BACTERIAL) or 2 (VIRAL) from its file name.

    Args:
        images: from `list_images`, labelled by folder.
        class_names: the folder names, index = folder label.
        task: "binary" or "subtype".

    Returns:
        A DataFrame like `images`, labelled for the task.

    Raises:
        DataError: if the folders are neither NORMAL/ and PNEUMONIA/ nor NORMAL/, BACTERIAL/ and
            VIRAL/, or a PNEUMONIA file name carries no subtype.
    """
    if not Task.of_folders(task, class_names).subtype:
        return images
    if sorted(class_names) == sorted(SUBTYPE_CLASS_NAMES):
        images = images.copy()
        images["label"] = [
            SUBTYPE_CLASS_NAMES.index(class_names[label]) for label in images["label"]
        ]
        return images
    if tuple(class_names) != BINARY_CLASS_NAMES:
        raise DataError(
            f"--task subtype (and --train-on-subtypes) needs exactly the class folders "
            f"{list(BINARY_CLASS_NAMES)} (the subtype in each PNEUMONIA file's name) or "
            f"{list(SUBTYPE_CLASS_NAMES)}. Received: {list(class_names)}. Use --task binary "
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
            "like person12_bacteria_3.jpeg and person12_virus_3.jpeg. Rename those files, sort "
            "the pneumonia films into BACTERIAL/ and VIRAL/ folders beside NORMAL/ instead of "
            "PNEUMONIA/, move them out, or use --task binary (without --train-on-subtypes)."
        )
    images.loc[pneumonia, "label"] = [_SUBTYPE_LABELS[s] for s in subtypes]
    return images
