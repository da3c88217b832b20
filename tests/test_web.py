"""The static web page: built with `python -m pneumocnn.web build`, served from a local static
server, driven in a real headless Chromium, and compared with pneumocnn's own LiteRT predictions.

The page preprocesses with a JavaScript port of Pillow's integer luma and bilinear resize, so for
the same decoded pixels it feeds the model the same bytes as `pneumocnn.data.images.load_image`, and
LiteRT.js then returns the same uint8 output as LiteRT in Python. The stated tolerance on the
probabilities is one quantization step of the output (1/256), allowing a decoder to differ on a
pixel; the labels must agree on every film.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REAL_DATA,
    requires_chromium,
    requires_real_data,
    serve_folder,
)
from pneumocnn import web
from pneumocnn.core.locations import default_model
from pneumocnn.core.metadata import FP16_FILE, INT8_FILE, METADATA_FILE, SUBTYPE_FILES
from pneumocnn.data.images import load_image, to_grayscale, to_model_input
from pneumocnn.data.pixels import MAX_DECODED_BYTES
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.testing import png_claiming, synthetic_xray

PROBABILITY_TOLERANCE = 1 / 256 + 1e-6
FILMS_PER_CLASS = 20  # development-half films per class through the browser


def _needs_litert_js():
    node_modules = web.WEB_DIR / "node_modules"
    if not node_modules.is_dir() and shutil.which("npm") is None:
        pytest.skip("LiteRT.js is not installed and npm is missing (apt-get install npm)")


def _film(path: Path, label: int, size=(70, 50), mode="L", seed=0) -> Path:
    pixels = synthetic_xray(np.random.default_rng(seed), label, size)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def _run_page(site: Path, files: list[Path]) -> tuple[list[dict], str]:
    """Opens the built site, feeds `files` through its file input, and returns each result
    card's data (file, label, probability, timings, SHA-256 of the model input) and the page
    text."""
    playwright = pytest.importorskip("playwright.sync_api")
    with serve_folder(site) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=60_000)
        assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("body")
        page.set_input_files("#files", [str(path) for path in files])
        page.wait_for_function(
            f"document.body.dataset.done === '{len(files)}'", timeout=30_000 + 2_000 * len(files)
        )
        cards = page.evaluate(
            "Array.from(document.querySelectorAll('.result'), card => ({...card.dataset}))"
        )
        text = page.inner_text("body")
        browser.close()
    assert not errors, errors
    return cards, text


def _compare(cards: list[dict], model: LiteModel, files: list[Path], inputs: dict) -> dict:
    """Labels and probabilities of the page against `LiteModel.predict_file`, per file."""
    by_name = {card["file"]: card for card in cards}
    report = {
        "labels_agree": 0,
        "identical_inputs": 0,
        "max_difference": 0.0,
        "ms": [],
        "differ": [],
    }
    for path in files:
        card = by_name[path.name]
        assert "error" not in card, card
        expected = model.predict_file(path)
        assert card["label"] == expected.label, (path.name, card, expected)
        difference = abs(float(card["probability"]) - expected.probability)
        report["labels_agree"] += 1
        report["max_difference"] = max(report["max_difference"], difference)
        digest = hashlib.sha256(inputs[path].tobytes()).hexdigest()
        report["identical_inputs"] += card["inputSha256"] == digest
        if card["inputSha256"] != digest:
            report["differ"].append(path.name)
        report["ms"].append(float(card["totalMs"]))
        report.setdefault("model_ms", []).append(float(card["modelMs"]))
    return report


@pytest.fixture(scope="module")
def site(exported_model, tmp_path_factory) -> Path:
    _needs_litert_js()
    return web.build(tmp_path_factory.mktemp("site"), exported_model / INT8_FILE)


def test_build_writes_page_model_metadata_and_pinned_litert_js(site, exported_model):
    for name in (*web.PAGE_FILES, "site.json", f"model/{INT8_FILE}", f"model/{METADATA_FILE}"):
        assert (site / name).is_file(), name
    pins = json.loads((web.WEB_DIR / "vendor.json").read_text())
    for target, pin in pins["files"].items():
        assert hashlib.sha256((site / target).read_bytes()).hexdigest() == pin["sha256"]
    assert (site / "model" / INT8_FILE).read_bytes() == (exported_model / INT8_FILE).read_bytes()
    lock = json.loads((web.WEB_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@litertjs/core"]["version"] == pins["version"]


@requires_chromium
def test_page_labels_films_as_pneumocnn_does(site, exported_model, tmp_path):
    films = [
        _film(tmp_path / "gray.png", 1, seed=1),
        _film(tmp_path / "rgb.png", 0, size=(45, 80), mode="RGB", seed=2),
        _film(tmp_path / "film.jpeg", 1, size=(90, 64), mode="RGB", seed=3),
        _film(tmp_path / "normal.jpeg", 0, size=(33, 33), seed=4),
        _film(tmp_path / "alpha.png", 1, mode="RGBA", seed=5),
    ]
    model = LiteModel(exported_model / INT8_FILE)
    cards, text = _run_page(site, films)
    inputs = {path: load_image(path, model.image_size) for path in films}
    report = _compare(cards, model, films, inputs)
    assert report["max_difference"] <= PROBABILITY_TOLERANCE, report
    # The page runs the two resize passes in Pillow 13's order (vertical first when the height
    # shrinks by more than twice the width's pixels, as for rgb.png): byte-identical inputs.
    assert report["identical_inputs"] == len(films), report
    assert all(ms > 0 for ms in report["ms"])
    metadata = model.metadata
    assert metadata["warning"] in text
    assert metadata["package_version"] in text and f"{metadata['threshold']:.4f}" in text


@requires_chromium
def test_page_runs_the_float16_model_too(exported_model, tmp_path):
    _needs_litert_js()
    site = web.build(tmp_path / "site", exported_model / FP16_FILE)
    films = [_film(tmp_path / f"film{seed}.png", seed % 2, seed=seed) for seed in range(3)]
    model = LiteModel(exported_model / FP16_FILE)
    cards, _ = _run_page(site, films)
    report = _compare(cards, model, films, {path: load_image(path, 32) for path in films})
    assert report["max_difference"] <= 1e-5, report


@requires_chromium
def test_page_honours_exif_orientation(site, exported_model, tmp_path):
    """A phone photo stores its rotation in EXIF; the page shows and classifies the film upright,
    as the Python loader does after `ImageOps.exif_transpose`."""
    path = tmp_path / "rotated.jpeg"
    # Square, so only the orientation differs between the two readings, not the resize.
    pixels = synthetic_xray(np.random.default_rng(6), 1, (64, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    model = LiteModel(exported_model / INT8_FILE)
    cards, _ = _run_page(site, [path])
    with Image.open(path) as image:
        upright = to_model_input(to_grayscale(ImageOps.exif_transpose(image)), model.image_size)
        sideways = to_model_input(to_grayscale(image), model.image_size)
    assert cards[0]["inputSha256"] == hashlib.sha256(upright.tobytes()).hexdigest()
    assert cards[0]["inputSha256"] != hashlib.sha256(sideways.tobytes()).hexdigest()


@requires_chromium
def test_unreadable_file_gets_a_message_and_the_others_still_run(site, tmp_path):
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not an image")
    good = _film(tmp_path / "good.png", 1)
    cards, text = _run_page(site, [broken, good])
    by_name = {card["file"]: card for card in cards}
    assert "error" in by_name["broken.jpeg"] and "broken.jpeg" in text
    assert by_name["good.png"]["label"] in ("NORMAL", "PNEUMONIA")


@requires_chromium
def test_page_runs_the_subtype_model(subtype_model, tmp_path):
    _needs_litert_js()
    site = web.build(tmp_path / "site", subtype_model / SUBTYPE_FILES["int8"])
    films = [_film(tmp_path / f"film{seed}.png", seed % 2, seed=seed) for seed in range(4)]
    model = LiteModel(subtype_model / SUBTYPE_FILES["int8"])
    cards, text = _run_page(site, films)
    report = _compare(cards, model, films, {path: load_image(path, 32) for path in films})
    assert report["max_difference"] <= PROBABILITY_TOLERANCE, report
    assert "NORMAL or BACTERIAL or VIRAL" in text


def test_build_refuses_a_model_with_a_dynamic_batch(exported_model, tmp_path):
    for name in (INT8_FILE, METADATA_FILE):
        shutil.copy(exported_model / name, tmp_path / name)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata["tensors"][INT8_FILE]["input"]["shape"][0] = -1
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(web.BuildError, match="fixed batch of 1.*Re-export"):
        web.build(tmp_path / "site", tmp_path / INT8_FILE)


def test_build_refuses_litert_js_files_that_differ_from_their_pins(tmp_path):
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "index.js").write_text("tampered")
    pins = {
        "package": "@litertjs/core",
        "version": "2.5.3",
        "files": {"vendor/index.js": {"source": "node_modules/index.js", "sha256": "0" * 64}},
    }
    (tmp_path / "vendor.json").write_text(json.dumps(pins))
    with pytest.raises(web.BuildError, match="does not match the SHA-256.*npm ci"):
        web.vendor_files(tmp_path, install=False)


def test_web_cli_says_what_to_fix_with_exit_code_2(tmp_path, capsys):
    assert (
        web.main(["build", str(tmp_path / "site"), "--model", str(tmp_path / "none.tflite")]) == 2
    )
    assert "none.tflite" in capsys.readouterr().err


def _shipped_web_model() -> Path:
    model = default_model()
    try:
        web.check_model(model)
    except web.BuildError as error:
        pytest.skip(f"the shipped model predates the edge export; re-export it ({error})")
    return model


@requires_chromium
@requires_real_data
def test_page_agrees_with_pneumocnn_on_development_films(tmp_path):
    """The shipped int8 model in the browser against `pneumocnn.predict` (LiteRT in Python) on
    development-half films: every label the same, probabilities within one output step."""
    _needs_litert_js()
    model_path = _shipped_web_model()
    site = web.build(tmp_path / "site", model_path)
    films = []
    for name in ("NORMAL", "PNEUMONIA"):
        films += sorted((REAL_DATA / "test" / name).glob("*.jpeg"))[:FILMS_PER_CLASS]
    model = LiteModel(model_path)
    cards, _ = _run_page(site, films)
    inputs = {path: load_image(path, model.image_size) for path in films}
    report = _compare(cards, model, films, inputs)
    print(
        f"browser vs LiteRT on {len(films)} development films: labels {report['labels_agree']}/"
        f"{len(films)}, identical model inputs {report['identical_inputs']}/{len(films)}, largest "
        f"probability difference {report['max_difference']:.4f}, median time per film "
        f"{np.median(report['ms']):.1f} ms (the model alone {np.median(report['model_ms']):.1f} ms)"
    )
    assert report["max_difference"] <= PROBABILITY_TOLERANCE, report


# The input guard in the page (web/input_guard.js): the same verdict, reasons and OOD score as
# `pneumocnn.runtime.guard` on the same decoded pixels.
SCORE_TOLERANCE = 1e-6


def _guard_experiment():
    """The guard experiment's module (its non-chest set), wherever the study keeps it."""
    import importlib.util

    for path in (
        web.ROOT / "experiments" / "guard" / "guard_rates.py",
        web.ROOT / "experiments" / "guard_rates.py",
    ):
        if path.is_file():
            spec = importlib.util.spec_from_file_location("guard_rates", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    pytest.skip("the guard experiment (experiments/guard/guard_rates.py) is not in this checkout")


def _compare_verdicts(cards: list[dict], model: LiteModel, files: list[Path]) -> dict:
    """The page's guard verdicts against `LiteModel.predict_file`'s, per file: the same status,
    the same reasons word for word, OOD scores within `SCORE_TOLERANCE`."""
    by_name = {card["file"]: card for card in cards}
    report = {"same": 0, "same_verdict": 0, "caught_python": 0, "caught_page": 0, "differ": []}
    for path in files:
        card = by_name[path.name]
        assert "error" not in card, card
        expected = model.predict_file(path)
        score = float(card["oodScore"]) if card["oodScore"] else None
        same_score = (score is None) == (expected.verdict.score is None) and (
            score is None or abs(score - expected.verdict.score) <= SCORE_TOLERANCE
        )
        same = (
            card["verdict"] == expected.verdict.status
            and card["reason"] == expected.verdict.reason
            and same_score
            and card["label"] == (expected.label or "")
        )
        report["same"] += same
        report["same_verdict"] += card["verdict"] == expected.verdict.status
        report["caught_python"] += expected.verdict.status != "ok"
        report["caught_page"] += card["verdict"] != "ok"
        if not same:
            report["differ"].append((path.name, card, str(expected.verdict), expected.label))
    return report


def _large_gray_jpeg(path: Path, source: np.ndarray) -> Path:
    """A film as a detector writes one: grayscale ("L"), large, not square."""
    Image.fromarray(source).resize((1500, 1800), Image.Resampling.BICUBIC).convert("L").save(
        path, quality=92
    )
    return path


@requires_chromium
def test_page_guard_gives_pythons_verdicts_and_refuses_what_python_refuses(
    site, exported_model, tmp_path
):
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((320, 240))
    inputs = {
        "film.png": Image.fromarray(synthetic_xray(rng, 1, (120, 100))),
        "black.png": Image.new("L", (300, 300), 0),
        "white.jpeg": Image.new("RGB", (300, 300), (255, 255, 255)),
        "photo.jpeg": photo,
        "icon.png": Image.fromarray(synthetic_xray(rng, 0, (20, 20))),
        "strip.png": Image.fromarray(synthetic_xray(rng, 1, (600, 100))),
        "small.png": Image.fromarray(synthetic_xray(rng, 0, (40, 40))),
        "palette.png": Image.fromarray(synthetic_xray(rng, 0, (90, 80))).convert("P"),
        "sixteen.png": Image.fromarray(synthetic_xray(rng, 1, (80, 90)).astype(np.uint16) * 200),
    }
    files = []
    for name, image in inputs.items():
        image.save(tmp_path / name)
        files.append(tmp_path / name)
    files.append(_large_gray_jpeg(tmp_path / "large-gray.jpeg", synthetic_xray(rng, 1, (64, 64))))
    model = LiteModel(exported_model / INT8_FILE)
    cards, text = _run_page(site, files)
    report = _compare_verdicts(cards, model, files)
    assert report["same"] == len(files), report["differ"]
    by_name = {card["file"]: card for card in cards}
    # The 16-bit PNG is decoded by the page itself and stretched as Python stretches it.
    sixteen = load_image(tmp_path / "sixteen.png", model.image_size)
    assert by_name["sixteen.png"]["inputSha256"] == hashlib.sha256(sixteen.tobytes()).hexdigest()
    for name in ("black.png", "white.jpeg", "photo.jpeg", "icon.png", "strip.png"):
        assert by_name[name]["verdict"] == "refused" and by_name[name]["label"] == "", name
    assert by_name["photo.jpeg"]["reason"].startswith("strongly coloured")
    assert "Not classified" in text and "a photograph, not an X-ray" in text


@requires_chromium
def test_page_refuses_an_image_past_the_decode_budget_before_decoding_it(site, tmp_path):
    """Issue "One answer in every client": a 12000 x 12000 PNG was decoded with no budget
    (about 2.8 GB across Chromium's processes). Its header is read first and it is refused with
    the Python loader's limit (`pneumocnn.data.pixels.MAX_DECODED_BYTES`)."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(12000, 12000))
    good = _film(tmp_path / "good.png", 1)
    cards, text = _run_page(site, [bomb, good])
    by_name = {card["file"]: card for card in cards}
    assert "12000x12000 px" in by_name["bomb.png"]["error"]
    assert f"above the limit of {MAX_DECODED_BYTES:,}" in text and "not decoded" in text
    assert by_name["good.png"]["label"] in ("NORMAL", "PNEUMONIA")


@requires_chromium
@requires_real_data
def test_page_guard_agrees_with_python_on_films_and_non_chest_images(tmp_path):
    """The shipped model's guard in the browser against `pneumocnn.predict` on every
    development-half film and on the guard experiment's non-chest set (any size and aspect
    ratio): the same verdict, reasons and OOD score on at least 99% of each (all of them,
    measured)."""
    _needs_litert_js()
    model_path = _shipped_web_model()
    site = web.build(tmp_path / "site", model_path)
    model = LiteModel(model_path)
    films = []
    for name in ("NORMAL", "PNEUMONIA"):
        films += sorted((REAL_DATA / "test" / name).glob("*.jpeg"))
    folder = tmp_path / "others"
    folder.mkdir()
    others = _guard_experiment().write_images(_guard_experiment().non_chest_images(), folder)
    for kind, files in (("development films", films), ("non-chest images", others)):
        cards, _ = _run_page(site, files)
        report = _compare_verdicts(cards, model, files)
        print(
            f"page vs pneumocnn.predict, guard on {len(files)} {kind}: same verdict on "
            f"{report['same_verdict']}/{len(files)}, same reasons and score on "
            f"{report['same']}/{len(files)}; flagged or refused: Python "
            f"{report['caught_python']}, page {report['caught_page']}"
        )
        assert report["same"] >= 0.99 * len(files), report["differ"][:10]


@requires_chromium
@requires_real_data
def test_page_matches_pneumocnn_on_large_grayscale_films_of_any_aspect_ratio(tmp_path):
    """Real chest films are grayscale, 400-3000 px and not square; the shared ones are 224 px
    RGB squares. Shared films made into such files: the page feeds the model the same bytes as
    `pneumocnn.predict` (Pillow's resize, its pass order included) and gives the same label,
    probability and guard verdict."""
    _needs_litert_js()
    model_path = _shipped_web_model()
    site = web.build(tmp_path / "site", model_path)
    model = LiteModel(model_path)
    sizes = [(1500, 1800), (2400, 1900), (900, 1300), (640, 480), (400, 700), (3000, 2500)]
    films = []
    for index, (label, size) in enumerate(
        (label, size) for size in sizes for label in ("NORMAL", "PNEUMONIA")
    ):
        source = sorted((REAL_DATA / "test" / label).glob("*.jpeg"))[index]
        with Image.open(source) as image:
            film = image.convert("L").resize(size, Image.Resampling.BICUBIC)
        films.append(tmp_path / f"{label}-{size[0]}x{size[1]}.jpeg")
        film.save(films[-1], quality=92)
    # And a detector's 16-bit PNG, its 12 bits of range not starting at 0.
    sixteen = (
        np.asarray(film, np.uint16) * 16
        + 300
        + np.random.default_rng(0).integers(0, 16, film.size[::-1])
    )
    films.append(tmp_path / "sixteen-bit.png")
    Image.fromarray(sixteen.astype(np.uint16)).save(films[-1])
    cards, _ = _run_page(site, films)
    inputs = {path: load_image(path, model.image_size) for path in films}
    report = _compare(cards, model, films, inputs)
    assert report["identical_inputs"] == len(films), report["differ"]
    assert report["max_difference"] <= PROBABILITY_TOLERANCE, report
    assert _compare_verdicts(cards, model, films)["same"] == len(films)
