"""Test helpers that need pytest or the tests' own place: where the real data is and its markers,
the tiny run's settings, CLI flags, a training subprocess, the browser tests' server.

The synthetic films and the files made from them (`synthetic_xray`, `write_image`,
`write_dataset`, `write_dicom`, `png_claiming`) live in `pneumocnn.testing`, where the
experiments use them too.

A plain module (not conftest.py) so tests can import it by name: the notebooks folder has a
conftest.py of its own, and two modules named `conftest` cannot both be imported.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumocnn import web
from pneumocnn.core import commit
from pneumocnn.testing import synthetic_xray

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "chest_xray"
SHIPPED = Path(__file__).resolve().parents[1] / "saved_models"
SHIPPED_INT8 = SHIPPED / "pneumocnn_int8.tflite"
requires_shipped_model = pytest.mark.skipif(
    not SHIPPED_INT8.is_file(), reason="the shipped int8 model is not in saved_models/"
)

# A tiny model (the fixtures' and the multi-worker test's), trained without augmentation or
# mixup: these runs test the pipeline and the stages after it, not the recipe.
TINY_RUN = dict(
    image_size=32,
    base_filters=8,
    num_blocks=2,
    augment_strength=0,
    intensity_strength=0,
    mixup_alpha=0,
    seed=1,
    val_fraction=0.25,
)

requires_real_data = pytest.mark.skipif(
    not (REAL_DATA / "train").is_dir(),
    reason=f"the real data is not at {REAL_DATA} (see ../shared/chest_xray/README.md)",
)


def flags(**values) -> list[str]:
    """CLI flags from keyword arguments: `flags(image_size=32)` -> `["--image-size", "32"]`."""
    argv = []
    for name, value in values.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def real_films(count: int) -> list[np.ndarray]:
    """`count` films from the development half of the test split (alternately NORMAL and
    PNEUMONIA, the first by name), as 8-bit grayscale stretched to span 0-255 exactly, so the
    same pixels can be stored as PNG and as DICOM of any depth without rounding."""
    normal = sorted((REAL_DATA / "test" / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted((REAL_DATA / "test" / "PNEUMONIA").glob("*.jpeg"))
    paths = [path for pair in zip(normal, pneumonia, strict=False) for path in pair][:count]
    films = []
    for path in paths:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"), dtype=np.float64)
        stretched = (gray - gray.min()) * 255 / (gray.max() - gray.min())
        films.append(np.rint(stretched).astype(np.uint8))
    return films


def train_in_subprocess(argv: list[str], prelude: str = "", returncode: int = 0) -> None:
    """Runs `pneumocnn.train.main(argv)` in a fresh Python (after `prelude`, e.g. a patch), from
    the project root, and checks its exit status."""
    script = f"{prelude}\nimport sys\nfrom pneumocnn import train\nsys.exit(train.main({argv!r}))\n"
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == returncode, completed.stdout[-2000:] + completed.stderr[-3000:]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = web.CHROMIUM_ARGS
requires_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no chromium binary (apt-get install chromium)"
)


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serves `folder` over HTTP on 127.0.0.1 (a free port) for the duration of a block, as any
    static host would; yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def film_file(
    path: Path, label: int = 1, seed: int = 0, size: tuple[int, int] = (200, 160)
) -> Path:
    """Saves a synthetic film (see `synthetic_xray`) as `path`, format from its extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_xray(np.random.default_rng(seed), label, size)).save(path)
    return path


def shipped_copy(folder: Path) -> Path:
    """A copy of the shipped binary family (`saved_models/pneumocnn*` and its card), to edit."""
    folder.mkdir()
    for path in SHIPPED.glob("pneumocnn*"):
        if path.is_file() and not path.name.startswith("pneumocnn_subtype"):
            shutil.copy(path, folder / path.name)
    shutil.copy(SHIPPED / "MODEL_CARD.md", folder / "MODEL_CARD.md")
    return folder


def site_folder(root: Path, per_class: int) -> Path:
    """A labelled site folder: `per_class` synthetic films in each of NORMAL/ and PNEUMONIA/."""
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        for index in range(per_class):
            film_file(root / name / f"person{index}_{name.lower()}.png", label, index)
    return root


def dead_process_id() -> int:
    """The id of a process that has ended: what a killed writer leaves in its scratch folder."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(finished.stdout)


@contextlib.contextmanager
def killed_after_the_first_rename(monkeypatch) -> Iterator[list[Path]]:
    """Inside the block, the commit point's second rename raises `KeyboardInterrupt`, as a kill
    between two renames would; the block must end so. Yields the targets renamed before it."""
    move, moved = commit._move, []

    def first_only(source, target):
        if moved:
            raise KeyboardInterrupt
        moved.append(target)
        move(source, target)

    monkeypatch.setattr(commit, "_move", first_only)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield moved
    finally:
        monkeypatch.setattr(commit, "_move", move)
