import dataclasses
import shutil

import keras
import numpy as np
import pandas as pd
import pytest

from helpers import REAL_DATA, requires_real_data
from pneumocnn.core.config import Config
from pneumocnn.core.errors import DataError
from pneumocnn.data.folders import (
    DATA_ENV_VAR,
    KAGGLE_DATASET,
    film_group,
    find_dataset,
    list_images,
    patient_id,
    resolve_data_dir,
)
from pneumocnn.data.pipeline import class_weights, make_datasets
from pneumocnn.data.split import LoadedSplit, limit_per_class, load_split, make_split, prepare_split
from pneumocnn.testing import synthetic_xray, write_dicom
from pneumocnn.training.distill import load_teachers


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person12_virus_3.jpeg", "person12"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-0135-0001.jpeg", "NORMAL2-IM-0135"),
        ("scan_from_elsewhere.png", "scan_from_elsewhere"),
    ],
)
def test_patient_id_follows_the_kaggle_file_names(name, patient):
    assert patient_id(f"train/X/{name}") == patient


def test_a_dicom_film_names_its_patient_by_a_one_way_key_of_its_patient_id(tmp_path):
    pytest.importorskip("pydicom", reason="the lite extra (pydicom) is not installed")
    rng = np.random.default_rng(0)
    first = write_dicom(
        tmp_path / "1.2.3.dcm", synthetic_xray(rng, 0, (40, 48)), patient=("A^B", "4711")
    )
    second = write_dicom(
        tmp_path / "1.2.4.dcm", synthetic_xray(rng, 0, (40, 48)), patient=("A^B", "4711")
    )
    other = write_dicom(
        tmp_path / "1.2.5.dcm", synthetic_xray(rng, 0, (40, 48)), patient=("C^D", "815")
    )
    anonymous = write_dicom(
        tmp_path / "1.2.6.dcm", synthetic_xray(rng, 0, (40, 48)), patient=("", "")
    )
    broken = tmp_path / "1.2.7.dcm"
    broken.write_bytes(b"not a DICOM file at all")
    key = patient_id(first)
    assert key.startswith("dicom-") and "4711" not in key
    assert patient_id(second) == key and patient_id(other) != key
    # No PatientID, or no readable header: the film is its own patient, as a plain file is.
    assert patient_id(anonymous) == "1.2.6" and patient_id(broken) == "1.2.7"
    # A Kaggle name still comes first.
    renamed = first.rename(tmp_path / "person3_virus_9.dcm")
    assert patient_id(renamed) == "person3"


def _split(root, seed=0, val_fraction=0.25):
    dataset = find_dataset(root)
    images = list_images(dataset.development, dataset.class_names)
    return make_split(images, val_fraction, seed)


def test_split_keeps_every_patient_on_one_side(make_dataset):
    split = _split(make_dataset(patients=12, images_per_patient=3))
    sides = split.groupby("patient")["subset"].nunique()
    assert (sides == 1).all()
    assert set(split["subset"]) == {"train", "val"}


def test_split_keeps_the_class_ratio(make_dataset):
    split = _split(make_dataset(patients=12, images_per_patient=2))
    ratio = split.groupby("subset")["label"].mean()
    assert ratio["train"] == pytest.approx(0.5, abs=0.1)
    assert ratio["val"] == pytest.approx(0.5, abs=0.1)


def test_split_is_deterministic_for_a_seed_and_changes_with_it(make_dataset):
    root = make_dataset(patients=12)
    first, again, other = _split(root, seed=1), _split(root, seed=1), _split(root, seed=2)
    pd.testing.assert_frame_equal(first, again)
    assert not first["subset"].equals(other["subset"])


def test_split_seed_shares_one_split_between_seeds(make_dataset):
    dataset = find_dataset(make_dataset(patients=12))

    def split_of(**fields):
        return prepare_split(Config(val_fraction=0.25, **fields), dataset)

    pd.testing.assert_frame_equal(split_of(seed=1, split_seed=7), split_of(seed=2, split_seed=7))
    pd.testing.assert_frame_equal(split_of(seed=7), split_of(seed=3, split_seed=7))
    assert not split_of(seed=1)["subset"].equals(split_of(seed=2)["subset"])


def test_duplicate_files_of_different_patients_share_a_side(make_dataset):
    root = make_dataset(patients=10, images_per_patient=1)
    normal = sorted((root / "train" / "NORMAL").iterdir())
    for copy in range(5):
        shutil.copy(normal[0], normal[0].with_name(f"IM-9{copy:03d}-0001{normal[0].suffix}"))
    for seed in range(5):
        split = _split(root, seed=seed).set_index("path")
        copies = [p for p in split.index if "IM-9" in p or p == str(normal[0])]
        assert split.loc[copies, "subset"].nunique() == 1


