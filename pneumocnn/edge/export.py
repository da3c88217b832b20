"""Export: the file family users embed, written from a run folder.

From a run folder it writes, into `RUN_DIR/export/` by default: `pneumocnn_int8.tflite` (full
integer: uint8 input of raw pixels, int8 builtin ops only, uint8 output),
`pneumocnn_fp16.tflite`, `pneumocnn_rgb_int8.tflite` (for stock image classifiers: float32 RGB
in, raw pixels; the same int8 network; one float32 score per class whose argmax is the decision
at the threshold), `pneumocnn.keras`, `pneumocnn_labels.txt`, the model card `MODEL_CARD.md` (see
`pneumocnn.edge.card`), and the metadata `pneumocnn.json` (see `pneumocnn.edge.describe`). A
`--task subtype` run's files are named `pneumocnn_subtype*` instead. Every `.tflite` has a fixed
batch of 1 and embedded TFLite metadata (see `pneumocnn.edge.embedded`).

`export` is a list of named steps: `prepare` (the run, its validation split, the float model,
the threshold and the training films), `convert_family` (int8, float16, RGB int8, `.keras`,
labels), `open_family` (the new files, opened once), `check_int8` (parity), `check_rgb` (the RGB
variant's parity), `check_guard_head` (its guard head against the input guard, recorded),
`describe` (the metadata) and `write_family` (rename into place). Nothing is
written unless every check passes: the files are made in the family's scratch folder (see
`pneumocnn.edge.family.claim_family`, which also refuses a second export or calibration of the
family while one runs), and moved into place after a commit point, metadata last, then the run's
`threshold.json` when the export chose the threshold. A kill before the commit leaves everything
as it was; one after it is completed by whoever reads the family next. A failed export leaves no
output folder it made, and a read-only or full disk is named as such (exit code 2).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumocnn.core.commit import write_fault
from pneumocnn.core.metadata import DEFAULT_NAMES, model_files, write_json_atomically
from pneumocnn.core.run_folder import CALIBRATION_IMAGES, THRESHOLD_FILE, export_dir
from pneumocnn.edge.card import card_file
from pneumocnn.edge.convert import convert, fixed_batch_saved_model
from pneumocnn.edge.describe import describe, file_metadata
from pneumocnn.edge.embedded import embed_pneumocnn_metadata
from pneumocnn.edge.equalize import equalize_activations
from pneumocnn.edge.family import PROVISIONAL, claim_family, remove_stale_scratch, write_family
from pneumocnn.edge.guard_head import guard_head_record
from pneumocnn.edge.parity import check_parity, guard_head_agreement, rgb_parity
from pneumocnn.edge.prepare import prepare, run_source
from pneumocnn.edge.rgb import rgb_variant
from pneumocnn.runtime.lite import LiteModel

if TYPE_CHECKING:
    import numpy as np

    from pneumocnn.edge.prepare import Prepared


logger = logging.getLogger(__name__)


def convert_family(
    prepared: Prepared, scratch: Path, files: dict[str, str], name: str, equalize: bool = True
) -> dict[str, Any] | None:
    """Step 2: writes the int8, float16 and RGB int8 `.tflite` (a batch of 1, TFLite metadata
    embedded; see `pneumocnn.edge.embedded`), the `.keras` and the labels into `scratch`.

    With `equalize`, the `.tflite` files are converted from the activation-equalized form of
    the model (`pneumocnn.edge.equalize`: the same float function, its channels stretched to
    share int8's range), which rounds less in int8; the `.keras` is the trained model as it is.

    Returns:
        The equalization's metadata record, or `None` without `equalize` (or when no layer
        could be equalized: a model that is not a chain of layers, such as an ensemble).
    """
    config, calibration = prepared.config, prepared.calibration
    model, record = prepared.keras_model, None
    if equalize:
        equalized = equalize_activations(model, calibration)
        if equalized.relu_layers or equalized.depthwise_layers:
            model, record = equalized.model, equalized.record()
        logger.info(
            "Equalized the int8 ranges of %d ReLU outputs and %d depthwise results (outputs "
            "change by %.1e at most)",
            len(equalized.relu_layers),
            len(equalized.depthwise_layers),
            equalized.max_output_change,
        )
    saved_model = fixed_batch_saved_model(model, scratch / "saved_model")
    card = {
        "name": name,
        "task": config.task,
        "class_names": list(prepared.source.class_names),
        "threshold": prepared.threshold,
        "image_size": config.image_size,
    }
    logger.info("Converting to int8 with %d calibration images", len(calibration))
    int8 = convert(saved_model, calibration)
    (scratch / files["int8"]).write_bytes(embed_pneumocnn_metadata(int8, card, channels=1))
    logger.info("Converting to float16")
    fp16 = convert(saved_model, None)
    (scratch / files["fp16"]).write_bytes(embed_pneumocnn_metadata(fp16, card, channels=1))
    logger.info("Grafting the RGB variant onto the int8 model")
    rgb = rgb_variant(model, prepared.threshold, int8, scratch, guard=prepared.guard)
    (scratch / files["rgb_int8"]).write_bytes(embed_pneumocnn_metadata(rgb, card, channels=3))
    # Saved uncompiled: loading it needs plain Keras only, not pneumocnn's training metrics.
    prepared.keras_model.save(scratch / files["keras"])
    (scratch / files["labels"]).write_text("\n".join(prepared.source.class_names) + "\n")
    return record


def open_family(scratch: Path, files: dict[str, str]) -> dict[str, LiteModel]:
    """Step 3: opens the three new `.tflite` files once (with their provisional metadata, see
    `pneumocnn.edge.family.PROVISIONAL`), for the checks and the description that follow."""
    return {
        role: LiteModel(scratch / files[role], scratch / PROVISIONAL)
        for role in ("int8", "fp16", "rgb_int8")
    }


def check_int8(
    prepared: Prepared, int8: LiteModel, require_parity: bool
) -> tuple[dict[str, Any], np.ndarray]:
    """Step 4: runs the new int8 model on the validation split and checks it against the float
    model (see `pneumocnn.edge.parity.check_parity`).

    Returns:
        `(parity, int8_probabilities)`.

    Raises:
        ParityError: if the check fails and `require_parity` is True.
    """
    int8_probabilities = int8.predict_proba(prepared.val.images)
    parity = check_parity(
        prepared.val.labels,
        prepared.float_probabilities,
        int8_probabilities,
        prepared.threshold,
        list(prepared.source.class_names),
        strict=require_parity,
    )
    if not parity["passed"]:
        logger.warning("Writing despite failed parity (require_parity=False): %s", parity)
    logger.info("int8 parity on validation: %s", parity)
    return parity, int8_probabilities


def check_rgb(
    prepared: Prepared, models: dict[str, LiteModel], require_parity: bool
) -> dict[str, Any]:
    """Step 5: runs the RGB variant on the validation split (as gray RGB) and checks that its
    highest score names the int8 model's decision on every film (see
    `pneumocnn.edge.parity.rgb_parity`).

    Raises:
        ParityError: if the check fails and `require_parity` is True.
    """
    return rgb_parity(
        models["rgb_int8"],
        models["int8"],
        prepared.val.images,
        prepared.threshold,
        list(prepared.source.class_names),
        require_parity,
    )


def check_guard_head(prepared: Prepared, rgb: LiteModel) -> dict[str, Any] | None:
    """Step 5b: the RGB variant's guard head against the input guard on the validation films
    (see `pneumocnn.edge.parity.guard_head_agreement`), for the record; `None` for a variant
    without one."""
    if len(rgb.interpreter.get_output_details()) < 2:
        return None
    return guard_head_record(guard_head_agreement(rgb, prepared.val.images, prepared.guard))


def export(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    target_sensitivity: float | None = None,
    require_parity: bool = True,
    name: str | None = None,
    equalize: bool = True,
) -> dict[str, Any]:
    """Exports a run folder's best model as int8 and float16 TFLite, `.keras` and metadata.

    The files are named after the model (see `pneumocnn.core.metadata.model_files`):
    `pneumocnn_int8.tflite` and friends for a binary run, `pneumocnn_subtype_int8.tflite` and
    friends for a subtype run, so both can sit in one folder.

    Args:
        run_dir: a finished training run.
        output_dir: where to write; pass "saved_models" to replace the shipped models. Defaults
            to `None`: the run's own `export/` folder.
        calibration_images: training images for int8 calibration. Defaults to
            `CALIBRATION_IMAGES` (300).
        target_sensitivity: choose the threshold for this sensitivity on validation instead of
            the stored one (or Youden's J when none is stored). Defaults to `None`.
        require_parity: refuse to write when the int8 model fails the parity check. Only a
            smoke run turns it off: the notebooks' quick mode and the test fixtures, whose toy
            models (32-64 px, a few epochs, a few dozen validation images) can hold a film
            within one quantization step of the threshold, so whether they pass is a near-tie
            that flips between machines. The parity figures are then still measured and
            recorded, with `parity["passed"]` telling whether they met the bars. Defaults to
            True.
        name: the model's name, the stem of its files. Defaults to `None`: "pneumocnn" for a
            binary run, "pneumocnn_subtype" for a subtype run.
        equalize: convert the activation-equalized form of the model (`pneumocnn.edge.equalize`;
            the same float function, less int8 rounding). Defaults to True.

    Returns:
        The metadata written to `<name>.json`.

    Raises:
        ParityError: if the int8 model disagrees with the float model (nothing is written).
        BusyError: if another export or calibration of the family runs in `output_dir`.
        CannotWriteError: if the disk is full or read-only, or the folder not writable
            (nothing is changed).
    """

    source = run_source(run_dir)  # the config only, to name the files before long work
    name = name or DEFAULT_NAMES[source.config.task]
    files = {**model_files(name), "card": card_file(name)}
    output_dir = export_dir(source.run_dir, output_dir)
    try:
        with _output_folder(output_dir):
            remove_stale_scratch(output_dir)
            with claim_family(output_dir, name) as scratch:
                prepared = prepare(run_dir, target_sensitivity, calibration_images)
                metadata = _make_family(
                    prepared, scratch, files, name, calibration_images, equalize, require_parity
                )
                write_family(
                    scratch, output_dir, files, metadata, records=_records(prepared, scratch)
                )
    except Exception as error:  # noqa: BLE001 - a full or read-only disk, under any library's type
        fault = write_fault(error, output_dir, "--output-dir")
        if fault is None:
            raise
        raise fault from error
    return metadata


def _make_family(
    prepared: Prepared,
    scratch: Path,
    files: dict[str, str],
    name: str,
    calibration_images: int,
    equalize: bool,
    require_parity: bool,
) -> dict[str, Any]:
    """Steps 2-6 in the scratch folder: convert, open, check, describe. Returns the metadata."""
    equalization = convert_family(prepared, scratch, files, name, equalize)
    metadata = file_metadata(prepared, scratch, files, name)
    metadata["int8_conversion"] = {
        "calibration_images": calibration_images,
        "equalization": equalization,
    }
    # Provisional metadata under another name, so LiteModel can verify and run the new files.
    write_json_atomically(scratch / PROVISIONAL, metadata)
    models = open_family(scratch, files)
    parity, int8_probabilities = check_int8(prepared, models["int8"], require_parity)
    rgb_parity = check_rgb(prepared, models, require_parity)
    guard_head = check_guard_head(prepared, models["rgb_int8"])
    (scratch / PROVISIONAL).unlink()
    return describe(
        prepared, models, files, metadata, parity, int8_probabilities, rgb_parity, guard_head
    )


def _records(prepared: Prepared, scratch: Path) -> tuple[tuple[str, Path], ...]:
    """The run's new `threshold.json`, staged in the scratch folder, when the export chose the
    threshold: it is moved into the run folder after the family, in the same commit."""
    if prepared.threshold_record is None:
        return ()
    write_json_atomically(scratch / THRESHOLD_FILE, prepared.threshold_record)
    return ((THRESHOLD_FILE, prepared.source.run_dir / THRESHOLD_FILE),)


@contextlib.contextmanager
def _output_folder(folder: Path) -> Iterator[Path]:
    """Makes the export's folder for the block; removes it again when the block fails and the
    folder, made for it, is still empty (a failed export leaves no empty `export/` behind)."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def recalibration_advice(metadata: dict[str, Any], output_dir: str | Path) -> str | None:
    """What to run so an exported family's site-calibrated threshold is the int8 file's own.

    A run folder is calibrated on its float model (`best.keras`); the int8 file makes a few calls
    differently, so at that threshold it can miss the target sensitivity by a film or two (the
    shipped model did: 0.959 against 0.96). Calibrating the exported int8 file on the same folder
    fixes it.

    Args:
        metadata: an exported family's metadata.
        output_dir: the folder the family was written to.

    Returns:
        The advice, or `None` when the threshold is not a site calibration or was already chosen
        on the int8 file's own outputs.
    """
    record = metadata.get("calibration")
    int8 = metadata["files"]["int8"]
    if not record or record.get("model") == int8:
        return None
    return (
        f"The threshold {metadata['threshold']:.4f} is a site calibration of the float model "
        f"({record.get('model')}) on '{record['folder']}'; the int8 file makes a few calls "
        "differently. To make it the int8 file's own, run: python -m pneumocnn.evaluate "
        f"{Path(output_dir) / int8} --calibrate-on {record['folder']} --target-sensitivity "
        f"{record['target_sensitivity']} (with the path of that folder)"
    )
