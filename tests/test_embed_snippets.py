"""The README's "Embed it" Python snippet, executed as printed on every kind of film a user has:
a grayscale JPEG at a detector's size (issue "One answer in every client": a one-channel
`mp.Image` crashed the stock classifier), an RGB JPEG, a 16-bit PNG, a palette PNG and a
transparent PNG. Each gets a label and a guard verdict named from the model file; where the
film's P(pneumonia) is not within a few hundredths of the threshold (MediaPipe resizes the film
itself, without Pillow's antialiasing), the label is `pneumocnn.predict`'s."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REAL_DATA, requires_real_data
from pneumocnn.core.locations import default_model_dir
from pneumocnn.core.metadata import model_files
from pneumocnn.edge.embedded import GUARD_LABELS
from pneumocnn.runtime.lite import LiteModel

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
MODEL_IN_SNIPPET = "saved_models/pneumocnn_rgb_int8.tflite"
# Films this close to the threshold may be called either way by a client that decodes and
# resizes differently (one grey level moves the int8 call of 1.5% of films).
MARGIN = 0.05


def _mediapipe_snippet() -> str:
    section = README.split("\n## Embed it\n")[1].split("\n## ")[0]
    (snippet,) = [
        block for block in re.findall(r"```python\n(.*?)```", section, re.S) if "mediapipe" in block
    ]
    assert f'"{MODEL_IN_SNIPPET}"' in snippet and '"chest.jpeg"' in snippet
    return snippet


def _run_snippet(snippet: str, model: Path, film: Path) -> list[str]:
    code = snippet.replace(f'"{MODEL_IN_SNIPPET}"', repr(str(model)))
    code = code.replace('"chest.jpeg"', repr(str(film)))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md (Embed it)", "exec"), {"__name__": "snippet"})
    return output.getvalue().split()


def _films(source: Path, folder: Path) -> list[Path]:
    with Image.open(source) as image:
        gray = image.convert("L")
    paths = {
        "gray-large.jpeg": lambda p: gray.resize((1500, 1800), Image.Resampling.BICUBIC).save(
            p, quality=92
        ),
        "rgb.jpeg": lambda p: gray.convert("RGB").save(p, quality=95),
        "sixteen.png": lambda p: Image.fromarray(
            (np.asarray(gray, np.uint16) * 257 // 2 + 1000).astype(np.uint16)
        ).save(p),
        "palette.png": lambda p: gray.convert("P").save(p),
        "transparent.png": lambda p: gray.convert("RGBA").save(p),
    }
    written = []
    for name, write in paths.items():
        write(folder / name)
        written.append(folder / name)
    return written


@requires_real_data
@pytest.mark.parametrize("name", ["pneumocnn", "pneumocnn_subtype"])
def test_the_readme_mediapipe_snippet_runs_on_gray_colour_16_bit_and_palette_films(
    name, tmp_path
):
    pytest.importorskip("mediapipe", reason="mediapipe is not installed")
    files = model_files(name)
    folder = default_model_dir()
    model = LiteModel(folder / files["int8"])
    snippet = _mediapipe_snippet()
    sources = [
        sorted((REAL_DATA / "test" / label).glob("*.jpeg"))[3] for label in ("NORMAL", "PNEUMONIA")
    ]
    compared = 0
    for index, source in enumerate(sources):
        (tmp_path / str(index)).mkdir()
        for film in _films(source, tmp_path / str(index)):
            words = _run_snippet(snippet, folder / files["rgb_int8"], film)
            label, guard = words[0], " ".join(words[2:])
            assert label in model.class_names and guard in GUARD_LABELS, (film.name, words)
            expected = model.predict_file(film)
            assert (guard == GUARD_LABELS[1]) == (expected.verdict.status != "ok"), film.name
            if abs(expected.probability - model.threshold) > MARGIN:
                assert label == expected.label, (film.name, words, expected)
                compared += 1
    assert compared >= 5
