"""A site's labelled films: found, checked, decoded once, and split into patient folds.

The site folder is laid out as the Kaggle data is (`NORMAL/` and `PNEUMONIA/`, each film's patient
and, for a subtype model, its subtype read from its name; or `NORMAL/`, `BACTERIAL/` and
`VIRAL/` for a subtype model); a DICOM film's patient may come from its header's PatientID
instead, and any film's from a CSV (`file,patient`), which comes first.
Everything that would make the adaptation meaningless is refused before any long work: one
class, too few films, a film whose patient cannot be told, a training folder.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pneumocnn.core.errors import DataError, UsageError
from pneumocnn.core.files import display_name
from pneumocnn.core.task import Task, pneumonia_labels
from pneumocnn.data.dicom import patient_key
from pneumocnn.data.folders import label_for_task, list_images, match_patient
from pneumocnn.data.images import load_images

logger = logging.getLogger(__name__)

# Below this many films the adaptation learns little and its threshold says less: the learning
# curve in experiments/adaptation/ starts here.
MIN_FILMS = 50
# Each class needs films in every fold, so every fold's model sees both.
MIN_PER_CLASS = 10


@dataclasses.dataclass(frozen=True)
class SiteFilms:
    """The decoded films of a site.

    Args:
        images: uint8 `(n, size, size, 1)` raw pixels.
        labels: the task's labels, `(n,)` (NORMAL = 0).
        paths: the file of each film.
        patients: the patient of each film.
        folder: the site folder.
        skipped: `(path, reason)` for each unreadable file.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    patients: list[str]
    folder: Path
    skipped: list[tuple[str, str]]

    def subset(self, index: np.ndarray) -> SiteFilms:
        """The films at `index`, in that order."""
        index = np.asarray(index, int)
        return dataclasses.replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            paths=[self.paths[i] for i in index],
            patients=[self.patients[i] for i in index],
        )

    def counts(self) -> list[int]:
        """Films per class label."""
        return np.bincount(self.labels, minlength=int(self.labels.max()) + 1).tolist()


