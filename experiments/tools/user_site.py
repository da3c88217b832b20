"""A copy of a Kaggle-layout site folder that looks like a clinic's own films.

The shared films are 224 px JPEGs named by patient; a clinic's films are grayscale, 400-3000 px,
any aspect ratio, and come out of a PACS as DICOM named by UIDs, or as numbered PNG files. This
writes each film of `SOURCE/<class>/` to `OUT/<class>/`, enlarged to a seeded size (400-3000 px
a side, each side drawn apart): as a 16-bit MONOCHROME2 DICOM with a window, named by a UID,
its patient only in the header's PatientID; or, for a share `--png-share` of the films, as an
8-bit PNG named `film-<N>.png`, its patient only in the table `OUT.csv` beside the folder. With
`--subtype-folders` the pneumonia films go to `BACTERIAL/` and `VIRAL/` instead of
`PNEUMONIA/`. Then, for example:

    .venv/bin/python experiments/tools/user_site.py ../shared/chest_xray/test --output /tmp/user
    .venv/bin/python -m pneumocnn.adapt saved_models --site-dir /tmp/user \\
        --patients /tmp/user.csv --data-dir ../shared/chest_xray --output-dir /tmp/user-adapted

Never commit what it writes: the films are the shared data's.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from pneumocnn.data.folders import match_patient, subtype_of
from pneumocnn.data.scan import scan_folder
from pneumocnn.testing import write_dicom

SIDES = (400, 3000)


def user_film(path: Path, rng: np.random.Generator) -> np.ndarray:
    """The film at `path` as 8-bit grayscale, enlarged to a seeded size and aspect."""
    width, height = (int(side) for side in rng.integers(*SIDES, size=2, endpoint=True))
    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((width, height), Image.Resampling.BICUBIC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="A site folder of NORMAL/ and PNEUMONIA/.")
    parser.add_argument(
        "--output", type=Path, required=True, help="The new site folder (its table beside it)."
    )
    parser.add_argument("--png-share", type=float, default=0.4)
    parser.add_argument("--subtype-folders", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    for name in ("NORMAL", "PNEUMONIA"):
        for index, path in enumerate(scan_folder(args.source / name, frozenset()).files):
            folder = name
            if args.subtype_folders and name == "PNEUMONIA":
                folder = {"bacteria": "BACTERIAL", "virus": "VIRAL"}[subtype_of(path)]
            film = user_film(Path(path), rng)
            if rng.random() < args.png_share:
                target = args.output / folder / f"film-{name[0]}{index}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(film).save(target)
                rows.append((f"{folder}/{target.name}", match_patient(path)))
            else:
                uid = f"1.2.826.0.1.3680043.{int(rng.integers(1 << 40))}.{index}"
                stored = film.astype(np.uint16) * 257
                write_dicom(
                    args.output / folder / f"{uid}.dcm",
                    stored,
                    window=(32768, 65536),
                    patient=("Anonymous^Patient", str(match_patient(path))),
                )
    table = args.output.with_name(args.output.name + ".csv")
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient"])
        writer.writerows(rows)
    print(f"Wrote {args.output} and {table} ({len(rows)} PNG rows)")


if __name__ == "__main__":
    main()