@requires_real_data
def test_real_split_has_no_patient_on_both_sides_and_about_a_fifth_in_val():
    dataset = find_dataset(REAL_DATA)
    split = prepare_split(Config(), dataset)
    assert len(split) == 1341 + 3875
    assert (split.groupby("patient")["subset"].nunique() == 1).all()
    val_share = (split["subset"] == "val").mean()
    assert 0.15 < val_share < 0.25
    normal_share = split.groupby("subset")["label"].apply(lambda s: (s == 0).mean())
    assert normal_share["val"] == pytest.approx(normal_share["train"], abs=0.03)


def test_nested_kaggle_archive_layout_is_found(make_dataset, tmp_path):
    inner = make_dataset()
    outer = tmp_path / "download" / "chest_xray"
    outer.mkdir(parents=True)
    shutil.move(str(inner), str(outer / "chest_xray"))
    (outer / "__MACOSX" / "chest_xray").mkdir(parents=True)
    dataset = find_dataset(tmp_path / "download")
    assert dataset.root == outer / "chest_xray"
    assert dataset.class_names == ("NORMAL", "PNEUMONIA")


def test_val_and_test_folders_are_recognised(make_dataset):
    root = make_dataset()
    shutil.copytree(root / "train", root / "val")
    shutil.copytree(root / "train", root / "test")
    dataset = find_dataset(root)
    assert dataset.development == (root / "train", root / "val")
    assert dataset.test == root / "test"


def test_plain_class_folders_are_accepted(make_dataset):
    root = make_dataset() / "train"
    dataset = find_dataset(root)
    assert dataset.class_names == ("NORMAL", "PNEUMONIA")
    assert dataset.development == (root,)


def test_missing_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data-dir"):
        find_dataset(tmp_path / "nowhere")


def test_folder_without_class_subfolders_gives_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no class subfolders"):
        find_dataset(tmp_path)


def test_empty_class_gives_a_clear_error(make_dataset):
    root = make_dataset()
    for path in (root / "train" / "NORMAL").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="NORMAL' has no JPEG, PNG or DICOM images"):
        find_dataset(root)


def test_stray_files_and_macos_folders_are_not_listed(make_dataset):
    root = make_dataset(patients=2, images_per_patient=1)
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "NORMAL" / "readme.txt").write_text("x")
    (root / "train" / "NORMAL" / "__MACOSX").mkdir()
    (root / "train" / "NORMAL" / "__MACOSX" / "._IM-0000-0001.jpeg").write_bytes(b"\0")
    images = list_images([root / "train"], ("NORMAL", "PNEUMONIA"))
    assert len(images) == 4
    assert all(p.endswith((".jpeg", ".png")) for p in images["path"])


def test_data_dir_flag_wins_over_environment(make_dataset, monkeypatch, tmp_path):
    root = make_dataset()
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "elsewhere"))
    assert resolve_data_dir(str(root)) == root


def test_environment_variable_is_used_without_flag(make_dataset, monkeypatch):
    root = make_dataset()
    monkeypatch.setenv(DATA_ENV_VAR, str(root))
    assert resolve_data_dir(None) == root


def test_kagglehub_download_is_used_without_flag_or_environment(make_dataset, monkeypatch):
    import kagglehub

    root = make_dataset()
    asked = []
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: asked.append(handle) or root)
    assert resolve_data_dir(None) == root
    assert asked == [KAGGLE_DATASET]


def test_failed_download_says_how_to_point_at_local_data(monkeypatch):
    import kagglehub

    def offline(handle):
        raise ConnectionError("no network")

    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DataError, match="--data-dir .*PNEUMOCNN_DATA_DIR"):
        resolve_data_dir(None)


def _loaded(make_dataset, config):
    root = make_dataset(patients=8, images_per_patient=2)
    dataset = find_dataset(root)
    split = prepare_split(config, dataset)
    return (
        load_split(split, "train", config.image_size, dataset.root),
        load_split(split, "val", config.image_size, dataset.root),
    )


def test_pipeline_yields_float_batches_of_raw_pixels(make_dataset):
    config = Config(image_size=32, batch_size=4, val_fraction=0.25)
    train, val = _loaded(make_dataset, config)
    train_ds, val_ds, steps = make_datasets(config, train, val)
    images, labels, weights = next(iter(train_ds))
    assert images.shape == (4, 32, 32, 1) and images.dtype.name == "float32"
    assert labels.shape == (4, 1)
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0
    assert float(images.numpy().max()) > 1.0  # raw 0-255, not rescaled
    assert steps == int(np.ceil(len(train.labels) / 4))


