"""Shared fixtures: tiny seeded synthetic data sets, and a model trained and exported on one."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY_RUN, flags
from pneumocnn.testing import write_dataset


@pytest.fixture
def make_dataset(tmp_path):
    """Returns `factory(patients=6, images_per_patient=2, seed=0, subtypes=False)` writing
    `write_dataset` under tmp_path/chest_xray and returning that folder."""

    def factory(
        patients: int = 6, images_per_patient: int = 2, seed: int = 0, subtypes: bool = False
    ) -> Path:
        return write_dataset(tmp_path / "chest_xray", patients, images_per_patient, seed, subtypes)

    return factory


# Every test on these toy models asserts what holds by construction (shapes, files, checksums,
# the decision rule, stated tolerances on probabilities), never a toy model's exact decision: a
# 32-px model trained for a few epochs can hold a film within one int8 quantization step of the
# threshold, and which side it falls on changes with the machine, the thread count, oneDNN and
# the package versions (issue 16: 61 of 62 images agreed on one machine, 62 on another). So the
# fixtures export with `require_parity=False`: the parity is measured and recorded, not required.
# The parity check itself is tested on fixed numbers (test_export.py), and the shipped model's
# parity strictly (test_saved_models.py).


def _train_tiny(root: Path, run_dir: Path, **fields) -> Path:
    """Trains `TINY_RUN` (with `fields` on top) on `root` into `run_dir` with the CLI."""
    from pneumocnn import train

    assert train.main(flags(data_dir=root, output_dir=run_dir, **{**TINY_RUN, **fields})) == 0
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder trained briefly on an easy synthetic data set (32 px, 40 patients/class).

    Batches of 4 give 30 steps an epoch, enough for BatchNormalization's moving statistics to
    settle, so the saved model's outputs are spread out (the tests compare int8 with float
    probabilities, which says little when every output sits near one value).
    """
    base = tmp_path_factory.mktemp("trained")
    root = write_dataset(base / "chest_xray", patients=40, images_per_patient=2, seed=7)
    return _train_tiny(root, base / "run", epochs=6, batch_size=4)


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory) -> Path:
    """`saved_models`-style folder exported from `trained_run`."""
    from pneumocnn.edge.export import export

    output = tmp_path_factory.mktemp("exported")
    export(trained_run, output, calibration_images=40, require_parity=False)
    return output


@pytest.fixture(scope="session")
def subtype_run(tmp_path_factory) -> Path:
    """A `--task subtype` run folder trained briefly on synthetic NORMAL / BACTERIAL / VIRAL
    films (see `pneumocnn.testing.synthetic_xray`), 60 patients per folder."""
    base = tmp_path_factory.mktemp("subtype")
    root = write_dataset(
        base / "chest_xray", patients=60, images_per_patient=2, seed=11, subtypes=True
    )
    return _train_tiny(root, base / "run", task="subtype", epochs=8, batch_size=8)


@pytest.fixture(scope="session")
def subtype_model(subtype_run, tmp_path_factory) -> Path:
    """A `saved_models`-style folder with the subtype model exported from `subtype_run` under
    its default name (`pneumocnn_subtype*`)."""
    from pneumocnn.edge.export import export

    output = tmp_path_factory.mktemp("exported_subtype")
    export(subtype_run, output, calibration_images=60, require_parity=False)
    return output
