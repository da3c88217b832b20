"""Do the shipped models still give the same predictions? Saves or compares them, bit for bit.

For every model file in `saved_models/` (int8, float16 and `.keras`, binary and subtype), runs
it through `pneumocnn.runtime.runners.open_model` on every image of a folder and records the
per-class probabilities and the decided labels. `--save FILE` writes them (an `.npz`); `--compare
FILE` checks that the current code gives identical ones (a binary model's older `(n,)` P(positive)
is compared with column 1 of today's `[1 - p, p]`) and exits 1 on any difference.

Example (before and after a refactor):

    python experiments/tools/same_predictions.py --data-dir ../shared/chest_xray/test \\
        --save before.npz
    python experiments/tools/same_predictions.py --data-dir ../shared/chest_xray/test \\
        --compare before.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pneumocnn.core.locations import default_model_dir
from pneumocnn.core.metadata import DEFAULT_NAMES, model_files
from pneumocnn.core.task import decide, pneumonia_probability
from pneumocnn.data.images import load_images
from pneumocnn.data.scan import require_inputs
from pneumocnn.runtime.runners import open_model

ROLES = ("int8", "fp16", "keras")


def predictions(folder: Path, model_dir: Path) -> dict[str, np.ndarray]:
    """`{file: probabilities, file + ":labels": labels}` for each shipped model file, and
    `files`: the images, sorted."""
    files = [str(path) for path in require_inputs([folder])]
    result = {"files": np.array(files)}
    for task in ("binary", "subtype"):
        for role in ROLES:
            name = model_files(DEFAULT_NAMES[task])[role]
            model = open_model(model_dir / name)
            images, kept, skipped = load_images(files, model.image_size)
            if skipped:
                raise ValueError(f"Unreadable images: {skipped}")
            probabilities = model.predict_proba(images)
            result[name] = probabilities
            result[f"{name}:labels"] = np.array(
                decide(probabilities, model.threshold, model.class_names)
            )
    return result


def compare(saved: dict[str, np.ndarray], now: dict[str, np.ndarray]) -> list[str]:
    """The differences between two `predictions` results, as readable lines."""
    problems = []
    if list(saved["files"]) != list(now["files"]):
        return ["the image lists differ"]
    for key, current in now.items():
        if key == "files":
            continue
        before = saved[key]
        if before.ndim == 1 and current.ndim == 2 and not key.endswith(":labels"):
            current = pneumonia_probability(current)  # a binary model's, as it was recorded
        if before.shape != current.shape or not np.array_equal(before, current):
            differing = int(np.sum(np.any(np.atleast_2d(before != current), axis=0)))
            problems.append(f"{key}: differs ({differing} of {len(saved['files'])} images)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="A folder of images (searched).")
    parser.add_argument("--model-dir", default=str(default_model_dir()))
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="Write the predictions to this .npz.")
    group.add_argument("--compare", help="Compare with the predictions in this .npz.")
    args = parser.parse_args(argv)
    now = predictions(Path(args.data_dir), Path(args.model_dir))
    if args.save:
        np.savez(args.save, **now)
        print(f"Saved the predictions of {len(now) // 2} model files on {len(now['files'])} images")
        return 0
    with np.load(args.compare) as saved:
        problems = compare(dict(saved), now)
    for problem in problems:
        print(problem)
    models = (len(now) - 1) // 2
    print(
        f"{models} model files on {len(now['files'])} images: "
        + ("identical probabilities and labels" if not problems else "DIFFERENT")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