def read_patients_csv(path: str | Path) -> dict[str, str]:
    """The `file,patient` table of a site whose file names do not carry the patient.

    `file` is a path relative to the site folder or a bare file name.

    Raises:
        UsageError: if the file is missing or lacks the two columns.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"Patient table not found. Received: patients='{path}'. Pass a CSV with the columns "
            "file,patient (one row per film)."
        )
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "patient"} <= set(rows[0]):
        raise UsageError(
            f"Patient table '{path}' needs the columns file,patient. Received: columns="
            f"{sorted(rows[0]) if rows else []}. Write one row per film: file,patient."
        )
    return {row["file"].strip(): row["patient"].strip() for row in rows if row["patient"].strip()}


def _patients_of(paths: list[str], folder: Path, table: dict[str, str] | None) -> list[str]:
    """Each film's patient: from the table (by path relative to the folder, else by name), else
    from the file name or DICOM header (see `pneumocnn.data.folders.match_patient`); refuses the
    films whose patient cannot be told."""
    patients, unknown = [], []
    for path in paths:
        relative = Path(path).relative_to(folder).as_posix() if Path(path).is_absolute() else path
        patient = None
        if table is not None:
            patient = table.get(relative) or table.get(Path(path).name)
        # A table's ID is keyed as a DICOM PatientID is, so the two group the same patient.
        patient = patient_key(patient) if patient else match_patient(path)
        patients.append(patient)
        if patient is None:
            unknown.append(display_name(Path(path).name))
    if unknown:
        raise DataError(
            f"The patient of {len(unknown)} of {len(paths)} site films cannot be told, e.g. "
            f"{unknown[:3]}. The folds and the threshold group films by patient, so that no "
            "patient is learnt from and scored at once. Name the films as the Kaggle data does "
            "(person<ID>_bacteria_<N>.jpeg, IM-<ID>-<N>.jpeg), export them as DICOM with the "
            "PatientID in the header, or pass --patients FILE.csv with the columns file,patient."
        )
    return patients


def training_data_reason(folder: str | Path, data_dir: str | None = None) -> str | None:
    """Why `folder` is training data rather than a site's films, or `None`.

    It is when it holds `train/`; when it is a data set's `train/` split (a folder named `train`
    beside `test/` or `val/`, the Kaggle layout); or when it is, or lies in, the `train/` of
    the model's own data folder `data_dir`.

    Args:
        folder: the folder given as the site's.
        data_dir: the model's training data folder (its config's), if known. Defaults to `None`.
    """
    folder = Path(folder)
    if (folder / "train").is_dir():
        return "holds train/"
    resolved = folder.resolve()
    if resolved.name == "train" and any(
        (resolved.parent / name).is_dir() for name in ("test", "val")
    ):
        return "is the train/ split of a data set (it sits beside test/ or val/)"
    if data_dir:
        root = Path(data_dir).expanduser().resolve()
        for train in (root / "train", root / "chest_xray" / "train"):
            if resolved.is_relative_to(train):
                return f"lies in the model's own training data ('{train}')"
    return None


def check_site_folder(
    site_dir: str | Path,
    data_dir: str | None = None,
    verb: str = "adapt to",
    flag: str = "site_dir",
) -> Path:
    """Refuses a folder that is missing or that is training data (see `training_data_reason`).

    Args:
        site_dir: the folder given as the site's.
        data_dir: the model's training data folder, if known. Defaults to `None`.
        verb: what the command does with the films, for the message. Defaults to "adapt to".
        flag: the argument's name, for the message. Defaults to "site_dir".

    Raises:
        UsageError: for either.
    """
    folder = Path(site_dir)
    if not folder.is_dir():
        raise UsageError(
            f"Site folder not found. Received: {flag}='{site_dir}'. Pass a folder of the "
            "site's labelled films, one subfolder per class (NORMAL/, PNEUMONIA/)."
        )
    reason = training_data_reason(folder, data_dir)
    if reason:
        raise UsageError(
            f"'{folder}' {reason}: {verb} films from the site, not to training data. "
            f"Received: {flag}='{site_dir}'. Pass a folder of class subfolders (e.g. "
            "chest_xray/test)."
        )
    return folder


def site_classes(folder: Path, task: Task, site_dir: str | Path) -> tuple[str, ...]:
    """The class folders a site's films are listed from: NORMAL/ and PNEUMONIA/, or for a
    subtype model NORMAL/, BACTERIAL/ and VIRAL/ when those are there instead (see
    `pneumocnn.data.folders.label_for_task`).

    Raises:
        DataError: naming the missing class folders.
    """
    layouts = [task.folder_names] + ([task.class_names] if task.subtype else [])
    for names in layouts:
        if all((folder / name).is_dir() for name in names):
            return names
    missing = [name for name in task.folder_names if not (folder / name).is_dir()]
    other = f" (or {list(task.class_names)})" if task.subtype else ""
    merge = (
        " NORMAL/, BACTERIAL/ and VIRAL/ serve a subtype model: move BACTERIAL/ and VIRAL/ into "
        "one PNEUMONIA/ folder to adapt a binary one."
        if not task.subtype
        and all((folder / name).is_dir() for name in Task.of("subtype").class_names)
        else ""
    )
    raise DataError(
        f"Site folder '{folder}' has no {missing} subfolder: adaptation needs films of every "
        f"class {list(task.folder_names)}{other}. Received: site_dir='{site_dir}'. Add the "
        f"missing class's films (a model adapted to one class would call everything that).{merge}"
    )


def load_site(
    site_dir: str | Path,
    task: str,
    class_names: list[str],
    image_size: int,
    patients_csv: str | Path | None = None,
) -> SiteFilms:
    """Finds, checks and decodes a site's labelled films for a model.

    Args:
        site_dir: the site folder, one subfolder per class of the binary task (`NORMAL/`,
            `PNEUMONIA/`; a subtype model reads each pneumonia film's subtype from its name), or
            for a subtype model `NORMAL/`, `BACTERIAL/` and `VIRAL/`.
        task: the model's task.
        class_names: the model's classes, NORMAL first.
        image_size: the model's input side.
        patients_csv: a `file,patient` CSV. Defaults to `None`: patients from the file names
            (or a DICOM film's PatientID).

    Returns:
        The decoded films.

    Raises:
        UsageError: if the folder is missing, holds `train/`, or the patient table is bad.
        DataError: if a class folder is missing or empty, too few films are readable, or a
            film's patient cannot be told.
    """
    folder = check_site_folder(site_dir)
    folder_classes = site_classes(folder, Task.of(task, class_names), site_dir)
    table = label_for_task(list_images([folder], folder_classes), folder_classes, task)
    paths = table["path"].tolist()
    known = read_patients_csv(patients_csv) if patients_csv else None
    patients = _patients_of(paths, folder, known)
    logger.info("Decoding %d site films from %s", len(paths), folder)
    images, kept, skipped = load_images(paths, image_size)
    labels = table["label"].to_numpy()[kept].astype(np.int32)
    site = SiteFilms(
        images, labels, [paths[i] for i in kept], [patients[i] for i in kept], folder, skipped
    )
    check_enough(site, list(class_names))
    return site


def check_enough(site: SiteFilms, class_names: list[str]) -> None:
    """Refuses too few films, or too few of a class, for a meaningful adaptation.

    Raises:
        DataError: naming the counts and how many the learning curve asks for.
    """
    counts = np.bincount(pneumonia_labels(site.labels), minlength=2)
    if len(site.labels) < MIN_FILMS or counts.min() < MIN_PER_CLASS:
        raise DataError(
            f"Site folder '{site.folder}' has {len(site.labels)} readable films "
            f"({counts[0]} NORMAL, {counts[1]} pneumonia); adaptation needs at least {MIN_FILMS}, "
            f"with {MIN_PER_CLASS} or more of each. In the learning curve (experiments/adaptation) "
            "the result steadies from about 200 films: with 50 to 100 the specificity at the "
            "chosen threshold was lower and varied more between seeds (its README gives the "
            "figures, their intervals and what they were chosen on). Add labelled films of the "
            "site."
        )


def sample_patients(site: SiteFilms, films: int, seed: int) -> SiteFilms:
    """About `films` films, drawn whole patients at a time (seeded), stratified by class as
    far as patients allow: the learning curve's smaller sites. `films` 0 keeps all."""
    if films <= 0 or films >= len(site.labels):
        return site
    frame = pd.DataFrame({"patient": site.patients, "label": pneumonia_labels(site.labels)})
    rng = np.random.default_rng(seed)
    picked = []
    for _, group in frame.groupby("label"):
        share = round(films * len(group) / len(frame))
        # A numpy copy: pandas' string arrays are not sequences numpy shuffles in place safely.
        patients = np.array(group["patient"].unique(), dtype=object)
        rng.shuffle(patients)
        chosen, total = [], 0
        for patient in patients:
            if total >= share:
                break
            members = group.index[group["patient"] == patient].tolist()
            chosen += members
            total += len(members)
        picked += chosen
    return site.subset(np.sort(np.array(picked)))


def patient_folds(site: SiteFilms, folds: int, seed: int) -> list[np.ndarray]:
    """`folds` held-out index sets, grouped by patient and stratified by class (scikit-learn's
    `StratifiedGroupKFold`, seeded): each film is held out once, with all its patient's films.

    Raises:
        DataError: if a class has fewer patients than folds.
    """
    per_class = pd.Series(site.patients).groupby(pneumonia_labels(site.labels)).nunique().min()
    if per_class < folds:
        raise DataError(
            f"A class of the site's films has {per_class} patients; {folds} patient folds need "
            f"at least {folds} per class. Received: folds={folds}. Pass a smaller --folds or add "
            "films. (Patients come from --patients, the Kaggle file names, or a DICOM film's "
            "PatientID: anonymised films that share one ID count as one patient.)"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        held_out for _, held_out in splitter.split(site.paths, site.labels, groups=site.patients)
    ]
