# ruff: noqa: E501  (the cells are notebook code, wrapped as a reader of the notebook sees it)
"""Writes `notebooks/04_findings.ipynb` (unexecuted) from the cells below.

Execute it with outputs (as committed):

    jupyter nbconvert --to notebook --execute --inplace notebooks/04_findings.ipynb

Kept as a script so the notebook's code is reviewed as code; the notebook itself imports the
package and the study's saved results, and copies none of the package's code.
"""

import argparse
from pathlib import Path

import nbformat as nbf

CELLS = [
    (
        "md",
        """# 4. Findings: what the model gets wrong on another batch of films, and what fixed it

The official test films come from another batch of patients than the training films. Validation
carved from `train/` cannot see that shift (validation AUC 0.99+ for every recipe), so this
notebook looks at the **development half** of the official test split (`test/`, 313 films), which
we used to choose the recipe and the threshold. Every figure on it is therefore a selection
figure; the other half of the test split is withheld and scores the shipped model separately.

1. How the test films differ from the training films (image statistics).
2. Where the model that was shipped before (`experiments/previous_model`) goes wrong, with
   Grad-CAM on the NORMAL films it called PNEUMONIA.
3. A probe: change only the framing of the input and watch the model's answer move.
4. The recipe study over seeds (`experiments/shift/shift_study.py`), and the model it chose
   (`saved_models/`), seen through the same views.

Films: Kermany et al., Cell 2018, CC BY 4.0 (Guangzhou Women and Children's Medical Center).""",
    ),
    (
        "code",
        """%matplotlib inline
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from pneumocnn.core.locations import default_model
from pneumocnn.data.filmstats import statistics_table
from pneumocnn.data.folders import film_group, find_dataset, list_images, patient_id
from pneumocnn.data.images import load_images

# Quick mode (CI): a few films and resamples. Full mode: everything, as committed.
QUICK = os.environ.get("PNEUMOCNN_NOTEBOOK_QUICK") == "1"
ROOT = Path.cwd().parent  # notebooks/ -> the project root
DATA_DIR = Path(os.environ.get("PNEUMOCNN_DATA_DIR") or ROOT.parent / "shared" / "chest_xray")
CURRENT = default_model("int8")  # the shipped model (saved_models/)
# The model shipped before, kept for comparison, in files named as the shipped ones.
PREVIOUS_DIR = ROOT / "experiments" / "previous_model"
PREVIOUS = PREVIOUS_DIR / CURRENT.name
RESAMPLES = 50 if QUICK else 1000
dataset = find_dataset(DATA_DIR)
print(f"quick mode: {QUICK}; data: {DATA_DIR}")""",
    ),
    ("md", "## 1. How the development half differs from the training films"),
    (
        "code",
        """def sample(folders, per_class, seed=0):
    table = list_images(folders, dataset.class_names)
    if per_class:
        table = table.groupby("label").sample(n=per_class, random_state=seed)
    images, kept, _ = load_images(table["path"].tolist(), 224)
    table = table.iloc[kept].reset_index(drop=True)
    return images, table

train_images, train_table = sample(dataset.development, 20 if QUICK else 300)
dev_images, dev_table = sample((dataset.test,), 20 if QUICK else 0)
frames = []
for split, images, table in (("train", train_images, train_table), ("dev half", dev_images, dev_table)):
    stats = pd.DataFrame(statistics_table(images))
    stats["split"] = split
    stats["class"] = np.array(dataset.class_names)[table["label"].to_numpy()]
    frames.append(stats)
stats = pd.concat(frames, ignore_index=True)
stats.groupby(["class", "split"])[
    ["mean", "side_mean", "border_mean", "centre_mean", "body_width", "sharpness"]
].mean().round(2)""",
    ),
    (
        "code",
        """columns = ["side_mean", "border_mean", "body_width", "mean", "std", "sharpness"]
fig, axes = plt.subplots(2, 3, figsize=(13, 7))
for ax, column in zip(axes.ravel(), columns):
    sns.boxplot(data=stats, x="class", y=column, hue="split", ax=ax, fliersize=2)
    ax.set_title(column)
    ax.set_xlabel("")
    if ax is not axes[0, 0]:
        ax.get_legend().remove()
fig.suptitle("Training films vs the development half, by class (224 px)")
fig.tight_layout()""",
    ),
    ("md", "## 2. The model shipped before, on the development half"),
    (
        "code",
        """from pneumocnn.core.task import pneumonia_probability
from pneumocnn.evaluation.uncertainty import uncertainty
from pneumocnn.runtime.runners import open_model

dev_labels = dev_table["label"].to_numpy()
dev_paths = dev_table["path"].tolist()
patients = [patient_id(p) for p in dev_paths]
groups = [film_group(p, bool(y)) for p, y in zip(dev_paths, dev_labels)]


def development_view(model_path):
    model = open_model(model_path)
    size = model.image_size
    images, _, _ = load_images(dev_paths, size)
    probabilities = model.predict_proba(images)
    spread = uncertainty(dev_labels, probabilities, model.threshold, patients, groups, RESAMPLES)
    p = pneumonia_probability(probabilities)
    return model, images, p, spread


def describe(name, model, p, spread):
    called = p >= model.threshold
    print(f"{name}: threshold {model.threshold:.3f}")
    for key, (low, high) in spread["intervals"].items():
        point = {
            "roc_auc": None,
            "accuracy": np.mean(called == (dev_labels > 0)),
            "sensitivity": np.mean(called[dev_labels > 0]),
            "specificity": np.mean(~called[dev_labels == 0]),
        }[key]
        shown = "" if point is None else f"{point:.3f} "
        print(f"  {key:<12} {shown}[95% {low:.3f}-{high:.3f}]")
    print("  right calls by group:", {g: f"{r['recall']:.2f} of {r['films']}" for g, r in spread["groups"].items()})


previous, previous_images, previous_p, previous_spread = development_view(PREVIOUS)
describe("previous model", previous, previous_p, previous_spread)""",
    ),
    (
        "code",
        """def probability_plot(p, title):
    frame = pd.DataFrame({"P(pneumonia)": p, "group": groups})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.stripplot(data=frame, x="P(pneumonia)", y="group", hue="group", ax=ax, size=3, jitter=0.3)
    ax.set_title(title)
    ax.set_xlim(0, 1)
    return fig


probability_plot(previous_p, f"previous model: P(pneumonia) per film; threshold {previous.threshold:.3f}");""",
    ),
    (
        "md",
        """The NORMAL films it called PNEUMONIA, with Grad-CAM of the float model of the same
weights (the `.keras` beside the int8 file), at a fixed colour scale.""",
    ),
    (
        "code",
        """from pneumocnn.network.model import load_model
from pneumocnn.runtime.gradcam import GradCam


def show_gradcam(keras_path, images, indices, p, title, columns=4):
    cam = GradCam(load_model(keras_path))
    rows = int(np.ceil(len(indices) / columns)) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), indices):
        heatmap = cam.heatmap(images[index])[0]
        ax.imshow(images[index][..., 0], cmap="gray", vmin=0, vmax=255)
        ax.imshow(heatmap, cmap="jet", alpha=0.35, vmin=0, vmax=1)
        ax.set_title(f"{Path(dev_paths[index]).name[:22]}\\nP={p[index]:.2f}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


missed = np.flatnonzero((dev_labels == 0) & (previous_p >= previous.threshold))
print(f"{len(missed)} of {np.sum(dev_labels == 0)} NORMAL films called PNEUMONIA by the previous model")
show_gradcam(
    PREVIOUS_DIR / default_model("keras").name, previous_images, missed[:8], previous_p,
    "previous model: NORMAL films it called PNEUMONIA",
);""",
    ),
    ("md", "## 3. A probe: change only the framing"),
    (
        "code",
        """from PIL import Image
from sklearn.metrics import roc_auc_score


def reframe(images, crop=0.0, pad=0.0):
    \"\"\"Crops `crop` of the side off every edge (a tighter frame), or pads a black border of
    `pad` of the side (a looser one), then resizes back.\"\"\"
    size = images.shape[1]
    out = []
    for image in images[..., 0]:
        film = Image.fromarray(image)
        if crop:
            edge = int(round(size * crop))
            film = film.crop((edge, edge, size - edge, size - edge))
        if pad:
            edge = int(round(size * pad))
            canvas = Image.new("L", (size + 2 * edge, size + 2 * edge), 0)
            canvas.paste(film, (edge, edge))
            film = canvas
        out.append(np.asarray(film.resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(out)[..., np.newaxis]


def probe(model, images):
    rows = []
    for name, kwargs in [("as is", {}), ("crop 8%", {"crop": 0.08}), ("crop 15%", {"crop": 0.15}), ("pad 10%", {"pad": 0.10})]:
        p = pneumonia_probability(model.predict_proba(reframe(images, **kwargs)))
        rows.append({
            "input": name,
            "mean P(pneumonia), NORMAL films": p[dev_labels == 0].mean(),
            "ROC AUC": roc_auc_score(dev_labels > 0, p),
        })
    return pd.DataFrame(rows).set_index("input").round(3)


probe(previous, previous_images)""",
    ),
    (
        "md",
        """## 4. The recipe study, over seeds

Each row trained three (or more) seeds with the package's own training code; nothing was trained
on the development half, which each epoch only scored. The table comes from the saved results
(`python experiments/shift/shift_study.py --table`): seed mean ± standard deviation, and a 95% patient
bootstrap interval of the seed mean. `spec@96` is the best specificity at 96% sensitivity with the
threshold chosen on the development half itself (what site calibration gives there: optimistic).""",
    ),
    (
        "code",
        """import sys

STUDY = ROOT / "experiments" / "shift"
sys.path.insert(0, str(STUDY))  # the study's own table code, a script beside its results
from shift_tables import load_results, row_table, scores_of  # noqa: E402

results = load_results(STUDY / "results")
table = row_table(results, resamples=50 if QUICK else 500)
table.set_index("row")""",
    ),
    (
        "code",
        """per_seed = []
for result in results:
    part = scores_of(result)
    per_seed.append({
        "row": result["row"],
        "seed": result["seed"],
        "development-half AUC": roc_auc_score(part["dev_labels"], part["dev_scores"]),
        "validation AUC": result["summary"]["val_auc"],
    })
per_seed = pd.DataFrame(per_seed)
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, column in zip(axes, ["validation AUC", "development-half AUC"]):
    sns.stripplot(data=per_seed, x=column, y="row", ax=ax, size=7)
    ax.set_title(column + " (one dot per seed)")
fig.tight_layout()""",
    ),
    (
        "code",
        """fig, ax = plt.subplots(figsize=(8, 4))
for result in results:
    if result["seed"] != results[0]["seed"]:
        continue
    ax.plot(result["history_dev_auc"], label=result["row"])
ax.set_xlabel("epoch")
ax.set_ylabel("development-half AUC")
ax.set_title(f"Per epoch, seed {results[0]['seed']}: validation AUC sits at 0.99+ all along")
ax.legend(fontsize=7)
fig.tight_layout()""",
    ),
    ("md", "## 5. The model the study chose (`saved_models/`), through the same views"),
    (
        "code",
        """current, current_images, current_p, current_spread = development_view(CURRENT)
describe("current model", current, current_p, current_spread)
probability_plot(current_p, f"current model: P(pneumonia) per film; threshold {current.threshold:.3f}");""",
    ),
    ("code", "probe(current, current_images)"),
    (
        "code",
        """still_missed = np.flatnonzero((dev_labels == 0) & (current_p >= current.threshold))
print(f"{len(still_missed)} of {np.sum(dev_labels == 0)} NORMAL films called PNEUMONIA by the current model")
show_gradcam(
    default_model("keras"), current_images, missed[:8], current_p,
    "current model: the NORMAL films the previous model called PNEUMONIA",
);""",
    ),
    (
        "md",
        """## What we learned

- **The batches differ at the edges of the frame.** Beside the chest (`side_mean`), the
  development half's NORMAL films are brighter than the training NORMAL films, closer to the
  training PNEUMONIA films, whose frames are often tight or hazy. Overall exposure (`mean`) and
  sharpness differ little.
- **The previous model read the frame.** It called about four in ten of the development half's
  NORMAL films PNEUMONIA (specificity 0.615 [0.530-0.703], 95% patient-bootstrap interval,
  `pneumocnn.evaluate` on `experiments/previous_model`), most of them `NORMAL2-` films; cropping 15% off every side of a NORMAL
  film (a tighter frame) pushed its PNEUMONIA probability up and its AUC down, with no change in
  the lungs. Its Grad-CAM maps on those films do not point at a lesion.
- **Zoom-in augmentation takes that cue away.** Over three to five seeds, recipes with framing
  augmentation rank the shifted films better than those without (seed-mean AUC 0.951-0.965,
  most of them 0.957 or above, against 0.942-0.952; each row's interval is in the table above);
  compare the probe table of the current model with the
  previous one's.
- **What did not carry over:** per-image exposure standardisation ranked best over three seeds
  but not over six (0.961 ± 0.009 [0.938-0.979]), and quantizes only through the export's activation
  equalization; distilling those models into a `framing` student, EMA weights, label
  smoothing, a cosine schedule, warm restarts, a longer schedule, a deeper or a wider network,
  and averaging over zoomed-in views at test time rank within the seeds' spread of `framing`.
  Training on three classes (`framing_subtype`) ranks the same; its lead in specificity at 96%
  sensitivity over its first three seeds shrank with five (0.831 ± 0.085 [0.733-0.925] against
  0.791 ± 0.056 [0.704-0.900] for `framing`, five seeds each) and did not reproduce in a binary model trained on the three
  classes (`framing_3class`); focal cross-entropy (`framing_focal`) makes the steadiest model
  under one grey level of pixel noise.
- **Validation is blind to all of this** (0.99+ AUC for every recipe), and most of the gain in
  accuracy comes from setting the threshold on films of the target batch (site calibration):
  the same holds for any hospital that deploys the model.
- These figures are on the half of the test split that chose the recipe and the threshold; the
  withheld half will say how much of the gain holds.""",
    ),
]


def main() -> None:
    # No options: the parser answers --help (without it, the script would do its work).
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    notebook = nbf.v4.new_notebook()
    notebook.cells = [
        nbf.v4.new_markdown_cell(text) if kind == "md" else nbf.v4.new_code_cell(text)
        for kind, text in CELLS
    ]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = Path(__file__).resolve().parents[2] / "notebooks" / "04_findings.ipynb"
    nbf.write(notebook, path)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
