"""The Streamlit app: rendered with AppTest, and driven in a real headless Chromium."""

import io
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import CHROMIUM, CHROMIUM_ARGS, requires_chromium
from pneumocnn.core.metadata import INT8_FILE
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.testing import synthetic_xray

pytest.importorskip("streamlit", reason="the app extra is not installed")
from streamlit.testing.v1 import AppTest  # noqa: E402

from pneumocnn.testing import serve_app  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "pneumocnn" / "app.py"


def _png(label=1, size=(120, 90), mode="L") -> bytes:
    pixels = synthetic_xray(np.random.default_rng(label), label, size)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def app(exported_model, monkeypatch):
    monkeypatch.setenv("PNEUMOCNN_MODEL_DIR", str(exported_model))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_page_renders_with_model_metadata_and_the_notice(app):
    assert "NORMAL or PNEUMONIA" in app.title[0].value
    # In the page itself: a phone's browser hides the sidebar.
    assert any("not a medical device" in w.value for w in app.main.warning)
    assert any("threshold" in m.value for m in app.sidebar.markdown)


def test_the_model_card_opens_under_the_title(app):
    (card,) = [e for e in app.expander if "Model card" in e.label]
    text = "\n".join(m.value for m in card.markdown)
    assert "Performance on films from other hospitals is unknown" in text
    assert "Guangzhou Women and Children's Medical Center" in text


def test_a_blank_image_and_a_photo_are_refused_with_reasons_and_films_are_checked(app):
    photo = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((320, 240)).save(
        photo, format="JPEG"
    )
    blank = io.BytesIO()
    Image.new("L", (200, 200), 0).save(blank, format="PNG")
    app.file_uploader[0].set_value(
        [
            ("photo.jpeg", photo.getvalue(), "image/jpeg"),
            ("blank.png", blank.getvalue(), "image/png"),
            ("chest.png", _png(1), "image/png"),
        ]
    )
    app.run()
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert any("strongly coloured" in e for e in errors) and any(
        "near-constant" in e for e in errors
    )
    table = app.dataframe[0].value.set_index("file")
    assert list(table.loc[["photo.jpeg", "blank.png"], "verdict"]) == ["refused", "refused"]
    assert table.loc["chest.png", "verdict"] in ("ok", "flagged")
    assert table.loc["chest.png", "ood_score"] >= 0
    labels = [m.value for m in app.markdown if m.value.startswith("### ")]
    assert labels.count("### Not classified") == 2


def test_uploaded_image_yields_a_label_probability_and_table(app, exported_model, tmp_path):
    uploads = {"chest.png": _png(1), "other.png": _png(0, mode="RGB")}
    app.file_uploader[0].set_value(
        [(name, content, "image/png") for name, content in uploads.items()]
    )
    app.run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert list(table["file"]) == list(uploads)
    assert set(table["verdict"]) <= {"ok", "flagged"}
    # The page's call on each upload is the int8 model's on the same file, as predict makes it.
    model = LiteModel(exported_model / INT8_FILE)
    expected = []
    for name, content in uploads.items():
        (tmp_path / name).write_bytes(content)
        expected.append(model.predict_file(tmp_path / name))
    labels = [m.value[4:] for m in app.markdown if m.value.startswith("### ")]
    assert labels == list(table["label"]) == [result.label for result in expected]
    probabilities = [result.probability for result in expected]
    assert list(table["probability"]) == pytest.approx(probabilities, abs=1e-6)


def test_bad_upload_shows_a_message_and_the_other_files_still_work(app):
    app.file_uploader[0].set_value(
        [("broken.jpeg", b"not an image", "image/jpeg"), ("good.png", _png(1), "image/png")]
    )
    app.run()
    assert not app.exception, app.exception
    assert any("broken.jpeg" in e.value for e in app.error)
    table = app.dataframe[0].value
    assert table.loc[table["file"] == "good.png", "label"].item() in ("NORMAL", "PNEUMONIA")


