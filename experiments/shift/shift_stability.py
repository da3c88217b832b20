"""How steady each shift-study run is under one grey level of pixel noise (resumable).

For every saved result of the study (`experiments/shift/results/ROW-sSEED.json`) whose run folder
is still in `--runs-dir`, runs the float checkpoint (`best.keras`) on the development half with
`pneumocnn.evaluation.stability.pixel_noise_sensitivity` (five seeded draws of -1, 0 or +1 grey
level per pixel) and saves the figures to `experiments/shift/stability/ROW-sSEED.json`; runs already
measured are skipped. `python experiments/shift/shift_study.py --table` then shows `noise_mean` and
`noise_p99` beside each row. A steadier model is one whose calls other clients (another JPEG
decoder, MediaPipe's resize) reproduce more often; the int8 model is about twice as sensitive as
its float checkpoint (`experiments/int8/pixel_noise_flips.py`).

Example:

    python experiments/shift/shift_stability.py --data-dir ../shared/chest_xray \\
        --runs-dir runs/shift
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from pneumocnn.core.run_folder import CONFIG_FILE, MODEL_FILE
from pneumocnn.data.images import load_images
from pneumocnn.data.scan import require_inputs
from pneumocnn.evaluation.stability import pixel_noise_sensitivity

STUDY = Path(__file__).resolve().parent
ROOT = STUDY.parents[1]
RESULTS = STUDY / "results"
STABILITY = STUDY / "stability"


@functools.cache
def development_half(data_dir: Path, image_size: int):
    """The development half's films at `image_size`, decoded once per size."""
    files = [str(path) for path in require_inputs([data_dir / "test"])]
    images, _, skipped = load_images(files, image_size)
    if skipped:
        raise ValueError(f"Unreadable development-half files: {skipped}")
    return images


def measure(run_dir: Path, data_dir: Path) -> dict:
    """The pixel-noise figures of one run's float checkpoint on the development half."""
    from pneumocnn.network.model import load_model  # TensorFlow: after --help
    from pneumocnn.runtime.runners import keras_probabilities

    config = json.loads((run_dir / CONFIG_FILE).read_text())
    images = development_half(data_dir, config["image_size"])
    model = load_model(run_dir / MODEL_FILE)
    return pixel_noise_sensitivity(lambda x: keras_probabilities(model, x), images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/chest_xray")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "shift"))
    args = parser.parse_args(argv)
    STABILITY.mkdir(parents=True, exist_ok=True)
    for result in sorted(RESULTS.glob("*.json")):
        target = STABILITY / result.name
        run_dir = Path(args.runs_dir) / result.stem
        if target.exists():
            continue
        if not (run_dir / MODEL_FILE).is_file():
            print(f"{result.stem}: no run folder in {args.runs_dir}, skipped", file=sys.stderr)
            continue
        figures = {"run": result.stem, **measure(run_dir, Path(args.data_dir)), "model": "float"}
        target.write_text(json.dumps(figures, indent=1) + "\n")
        print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
