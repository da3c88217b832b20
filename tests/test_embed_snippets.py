"""The embedding page's MediaPipe snippet, executed as printed on every kind of film a user has:
a grayscale JPEG at a detector's size (issue "One answer in every client": a one-channel
`mp.Image` crashed the stock classifier), an RGB JPEG, a 16-bit PNG, a palette PNG and a
transparent PNG. Each gets `pneumocnn.predict`'s label, P(pneumonia) and guard verdict from a
stock MediaPipe ImageClassifier, named from the model file: the snippet hands MediaPipe the film
as pneumocnn reads it (gray, resized by Pillow to the model's input), so MediaPipe does not
resize it again."""

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

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "embedding.md").read_text()
MODEL_IN_SNIPPET = "saved_models/pneumocnn_rgb_int8.tflite"
METADATA_IN_SNIPPET = "saved_models/pneumocnn.json"


def _mediapipe_snippet() -> str:
    section = PAGE.split("\n## MediaPipe (Python)\n")[1].split("\n## ")[0]
    (snippet,) = [
        block for block in re.findall(r"```python\n(.*?)```", section, re.S) if "mediapipe" in block
    ]
    assert f'"{MODEL_IN_SNIPPET}"' in snippet and '"chest.jpeg"' in snippet
    assert f'"{METADATA_IN_SNIPPET}"' in snippet
    return snippet


def _run_snippet(snippet: str, model: Path, metadata: Path, film: Path) -> list[str]:
    code = snippet.replace(f'"{MODEL_IN_SNIPPET}"', repr(str(model)))
    code = code.replace(f'"{METADATA_IN_SNIPPET}"', repr(str(metadata)))
    code = code.replace('"chest.jpeg"', repr(str(film)))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "docs/embedding.md (MediaPipe)", "exec"), {"__name__": "snippet"})
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
def test_the_readme_mediapipe_snippet_runs_on_gray_colour_16_bit_and_palette_films(name, tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe is not installed")
    files = model_files(name)
    folder = default_model_dir()
    model = LiteModel(folder / files["int8"])
    snippet = _mediapipe_snippet()
    sources = [
        sorted((REAL_DATA / "test" / label).glob("*.jpeg"))[3] for label in ("NORMAL", "PNEUMONIA")
    ]
    for index, source in enumerate(sources):
        (tmp_path / str(index)).mkdir()
        for film in _films(source, tmp_path / str(index)):
            words = _run_snippet(
                snippet, folder / files["rgb_int8"], folder / files["metadata"], film
            )
            label, probability, guard = words[0], float(words[1]), " ".join(words[2:])
            assert guard in GUARD_LABELS, (film.name, words)
            expected = model.predict_file(film)
            assert (guard == GUARD_LABELS[1]) == (expected.verdict.status != "ok"), film.name
            assert label == expected.label, (film.name, words, expected)
            assert abs(probability - expected.probability) <= 5e-5 + 1e-6, (film.name, words)


def _snippet_functions() -> dict:
    """The snippet's definitions (`rgb_image`, `pneumonia_probability`), without running its
    classifier."""
    snippet = _mediapipe_snippet()
    namespace = {"__name__": "snippet"}
    code = compile(snippet.split("\nwith open(")[0], "docs/embedding.md (MediaPipe)", "exec")
    exec(code, namespace)
    return namespace


@requires_real_data
@pytest.mark.parametrize("name", ["pneumocnn", "pneumocnn_subtype"])
def test_stock_mediapipe_through_the_snippet_makes_the_clis_call_and_guard_verdict(name, tmp_path):
    """Every development film, a 1500x1800 grayscale JPEG copy of each, and the guard
    experiment's non-chest set, read by the snippet's `rgb_image` and classified by a stock
    MediaPipe ImageClassifier: `pneumocnn.predict`'s label and P(pneumonia) (where it gives
    them; the probability from the snippet's `pneumonia_probability`) and guard verdict
    (caught: refused, or an OOD score above 1) on at least 99% of each set (all of them,
    measured)."""
    pytest.importorskip("mediapipe", reason="mediapipe is not installed")
    import mediapipe as mp  # noqa: F401  (the snippet's own import, checked here)
    from mediapipe.tasks.python import BaseOptions, vision
    from test_web import _guard_experiment

    files = model_files(name)
    folder = default_model_dir()
    model = LiteModel(folder / files["int8"])
    snippet = _snippet_functions()
    rgb_image = snippet["rgb_image"]
    films = sorted((REAL_DATA / "test").glob("*/*.jpeg"))
    copies = []
    for index, film in enumerate(films):
        copies.append(tmp_path / f"{index:03d}-gray.jpeg")
        with Image.open(film) as image:
            image.convert("L").resize((1500, 1800), Image.Resampling.BICUBIC).save(copies[-1])
    (tmp_path / "others").mkdir()
    experiment = _guard_experiment()
    others = experiment.write_images(experiment.non_chest_images(), tmp_path / "others")
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(folder / files["rgb_int8"]))
    )
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for kind, paths in (("films", films), ("grayscale copies", copies), ("non-chest", others)):
            same_label = same_guard = same_probability = 0
            for path in paths:
                heads = classifier.classify(rgb_image(path)).classifications
                expected = model.predict_file(path)
                caught = expected.verdict.status == "refused" or (expected.verdict.score or 0) > 1
                same_guard += (heads[1].categories[0].category_name == GUARD_LABELS[1]) == caught
                top = heads[0].categories[0]
                same_label += expected.label in (None, top.category_name)
                probability = snippet["pneumonia_probability"](top, model.threshold)
                same_probability += expected.probability is None or (
                    abs(probability - expected.probability) <= 1e-4
                )
            print(
                f"{name}: stock MediaPipe via the embedding page's snippet vs pneumocnn.predict on "
                f"{len(paths)} {kind}: label {same_label}, P(pneumonia) within 1e-4 "
                f"{same_probability}, guard verdict {same_guard}"
            )
            assert min(same_label, same_guard, same_probability) >= 0.99 * len(paths)
