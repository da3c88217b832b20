"""The Streamlit app: drop in chest X-rays; see the label, the probability, where the model looked.

Run it with `streamlit run pneumocnn/app.py` or `pneumocnn-app`. It uses `saved_models/` (or the
folder in `$PNEUMOCNN_MODEL_DIR`); the sidebar picks the int8 `.tflite` or the float `.keras`.
A research tool for paediatric chest films, not a diagnosis.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

MODEL_DIR_ENV_VAR = "PNEUMOCNN_MODEL_DIR"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "saved_models"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "dcm"]
# Headless Chromium as root in a closed network: no sandbox, and no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTICE = (
    "Research tool for paediatric chest X-rays (children aged one to five, frontal films). "
    "It is not a medical device and does not give a diagnosis: a clinician must read every film."
)


def model_dir() -> Path:
    """The folder holding the exported model: `$PNEUMOCNN_MODEL_DIR`, else `saved_models/`."""
    return Path(os.environ.get(MODEL_DIR_ENV_VAR) or DEFAULT_MODEL_DIR)


def gauge_figure(probability: float, threshold: float, positive: str) -> Figure:
    """A horizontal bar of P(positive) against the threshold (a red bar crosses it)."""
    figure = Figure(figsize=(5, 1.3), layout="constrained")
    ax = figure.subplots()
    colour = "#c0392b" if probability >= threshold else "#27ae60"
    ax.barh([0], [1.0], color="#ecf0f1", height=0.6)
    ax.barh([0], [probability], color=colour, height=0.6)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.5)
    ax.text(threshold, 0.45, f" threshold {threshold:.2f}", fontsize=8, va="bottom")
    ax.set(xlim=(0, 1), yticks=[], xlabel=f"P({positive}) = {probability:.3f}")
    return figure


def render() -> None:
    """Draws the page. Streamlit runs this file as a script, top to bottom, on every input."""
    import pandas as pd
    import streamlit as st

    from pneumocnn.explain import GradCam, overlay_figure
    from pneumocnn.images import ImageLoadError, read_grayscale, to_model_input
    from pneumocnn.metadata import (
        INT8_FILE,
        KERAS_FILE,
        METADATA_FILE,
        MetadataError,
        load_metadata,
    )
    from pneumocnn.model import load_model
    from pneumocnn.predict import load_classifier

    st.set_page_config(page_title="pneumocnn", page_icon="🫁", layout="wide")
    st.title("pneumocnn: NORMAL or PNEUMONIA?")

    @st.cache_resource(show_spinner="Loading the model...")
    def load(path: str) -> Any:
        return load_classifier(path)

    @st.cache_resource(show_spinner="Loading Grad-CAM...")
    def load_cam(path: str) -> GradCam:
        return GradCam(load_model(path))

    folder = model_dir()
    choices = {"int8 TFLite (LiteRT)": INT8_FILE, "float Keras": KERAS_FILE}
    choice = st.sidebar.radio("Model", list(choices), index=0)
    model_path = folder / choices[choice]
    try:
        metadata = load_metadata(folder / METADATA_FILE, model_path)
        classifier = load(str(model_path))
        cam = load_cam(str(folder / KERAS_FILE))
    except (FileNotFoundError, MetadataError, ValueError) as error:
        st.error(
            f"Cannot load the model from '{folder}': {error}\n\nExport one with "
            f"`python -m pneumocnn.export RUN_DIR`, or set {MODEL_DIR_ENV_VAR} to its folder."
        )
        st.stop()

    st.sidebar.markdown(f"**{model_path.name}**: {model_path.stat().st_size / 1024:.0f} KB")
    validation = metadata.get("validation_metrics", {}).get(
        "int8" if model_path.suffix == ".tflite" else "float", {}
    )
    st.sidebar.markdown(
        f"Input {metadata['image_size']}x{metadata['image_size']} grayscale; "
        f"threshold **{metadata['threshold']:.3f}** ({metadata.get('threshold_rule', '')})"
    )
    if validation:
        st.sidebar.markdown(
            f"Validation ({validation['images']} images, grouped by patient): "
            f"AUC {validation['roc_auc']:.3f}, accuracy {validation['accuracy']:.3f}, "
            f"sensitivity {validation['sensitivity']:.3f}, "
            f"specificity {validation['specificity']:.3f}"
        )
    training = metadata.get("training_data", {})
    if training:
        st.sidebar.caption(f"Trained on: {training.get('source', '')}")
    st.sidebar.warning(NOTICE)

    uploads = st.file_uploader(
        "Chest X-rays (JPEG, PNG, or DICOM)", type=UPLOAD_TYPES, accept_multiple_files=True
    )
    if not uploads:
        st.info("Upload one or more frontal chest X-rays to classify them.")
        return

    positive = classifier.class_names[1]
    rows = []
    for upload in uploads:
        st.subheader(upload.name)
        data = upload.getvalue()
        try:
            gray = read_grayscale(io.BytesIO(data), name=upload.name)
        except ImageLoadError as error:
            st.error(f"Could not use this file: {error}")
            rows.append(
                {"file": upload.name, "label": "", "probability": None, "error": str(error)}
            )
            continue
        if upload.name.lower().endswith(".png"):
            with Image.open(io.BytesIO(data)) as header:
                if header.mode.startswith("I"):
                    st.warning("16-bit image: stretched from its darkest to brightest pixel.")
        image = to_model_input(gray, classifier.image_size)
        probability = float(classifier.predict_proba(image[np.newaxis])[0])
        label = positive if probability >= classifier.threshold else classifier.class_names[0]
        heatmap, _ = cam.heatmap(image)
        left, right = st.columns([1, 2])
        with left:
            st.image(gray, caption=f"{gray.width}x{gray.height}", width="stretch")
        with right:
            st.markdown(f"### {label}")
            st.pyplot(gauge_figure(probability, classifier.threshold, positive))
            st.pyplot(
                overlay_figure(image, heatmap, probability, classifier.threshold, upload.name)
            )
            st.caption("Grad-CAM from the float model: warm colours raised the PNEUMONIA score.")
        rows.append(
            {"file": upload.name, "label": label, "probability": round(probability, 4), "error": ""}
        )

    st.subheader("All results")
    table = pd.DataFrame(rows)
    table["threshold"] = round(classifier.threshold, 4)
    st.dataframe(table, width="stretch")
    st.download_button(
        "Download CSV",
        table.to_csv(index=False),
        file_name="pneumocnn_results.csv",
        mime="text/csv",
    )


@contextlib.contextmanager
def serve(port: int, model_folder: str | Path | None = None, timeout: float = 60) -> Iterator[str]:
    """Runs the app in a headless Streamlit server on 127.0.0.1 for the duration of a block.

    For browser tests and screenshots.

    Args:
        port: a free local port.
        model_folder: the exported model folder. Defaults to `None` (see `model_dir`).
        timeout: seconds to wait for the server to answer. Defaults to 60.

    Yields:
        The app's URL.

    Raises:
        RuntimeError: if the server does not answer in time (its output is in the message).
    """
    env = dict(os.environ)
    if model_folder is not None:
        env[MODEL_DIR_ENV_VAR] = str(model_folder)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(Path(__file__).resolve()),
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    server.kill()
                    output = server.stdout.read().decode(errors="replace")
                    raise RuntimeError(f"The app did not start on {url}:\n{output}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def run() -> None:
    """The `pneumocnn-app` command: `streamlit run` on this file, passing on extra arguments."""
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(Path(__file__).resolve()), *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":
    render()