def test_app_offers_both_models_and_runs_the_subtype_one(
    exported_model, subtype_model, tmp_path, monkeypatch
):
    both = tmp_path / "models"
    both.mkdir()
    for folder in (exported_model, subtype_model):
        for path in folder.iterdir():
            if path.is_file():
                shutil.copy(path, both / path.name)
    monkeypatch.setenv("PNEUMOCNN_MODEL_DIR", str(both))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.radio[0].options[0].startswith("pneumocnn:")
    at.sidebar.radio[0].set_value("pneumocnn_subtype").run()
    assert not at.exception, at.exception
    assert "NORMAL, BACTERIAL or VIRAL" in at.title[0].value
    at.file_uploader[0].set_value([("chest.png", _png(1), "image/png")])
    at.run()
    assert not at.exception, at.exception
    labels = [m.value[4:] for m in at.markdown if m.value.startswith("### ")]
    assert labels and labels[0] in ("NORMAL", "BACTERIAL", "VIRAL")
    table = at.dataframe[0].value
    assert {"P(NORMAL)", "P(BACTERIAL)", "P(VIRAL)"} <= set(table.columns)


def test_missing_model_folder_shows_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOCNN_MODEL_DIR", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert any("python -m pneumocnn.export" in e.value for e in at.error)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@requires_chromium
def test_real_browser_uploads_an_image_and_sees_the_result(exported_model, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "chest.png"
    image.write_bytes(_png(1))
    with serve_app(_free_port(), exported_model) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url)
        page.locator("input[type=file]").set_input_files(str(image))
        page.get_by_text("All results").wait_for(timeout=90_000)
        page.wait_for_timeout(1500)  # let the figures paint
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        text = page.inner_text("body")
        browser.close()
    assert "chest.png" in text
    assert "NORMAL" in text or "PNEUMONIA" in text
    assert (tmp_path / "app.png").stat().st_size > 10_000


def test_dicom_named_png_does_not_stop_the_batch(app, tmp_path):
    # The bug: the app's 16-bit check reopened every .png with Pillow outside the error
    # handling, so a DICOM named .png stopped the batch and no results table appeared.
    pytest.importorskip("pydicom", reason="the lite extra (pydicom) is not installed")
    from pneumocnn.testing import write_dicom

    film = synthetic_xray(np.random.default_rng(3), 1, (90, 120)).astype(np.uint16) * 16
    dicom = write_dicom(tmp_path / "x.dcm", film, "MONOCHROME1", 12, window=(2048, 4096))
    deep = io.BytesIO()
    Image.fromarray(film * 16).save(deep, format="PNG")
    app.file_uploader[0].set_value(
        [
            ("film.png", dicom.read_bytes(), "image/png"),
            ("deep.png", deep.getvalue(), "image/png"),
            ("good.png", _png(1), "image/png"),
        ]
    )
    app.run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert list(table["file"]) == ["film.png", "deep.png", "good.png"]
    assert table["label"].isin(["NORMAL", "PNEUMONIA"]).all()
    notes = " ".join(caption.value for caption in app.caption)
    assert "MONOCHROME1" in notes and "stretched" in notes


def _inside(box, width):
    return (
        box is not None and box["width"] > 0 and box["x"] >= 0 and box["x"] + box["width"] <= width
    )


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no chromium binary (apt-get install chromium)"
)
def test_on_a_phone_the_disclaimer_and_the_label_are_visible(exported_model, tmp_path):
    # Regression (issue #17): at phone width the disclaimer, in the collapsed sidebar, was cut off.
    playwright = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "chest.png"
    image.write_bytes(_png(1))
    width = 390
    with serve_app(_free_port(), exported_model) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 844}, is_mobile=True)
        page.goto(url)
        notice = page.get_by_text("not a medical device").first
        notice.wait_for(timeout=90_000)
        page.locator("input[type=file]").set_input_files(str(image))
        page.get_by_text("All results").wait_for(timeout=90_000)
        label = page.locator("h3", has_text="NORMAL").or_(page.locator("h3", has_text="PNEUMONIA"))
        label = label.first
        label.scroll_into_view_if_needed()
        label_box = label.bounding_box()
        notice.scroll_into_view_if_needed()
        notice_box = notice.bounding_box()
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        visible = notice.is_visible() and label.is_visible()
        browser.close()
    assert visible
    assert _inside(notice_box, width), notice_box
    assert _inside(label_box, width), label_box