def _brightness_teacher(image_size):
    """A teacher whose P(pneumonia) is the film's mean brightness / 255: a different soft target
    for every film, computed on the film as the student sees it."""
    inputs = keras.Input((image_size, image_size, 1))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, outputs)


def test_distillation_blends_each_target_with_the_teachers_prediction_on_that_film(
    make_dataset, tmp_path
):
    config = Config(
        image_size=32, batch_size=64, val_fraction=0.25, mixup_alpha=0.3, distill_weight=0.25
    )
    train, val = _loaded(make_dataset, config)
    teacher = _brightness_teacher(32)
    plain_ds, _, _ = make_datasets(config, train, val)
    train_ds, val_ds, _ = make_datasets(config, train, val, teachers=[teacher, teacher])
    (plain_images, plain_labels, _), (images, labels, _) = (
        next(iter(plain_ds)),
        next(iter(train_ds)),
    )
    np.testing.assert_array_equal(images.numpy(), plain_images.numpy())  # the same seeded batch
    brightness = images.numpy().mean(axis=(1, 2)) / 255
    expected = 0.75 * plain_labels.numpy() + 0.25 * brightness
    np.testing.assert_allclose(labels.numpy(), expected, atol=1e-5)
    _, val_labels = next(iter(val_ds))  # validation keeps the true labels
    assert set(np.unique(val_labels.numpy())) <= {0.0, 1.0}

    path = tmp_path / "teacher.keras"
    teacher.save(path)
    assert (
        len(load_teachers(dataclasses.replace(config, distill_from=f"{path}, {path}"), 2)) == 2
    )
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_teachers(dataclasses.replace(config, distill_from="missing.keras"), 2)
    with pytest.raises(ValueError, match="same task and image size"):
        load_teachers(dataclasses.replace(config, image_size=48, distill_from=str(path)), 2)
    with pytest.raises(ValueError, match="distill_weight"):
        Config(distill_weight=0)


def test_validation_batches_are_never_augmented(make_dataset):
    config = Config(image_size=32, batch_size=64, val_fraction=0.25, augment_strength=3.0)
    train, val = _loaded(make_dataset, config)
    _, val_ds, _ = make_datasets(config, train, val)
    images, _ = next(iter(val_ds))
    np.testing.assert_array_equal(images.numpy(), val.images.astype(np.float32))


def test_training_batches_are_augmented(make_dataset):
    config = Config(
        image_size=32, batch_size=64, val_fraction=0.25, augment_strength=2.0, balance="none"
    )
    train, val = _loaded(make_dataset, config)
    train_ds, _, _ = make_datasets(config, train, val)
    images, _, _ = next(iter(train_ds))
    # Shuffled and augmented: no batch image equals its source pixels exactly.
    raw = {image.tobytes() for image in train.images.astype(np.float32)}
    assert not any(image.tobytes() in raw for image in images.numpy())


def test_oversampling_gives_balanced_batches(make_dataset):
    config = Config(
        image_size=32, batch_size=32, val_fraction=0.25, balance="oversample", augment_strength=0
    )
    train, val = _loaded(make_dataset, config)
    keep = np.r_[np.flatnonzero(train.labels == 0)[:2], np.flatnonzero(train.labels == 1)]
    skewed = LoadedSplit(train.images[keep], train.labels[keep], [], [])
    train_ds, _, _ = make_datasets(config, skewed, val)
    labels = np.concatenate([y.numpy().ravel() for _, y, _ in train_ds.take(8)])
    assert labels.mean() == pytest.approx(0.5, abs=0.08)


def test_class_weights_balance_the_training_labels():
    weights = class_weights(np.array([0] * 10 + [1] * 30), 2)
    assert weights[0] * 10 == pytest.approx(weights[1] * 30)


def test_limit_per_class_is_seeded_and_capped(make_dataset):
    root = make_dataset(patients=8)
    images = list_images([root / "train"], ("NORMAL", "PNEUMONIA"))
    limited = limit_per_class(images, 5, seed=3)
    assert limited["label"].value_counts().to_dict() == {0: 5, 1: 5}
    pd.testing.assert_frame_equal(limited, limit_per_class(images, 5, seed=3))


