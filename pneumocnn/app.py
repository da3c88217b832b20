"""The Streamlit app: drop in chest X-rays; see the label, the probability, where the model looked.

Every upload goes through the input guard first (`pneumocnn.runtime.guard`): a refused image is not
classified and says why; a flagged one is classified with a warning and its out-of-distribution
score. The model card (`pneumocnn.edge.card`, rendered from the metadata) opens under the title, and
the notice that this is not a medical device sits in the page itself, not only in the sidebar
(which a phone hides).

Run it with `streamlit run pneumocnn/app.py` or `pneumocnn-app`. It uses `saved_models/` (or the
folder in `$PNEUMOCNN_MODEL_DIR`); the sidebar picks the model (binary NORMAL / PNEUMONIA, or the
subtype model NORMAL / BACTERIAL / VIRAL, from their metadata) and the int8 `.tflite` or the
float `.keras`.
A research tool for paediatric chest films, not a diagnosis.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from pneumocnn.core.locations import MODEL_DIR_ENV_VAR, default_model_dir, find_models
from pneumocnn.core.metadata import MetadataError, load_metadata, model_files
from pneumocnn.data.images import read_grayscale, to_model_input
from pneumocnn.data.pixels import NOTES_KEY, ImageLoadError
from pneumocnn.edge.card import model_card
from pneumocnn.runtime import guard
from pneumocnn.runtime.prediction import classify

UPLOAD_TYPES = ["jpg", "jpeg", "png", "dcm"]
NOTICE = (
    "Research tool for paediatric chest X-rays (children aged one to five, frontal films). "
    "It is not a medical device and does not give a diagnosis: a clinician must read every film."
)


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


def probabilities_figure(probabilities: dict[str, float]) -> Figure:
    """Horizontal bars of each class's probability (a subtype model's softmax)."""
    figure = Figure(figsize=(5, 0.4 + 0.45 * len(probabilities)), layout="constrained")
    ax = figure.subplots()
    names = list(probabilities)[::-1]
    values = [probabilities[name] for name in names]
    ax.barh(names, values, color="#2980b9")
    for y, value in enumerate(values):
        ax.text(min(value + 0.02, 0.85), y, f"{value:.3f}", va="center", fontsize=8)
    ax.set(xlim=(0, 1), xlabel="probability")
    return figure


def render() -> None:
    """Draws the page. Streamlit runs this file as a script, top to bottom, on every input.

    The steps: `_open_model` (the task and file the user picks), the title, notice and model
    card, `_sidebar`, then `_show_film` for each upload and `_results_table` for all of them.
    """
    import streamlit as st

    st.set_page_config(page_title="pneumocnn", page_icon="🫁", layout="wide")
    metadata, classifier, cam, model_path = _open_model(st)
    class_names = list(classifier.task.class_names)
    st.title(f"pneumocnn: {', '.join(class_names[:-1])} or {class_names[-1]}?")
    # In the page, not the sidebar: a phone's browser hides the sidebar.
    st.warning(NOTICE)
    with st.expander("Model card: intended use, data, figures, known failures and limits"):
        st.markdown(model_card(metadata))
    _sidebar(st, metadata, classifier, model_path)
    uploads = st.file_uploader(
        "Chest X-rays (JPEG, PNG, or DICOM)", type=UPLOAD_TYPES, accept_multiple_files=True
    )
    if not uploads:
        st.info("Upload one or more frontal chest X-rays to classify them.")
        return
    rows = [_show_film(st, upload, classifier, cam, model_path) for upload in uploads]
    _results_table(st, rows, classifier)


def _open_model(st) -> tuple[dict[str, Any], Any, Any, Path]:
    """The model the sidebar's choices name (cached across reruns): its metadata, its runner,
    the Grad-CAM of its float model, and its file; stops the page with the fix when there is
    none."""
    from pneumocnn.network.model import load_model  # TensorFlow: once the page runs
    from pneumocnn.runtime.gradcam import GradCam
    from pneumocnn.runtime.runners import open_model

    load = st.cache_resource(show_spinner="Loading the model...")(open_model)
    load_cam = st.cache_resource(show_spinner="Loading Grad-CAM...")(
        lambda path: GradCam(load_model(path))
    )
    folder = default_model_dir()
    models = find_models(folder)
    fix = (
        f"Export one with `python -m pneumocnn.export RUN_DIR --output-dir {folder}`, or set "
        f"{MODEL_DIR_ENV_VAR} to a folder holding one (such as RUN_DIR/export)."
    )
    if not models:
        st.title("pneumocnn")
        st.error(f"No exported model in '{folder}'. {fix}")
        st.stop()
    titles = {name: f"{name}: {' / '.join(meta['class_names'])}" for name, meta in models.items()}
    name = st.sidebar.radio("Task", list(models), format_func=titles.get, index=0)
    files = models[name].get("files") or model_files(name)
    choices = {"int8 TFLite (LiteRT)": files["int8"], "float Keras": files["keras"]}
    model_path = folder / choices[st.sidebar.radio("Model", list(choices), index=0)]
    try:
        metadata = load_metadata(folder / model_files(name)["metadata"], model_path)
        return metadata, load(str(model_path)), load_cam(str(folder / files["keras"])), model_path
    except (FileNotFoundError, MetadataError, ValueError) as error:
        st.title("pneumocnn")
        st.error(f"Cannot load the model from '{folder}': {error}\n\n{fix}")
        st.stop()


def _sidebar(st, metadata: dict[str, Any], classifier: Any, model_path: Path) -> None:
    """The model's file, input, threshold, validation figures and input check."""
    st.sidebar.markdown(f"**{model_path.name}**: {model_path.stat().st_size / 1024:.0f} KB")
    validation = metadata.get("validation_metrics", {}).get(
        "int8" if model_path.suffix == ".tflite" else "float", {}
    )
    st.sidebar.markdown(
        f"Input {metadata['image_size']}x{metadata['image_size']} grayscale; "
        f"threshold on P(pneumonia) **{metadata['threshold']:.3f}** "
        f"({metadata.get('threshold_rule', '')})"
    )
    if validation:
        st.sidebar.markdown(
            f"Validation ({validation['images']} images, grouped by patient), pneumonia vs "
            f"NORMAL: AUC {validation['roc_auc']:.3f}, accuracy {validation['accuracy']:.3f}, "
            f"sensitivity {validation['sensitivity']:.3f}, "
            f"specificity {validation['specificity']:.3f}"
        )
        if classifier.task.subtype and "subtype_accuracy" in validation:
            st.sidebar.markdown(
                f"Three classes: accuracy {validation['subtype_accuracy']:.3f}, macro "
                f"one-vs-rest AUC {validation['macro_ovr_auc']:.3f}"
            )
    training = metadata.get("training_data", {})
    if training:
        st.sidebar.caption(f"Trained on: {training.get('source', '')}")
    st.sidebar.caption(
        "Input check: "
        + (
            "refusals and an out-of-distribution score calibrated on the validation films."
            if classifier.guard is not None
            else "refusals only (this model carries no out-of-distribution calibration)."
        )
    )


