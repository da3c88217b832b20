"""Giving an exported family a new threshold (a site calibration), every file consistent with it.

The steps: `read_family` (before long work), `retarget_rgb` (the RGB variant bakes the threshold
into its scores), `reembed` (the grayscale models' embedded descriptions name it),
`check_recalibrated` (checksums, and the RGB variant against the int8 model on the site's films),
then `pneumocnn.edge.family.write_family` with the changed files only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pneumocnn.core.errors import UsageError
from pneumocnn.core.metadata import sha256_of, write_json_atomically
from pneumocnn.edge.describe import tensor_description
from pneumocnn.edge.embedded import embed_pneumocnn_metadata, read_embedded_metadata
from pneumocnn.edge.family import PROVISIONAL, write_family
from pneumocnn.edge.parity import rgb_parity
from pneumocnn.edge.rgb import retarget_rgb_variant
from pneumocnn.runtime.lite import LiteModel

if TYPE_CHECKING:
    import numpy as np

    from pneumocnn.edge.family import Family


def retarget_rgb(family: Family, metadata: dict[str, Any]) -> list[str]:
    """Recalibration step 2: writes the family's RGB variant with the new threshold into the
    scratch folder (see `pneumocnn.edge.rgb.retarget_rgb_variant`: only the head's threshold
    constant changes, so the int8 network stays the grayscale model's), with TFLite metadata
    embedded again.

    Returns:
        The roles written: `["rgb_int8"]`, or `[]` for a family exported without one.

    Raises:
        UsageError: if the RGB variant was not made by this version's export.
    """

    if "rgb_int8" not in family.files:
        return []
    path = family.folder / family.files["rgb_int8"]
    try:
        rgb = retarget_rgb_variant(
            path.read_bytes(), family.metadata["threshold"], metadata["threshold"]
        )
    except ValueError as error:
        raise UsageError(f"Cannot recalibrate '{path}': {error}") from error
    (family.scratch / family.files["rgb_int8"]).write_bytes(
        embed_pneumocnn_metadata(rgb, metadata, channels=3)
    )
    return ["rgb_int8"]


def reembed(family: Family, metadata: dict[str, Any]) -> list[str]:
    """Recalibration step 3: embeds the TFLite metadata again, with the new threshold in its
    description, into each grayscale `.tflite` that carries embedded metadata (see
    `pneumocnn.edge.embedded.embed_pneumocnn_metadata`); a file whose bytes would not change, or
    that was exported without embedded metadata, is left alone.

    Returns:
        The roles written into the scratch folder.
    """

    written = []
    for role in ("int8", "fp16"):
        if role not in family.files:
            continue
        content = (family.folder / family.files[role]).read_bytes()
        if read_embedded_metadata(content) is None:
            continue
        embedded = embed_pneumocnn_metadata(content, metadata, channels=1)
        if embedded != content:
            (family.scratch / family.files[role]).write_bytes(embedded)
            written.append(role)
    return written


def check_recalibrated(
    family: Family,
    metadata: dict[str, Any],
    roles: list[str],
    images: np.ndarray,
    films: str,
) -> dict[str, Any]:
    """Recalibration step 4: records the new files' SHA-256, sizes and tensors, and checks the
    retargeted RGB variant against the int8 model on the site's films (see `rgb_parity`).

    Returns:
        The new metadata.

    Raises:
        ParityError: if the RGB variant fails the check (nothing is written).
    """

    scratch, files = family.scratch, family.files
    metadata = json.loads(json.dumps(metadata))  # a deep copy: the family's stays as read
    for role in roles:
        metadata["sha256"][files[role]] = sha256_of(scratch / files[role])
        metadata["file_bytes"][files[role]] = (scratch / files[role]).stat().st_size
    if "rgb_int8" not in roles:
        return metadata
    # Provisional metadata under another name: the metadata's own name is the commit mark.
    write_json_atomically(scratch / PROVISIONAL, metadata)
    rgb = LiteModel(scratch / files["rgb_int8"], scratch / PROVISIONAL)
    parity = rgb_parity(
        rgb,
        LiteModel(family.folder / files["int8"]),
        images,
        metadata["threshold"],
        list(metadata["class_names"]),
        require_parity=True,
        films=films,
    )
    (scratch / PROVISIONAL).unlink()
    metadata.setdefault("tensors", {})[files["rgb_int8"]] = {
        "input": tensor_description(rgb.input),
        "output": tensor_description(rgb.output),
    }
    edge_record = metadata.setdefault("edge", {}).setdefault("rgb_variant", {})
    edge_record["parity_with_int8"] = {**parity, "films": films}
    return metadata


def recalibrate(
    family: Family,
    updates: dict[str, Any],
    images: np.ndarray,
    films: str = "calibration",
) -> dict[str, Any]:
    """Gives an exported family a new threshold, keeping every file consistent with it.

    The steps: `read_family` (the caller's, before long work), `retarget_rgb` (the RGB variant
    bakes the threshold into its scores), `reembed` (the grayscale models' embedded
    descriptions name it), `check_recalibrated` (checksums, and the RGB variant against the
    int8 model on the site's films), then `write_family` with the changed files only. Every
    new file is written into the family's scratch folder `.export-<name>`, which the caller has
    claimed (see `pneumocnn.edge.family.claim_family`); the commit point comes after every
    check, then the files are renamed into place, metadata last. A kill before the commit
    leaves the previous family untouched; one after it leaves the rest of the renames to
    whoever reads the family next (see `pneumocnn.core.metadata.settle_family`). The int8 and
    float16 models compute what they did: only their embedded description changes.

    Args:
        family: the family (see `read_family`), its scratch folder claimed.
        updates: the metadata fields to set: `threshold`, and `threshold_rule` and
            `calibration` (see `pneumocnn.adaptation.calibration.calibrate`).
        images: the site's films, raw 0-255 `(n, H, W, 1)`: they check the RGB variant.
        films: the films' folder name, for the record and the messages. Defaults to
            "calibration".

    Returns:
        The new metadata.

    Raises:
        ParityError: if the retargeted RGB variant fails its check (nothing is written).
        UsageError: if the RGB variant was not made by this version's export.
    """

    metadata = {**family.metadata, **updates}
    roles = retarget_rgb(family, metadata)
    roles += reembed(family, metadata)
    metadata = check_recalibrated(family, metadata, roles, images, films)
    write_family(family.scratch, family.folder, family.files, metadata, tuple(roles))
    return metadata