def test_class_weights_travel_as_sample_weights(make_dataset):
    config = Config(
        image_size=32, batch_size=64, val_fraction=0.25, augment_strength=0, mixup_alpha=0
    )
    train, val = _loaded(make_dataset, config)
    keep = np.r_[np.flatnonzero(train.labels == 0)[:3], np.flatnonzero(train.labels == 1)]
    skewed = LoadedSplit(train.images[keep], train.labels[keep], [], [])
    train_ds, _, _ = make_datasets(config, skewed, val)
    _, labels, weights = next(iter(train_ds))
    expected = class_weights(skewed.labels, 2)
    for label, weight in zip(labels.numpy().ravel(), weights.numpy(), strict=True):
        assert weight == pytest.approx(expected[int(label)])


def _first_training_batch(make_dataset, **fields):
    """Loads a tiny data set and returns `(train, images, labels, weights)` of the first
    training batch as numpy, for a 32 px config without augmentation unless `fields` say so."""
    config = Config(
        **{
            "image_size": 32,
            "batch_size": 64,
            "val_fraction": 0.25,
            "augment_strength": 0,
            "intensity_strength": 0,
            "mixup_alpha": 0,
            "framing_strength": 0,
            "gamma_strength": 0,
            "balance": "none",
            **fields,
        }
    )
    train, val = _loaded(make_dataset, config)
    train_ds, _, _ = make_datasets(config, train, val)
    images, labels, weights = next(iter(train_ds))
    return train, images.numpy(), labels.numpy().ravel(), weights.numpy()


def test_mixup_blends_films_labels_and_weights(make_dataset):
    _, images, labels, weights = _first_training_batch(make_dataset, mixup_alpha=0.4)
    assert ((labels > 0.01) & (labels < 0.99)).any()  # soft targets appear
    assert labels.min() >= 0 and labels.max() <= 1
    assert 0 <= images.min() and images.max() <= 255
    np.testing.assert_allclose(weights, 1.0, rtol=1e-6)


def test_normal_only_augmentation_leaves_pneumonia_films_untouched(make_dataset):
    train, images, labels, _ = _first_training_batch(make_dataset, normal_augment_strength=2.0)
    raw = {image.tobytes() for image in train.images.astype(np.float32)}
    for image, label in zip(images, labels, strict=True):
        assert (image.tobytes() in raw) == (label == 1)


def test_intensity_augmentation_changes_brightness_within_range(make_dataset):
    train, images, _, _ = _first_training_batch(make_dataset, intensity_strength=2.0)
    raw = {image.tobytes() for image in train.images.astype(np.float32)}
    assert not any(image.tobytes() in raw for image in images)
    assert images.min() >= 0 and images.max() <= 255


def test_framing_augmentation_zooms_in_on_every_class(make_dataset):
    # The framing shortcut (issue #15): a tight frame must not mean PNEUMONIA, so both classes
    # get zoomed in; no film passes through unchanged.
    train, images, labels, _ = _first_training_batch(make_dataset, framing_strength=1.0)
    raw = {image.tobytes() for image in train.images.astype(np.float32)}
    changed = np.array([image.tobytes() not in raw for image in images])
    assert changed[labels == 0].all() and changed[labels == 1].all()
    assert images.min() >= 0 and images.max() <= 255


def test_gamma_augmentation_keeps_black_and_white_and_bends_the_midtones():
    config = Config(
        image_size=32,
        augment_strength=0,
        intensity_strength=0,
        mixup_alpha=0,
        gamma_strength=2.0,
        framing_strength=0,
    )
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float32), (32, 1))[np.newaxis, :, :, None]
    films = np.repeat(ramp, 16, axis=0).astype(np.uint8)
    loaded = LoadedSplit(films, np.array([0, 1] * 8), [], [])
    train_ds, _, _ = make_datasets(config, loaded, loaded)
    images = next(iter(train_ds))[0].numpy()
    np.testing.assert_allclose(images[:, :, 0], 0.0, atol=1e-3)  # gamma fixes 0 ...
    np.testing.assert_allclose(images[:, :, -1], 255.0, atol=1e-2)  # ... and 255
    midtones = images[:, 0, 16, 0]
    assert midtones.std() > 1.0  # each film drew its own gamma


def test_film_group_reads_the_naming_scheme():
    assert film_group("x/IM-0115-0001.jpeg", False) == "NORMAL IM-"
    assert film_group("NORMAL2-IM-0135-0001.jpeg", False) == "NORMAL NORMAL2-"
    assert film_group("person12_virus_3.jpeg", True) == "PNEUMONIA viral"
    assert film_group("person7_bacteria_30.jpeg", True) == "PNEUMONIA bacterial"
    assert film_group("film.png", True) == "PNEUMONIA other"