def _show_film(st, upload: Any, classifier: Any, cam: Any, model_path: Path) -> dict[str, Any]:
    """One upload: decoded once, guarded, classified and explained; returns its table row."""

    st.subheader(upload.name)
    try:
        gray = read_grayscale(io.BytesIO(upload.getvalue()), name=upload.name)
    except ImageLoadError as error:
        st.error(f"Could not use this file: {error}")
        return {"file": upload.name, "verdict": "unreadable", "reason": str(error)}
    # What the loader did (EXIF turn, 16-bit stretch, DICOM window, first frame): from the
    # one decode above, so a DICOM named .png can no longer stop the batch here.
    for note in gray.info.get(NOTES_KEY, []):
        st.caption(f"Read as: {note}.")
    result = classify(classifier, gray, upload.name)
    row = result.as_row()
    row = {"file": row.pop("path"), **row}
    if not classifier.task.subtype:  # P(PNEUMONIA) is the probability column already
        row = {key: value for key, value in row.items() if not key.startswith("P(")}
    left, right = st.columns([1, 2])
    with left:
        st.image(gray, caption=f"{gray.width}x{gray.height}", width="stretch")
    with right:
        if result.verdict.status == guard.REFUSED:
            st.markdown("### Not classified")
            st.error(f"The input check refused this image: {result.verdict.reason}.")
        else:
            _show_result(st, result, gray, classifier, cam, model_path)
    return row


def _show_result(st, result: Any, gray: Any, classifier: Any, cam: Any, model_path: Path) -> None:
    """The label, the input check, the probabilities and the Grad-CAM overlay of one film."""
    from pneumocnn.runtime.gradcam import explain_image, overlay_figure

    verdict = result.verdict
    st.markdown(f"### {result.label}")
    score = "" if verdict.score is None else f"OOD score {verdict.score:.2f}; "
    if verdict.status == guard.FLAGGED:
        st.warning(
            f"Read this result with care: {verdict.reason}. The model was trained on "
            "frontal chest films of children aged one to five from one hospital."
        )
    else:
        st.caption(
            f"Input check: ok ({score}1.0 is the 99th percentile of the validation films)."
            if score
            else "Input check: ok."
        )
    st.pyplot(gauge_figure(result.probability, result.threshold, "pneumonia"))
    if classifier.task.subtype:
        st.pyplot(probabilities_figure(result.probabilities))
    image = to_model_input(gray, classifier.image_size)
    explanation = explain_image(
        cam, image, result.threshold, classifier.task, result.label, result.probabilities
    )
    st.pyplot(
        overlay_figure(
            image,
            explanation.heatmap,
            explanation.probability,
            result.threshold,
            result.path,
            explained=explanation.explained,
            label=explanation.label,
        )
    )
    st.caption(
        f"Grad-CAM ({explanation.layer}) of the float model, for the label and "
        f"probability of {model_path.name}. Colour: evidence for "
        f"{explanation.explained} on a fixed 0-1 scale, the map relative to its "
        f"strongest cell times P({explanation.explained}); a faint map is weak evidence. "
        "It shows what raised the score, not where a lesion is."
    )


def _results_table(st, rows: list[dict[str, Any]], classifier: Any) -> None:
    """Every upload's row, and its CSV to download."""
    st.subheader("All results")
    table = pd.DataFrame(rows)
    table["threshold"] = round(classifier.threshold, 4)
    table = table.fillna({"label": "", "reason": ""})
    st.dataframe(table, width="stretch")
    st.download_button(
        "Download CSV",
        table.to_csv(index=False),
        file_name="pneumocnn_results.csv",
        mime="text/csv",
    )


def run() -> None:
    """The `pneumocnn-app` command: `streamlit run` on this file, passing on extra arguments."""
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(Path(__file__).resolve()), *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":
    render()
