"""How often does the input guard flag chest films, and how often does it catch other images?

Prints two rates for a model's input guard (`pneumocnn.runtime.guard`):

- the share of the development half of the test split (`<data-dir>/test`, films of another
  batch than the training films) that the guard flags or refuses (aim: at most 2%);
- the share of a set of non-chest images that it flags or refuses (aim: at least 95%), built
  here from what installed packages ship or what numpy and Pillow draw, never downloaded:
  scikit-image's bundled sample images (`skimage.data`, when scikit-image is installed: photos,
  microscopy, text, textures, a retina, a CT phantom), scikit-learn's two sample photos, and
  synthetic images (noise, gradients, stripes, checkerboards, text, shapes, radiograph-like
  phantoms of limbs and skulls, CT sinograms, and the tests' gray blob 'films'), each as it
  comes (colour where it has colour), in grayscale, and as gray crops.

Every image is written to a file and read back through the loader, so the guard sees it as
`predict` does. The calibration comes from the model's metadata (`"guard"`, written by the
export); a model exported before the guard existed gets one fitted here exactly as the export
does (on its patient-grouped split, rebuilt from its config), and `--store` writes it into
that metadata (the model files and their checksums are untouched).

Example:

    python experiments/guard/guard_rates.py --data-dir ../shared/chest_xray
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pneumocnn.core.locations import default_model
from pneumocnn.core.metadata import find_metadata, load_metadata, write_json_atomically
from pneumocnn.data.images import read_grayscale, to_model_input
from pneumocnn.data.scan import require_inputs
from pneumocnn.runtime import guard
from pneumocnn.testing import synthetic_xray

SKIMAGE_SAMPLES = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
    "checkerboard",
)  # fmt: skip


def _crops(image: Image.Image, rng: np.random.Generator, count: int) -> Iterator[Image.Image]:
    """Gray crops of half to four fifths of each side."""
    gray = image.convert("L")
    for _ in range(count):
        width = int(gray.width * rng.uniform(0.5, 0.8))
        height = int(gray.height * rng.uniform(0.5, 0.8))
        left = int(rng.integers(0, gray.width - width + 1))
        top = int(rng.integers(0, gray.height - height + 1))
        yield gray.crop((left, top, left + width, top + height))


def _variants(name: str, image: Image.Image, rng: np.random.Generator, crops: int = 3):
    yield name, image
    if image.mode != "L":
        yield f"{name}-gray", image.convert("L")
    for index, crop in enumerate(_crops(image, rng, crops)):
        yield f"{name}-crop{index}", crop


def package_images(rng: np.random.Generator) -> Iterator[tuple[str, Image.Image]]:
    """scikit-image's bundled samples (when installed) and scikit-learn's two photos."""
    try:
        from skimage import data as skdata
    except ImportError:
        print("scikit-image is not installed: its sample images are left out", file=sys.stderr)
    else:
        for name in SKIMAGE_SAMPLES:
            pixels = np.asarray(getattr(skdata, name)())
            if pixels.dtype != np.uint8:
                pixels = np.clip(pixels * (255 if pixels.max() <= 1 else 1), 0, 255)
            yield from _variants(f"skimage-{name}", Image.fromarray(pixels.astype(np.uint8)), rng)
        faces = skdata.lfw_subset()[:10]  # 25x25 faces
        for index, face in enumerate(faces):
            yield f"skimage-face{index}", Image.fromarray((face * 255).astype(np.uint8))
    from sklearn.datasets import load_sample_images

    for name, pixels in zip(("china", "flower"), load_sample_images().images, strict=True):
        yield from _variants(f"sklearn-{name}", Image.fromarray(pixels), rng, crops=6)


def _ellipse_phantom(rng: np.random.Generator, size: tuple[int, int], shapes: int, bones: bool):
    """Bright ellipses on dark (a radiograph of limbs or a skull) or random gray shapes."""
    image = Image.new("L", size, int(rng.integers(0, 60)))
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(shapes):
        if bones:  # long, thin, bright: a limb's bones
            x = rng.uniform(0.2, 0.8) * width
            w = rng.uniform(0.04, 0.1) * width
            top, bottom = rng.uniform(0, 0.3) * height, rng.uniform(0.7, 1.0) * height
            draw.ellipse((x - w, top, x + w, bottom), fill=int(rng.integers(170, 255)))
        else:
            x0, y0 = rng.uniform(0, 0.7) * width, rng.uniform(0, 0.7) * height
            x1, y1 = x0 + rng.uniform(0.1, 0.4) * width, y0 + rng.uniform(0.1, 0.4) * height
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x0, y0, x1, y1), fill=int(rng.integers(0, 256)))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))


def _skull(rng: np.random.Generator, side: int) -> Image.Image:
    """A lateral-skull-like radiograph: a bright ring with a dark inside, on black."""
    image = Image.new("L", (side, side), 10)
    draw = ImageDraw.Draw(image)
    margin = int(side * rng.uniform(0.05, 0.2))
    draw.ellipse((margin, margin, side - margin, side - margin), fill=int(rng.integers(180, 240)))
    inner = margin + int(side * 0.05)
    draw.ellipse((inner, inner, side - inner, side - inner), fill=int(rng.integers(60, 120)))
    noise = rng.normal(0, 8, (side, side))
    pixels = np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2))


def synthetic_images(rng: np.random.Generator) -> Iterator[tuple[str, Image.Image]]:
    """Noise, gradients, stripes, checkerboards, text, shapes, colour fields, radiograph-like
    phantoms, CT sinograms, and gray blob 'films' (`pneumocnn.testing.synthetic_xray`, the
    tests' synthetic X-rays)."""
    for index in range(6):
        size = (int(rng.integers(200, 700)), int(rng.integers(200, 700)))
        width, height = size
        yy, xx = np.mgrid[:height, :width] / max(size)
        yield f"noise-uniform{index}", Image.fromarray(rng.integers(0, 256, size[::-1], np.uint8))
        gaussian = np.clip(rng.normal(128, 40, size[::-1]), 0, 255).astype(np.uint8)
        yield f"noise-gaussian{index}", Image.fromarray(gaussian)
        clouds = Image.fromarray(gaussian).filter(ImageFilter.GaussianBlur(rng.uniform(3, 20)))
        yield f"noise-clouds{index}", clouds.point(lambda v: max(0, min(255, (v - 108) * 6)))
        angle = rng.uniform(0, np.pi)
        linear = (np.cos(angle) * xx + np.sin(angle) * yy) * 255 / 1.5
        yield f"gradient-linear{index}", Image.fromarray(np.clip(linear, 0, 255).astype(np.uint8))
        radial = np.hypot(xx - rng.random(), yy - rng.random()) * 255
        yield f"gradient-radial{index}", Image.fromarray(np.clip(radial, 0, 255).astype(np.uint8))
        period = rng.uniform(0.02, 0.2)
        stripes = (np.sin(2 * np.pi * (xx if index % 2 else yy) / period) > 0) * 200 + 30
        yield f"stripes{index}", Image.fromarray(stripes.astype(np.uint8))
        cells = (((xx // period).astype(int) + (yy // period).astype(int)) % 2) * 220 + 20
        yield f"checkerboard{index}", Image.fromarray(cells.astype(np.uint8))
        page = Image.new("L", size, 245 if index % 2 else 15)
        draw = ImageDraw.Draw(page)
        for line in range(0, height - 12, 14):
            text = "".join(rng.choice(list("abcdefghij klmnopqrst uvwxyz")) for _ in range(60))
            draw.text((5, line), text, fill=15 if index % 2 else 240)
        yield f"text{index}", page
        yield f"shapes{index}", _ellipse_phantom(rng, size, 12, bones=False)
        colour = Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8)).resize(size)
        yield f"colour-field{index}", colour
        yield f"limb-radiograph{index}", _ellipse_phantom(rng, size, 2, bones=True)
        yield f"skull-radiograph{index}", _skull(rng, int(rng.integers(256, 600)))
        yield f"blob-film{index}", Image.fromarray(synthetic_xray(rng, index % 2, size))
    try:
        from skimage.data import shepp_logan_phantom
        from skimage.transform import radon
    except ImportError:
        return
    phantom = shepp_logan_phantom()[::2, ::2]
    for index in range(3):
        angles = np.linspace(0, 180, int(rng.integers(90, 240)), endpoint=False)
        sinogram = radon(phantom, theta=angles)
        scaled = 255 * (sinogram - sinogram.min()) / np.ptp(sinogram)
        yield f"ct-sinogram{index}", Image.fromarray(scaled.astype(np.uint8))


def non_chest_images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """The non-chest set (see the module docstring), seeded."""
    rng = np.random.default_rng(seed)
    return [*package_images(rng), *synthetic_images(rng)]


def altered_films(films: list[Path], count: int) -> list[tuple[str, Image.Image]]:
    """The first `count` films, each inverted (a MONOCHROME1 film read as MONOCHROME2), on its
    side, and upside down: chest films, but not as the model saw them."""
    altered = []
    for path in films[:count]:
        gray = read_grayscale(path)
        altered += [
            (f"{path.stem}-inverted", Image.eval(gray, lambda value: 255 - value)),
            (f"{path.stem}-side", gray.transpose(Image.Transpose.ROTATE_90)),
            (f"{path.stem}-upside-down", gray.transpose(Image.Transpose.ROTATE_180)),
        ]
    return altered


def write_images(images: list[tuple[str, Image.Image]], folder: Path) -> list[Path]:
    """Writes each image as a PNG and returns the files."""
    paths = []
    for name, image in images:
        path = folder / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths


def verdicts(
    paths: list[Path], calibration: guard.GuardCalibration, image_size: int
) -> list[guard.Verdict]:
    """The guard's verdict on each file, read as `predict` reads it."""
    results = []
    for path in paths:
        gray = read_grayscale(path)
        results.append(guard.judge(gray, to_model_input(gray, image_size), calibration, image_size))
    return results


def fit_like_export(metadata: dict, data_dir: Path) -> guard.GuardCalibration:
    """Fits the guard on the model's own patient-grouped split, rebuilt from its config, as
    the export does."""
    from pneumocnn.core.config import Config
    from pneumocnn.data.folders import find_dataset
    from pneumocnn.data.split import load_split, prepare_split, training_samples
    from pneumocnn.edge.prepare import GUARD_FIT_IMAGES

    config = Config.from_dict({**metadata["config"], "data_dir": str(data_dir)})
    dataset = find_dataset(data_dir)
    split = prepare_split(config, dataset)
    val = load_split(split, "val", config.image_size, dataset.root)
    # The export's guard sample (`pneumocnn.edge.prepare.prepare`): the same seeded draw.
    films = training_samples(
        split, dataset.root, config.image_size, {"guard": GUARD_FIT_IMAGES}, config.seed
    )
    return guard.fit(films["guard"], val.images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model()), help="An exported model file.")
    parser.add_argument("--data-dir", default="../shared/chest_xray", type=Path)
    parser.add_argument(
        "--store", action="store_true", help="Write a freshly fitted calibration into the metadata."
    )
    parser.add_argument(
        "--altered", type=int, default=30, help="Development films to alter (default: 30)."
    )
    parser.add_argument("--show", type=int, default=10, help="List this many misses of each set.")
    args = parser.parse_args(argv)
    metadata_path = find_metadata(args.model)
    metadata = load_metadata(metadata_path)
    image_size = int(metadata["image_size"])
    calibration = guard.calibration_of(metadata)
    if calibration is None:
        print(f"{metadata_path.name} has no guard calibration: fitting one as the export does")
        calibration = fit_like_export(metadata, args.data_dir)
        if args.store:
            write_json_atomically(metadata_path, {**metadata, "guard": calibration.to_dict()})
            print(f"Stored it in {metadata_path}")
    print(f"Calibration: {json.dumps(calibration.fitted_on)}")

    films = require_inputs([args.data_dir / "test"])
    film_verdicts = verdicts(films, calibration, image_size)
    with tempfile.TemporaryDirectory() as folder:
        others = non_chest_images()
        other_verdicts = verdicts(write_images(others, Path(folder)), calibration, image_size)
        altered = write_images(altered_films(films, args.altered), Path(folder))
        altered_verdicts = verdicts(altered, calibration, image_size)

    def caught(verdict):  # refused, or flagged by the score (not only for low resolution)
        return verdict.status == guard.REFUSED or (verdict.score or 0) > 1

    def summary(results):
        kinds = collections.Counter(
            "refused" if v.status == guard.REFUSED else "OOD score > 1" if caught(v) else "passed"
            for v in results
        )
        return f"{np.mean([caught(v) for v in results]):.2%} of {len(results)} ({dict(kinds)})"

    print(f"Development-half films flagged or refused: {summary(film_verdicts)}")
    print(f"Non-chest images flagged or refused: {summary(other_verdicts)}")
    print(
        "Altered development films (inverted, on their side, upside down): "
        f"{summary(altered_verdicts)}"
    )
    for path, verdict in zip(films, film_verdicts, strict=True):
        if caught(verdict) and args.show:
            print(f"  film {verdict}: {path.name}")
    missed = [(n, v) for (n, _), v in zip(others, other_verdicts, strict=True) if not caught(v)]
    for name, verdict in missed[: args.show]:
        print(f"  missed (score {verdict.score:.2f}): {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
