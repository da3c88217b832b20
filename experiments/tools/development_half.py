"""Rebuilds the development half of the test split from a Kaggle download.

`../shared/chest_xray/test` holds 313 of the official test split's 624 films, split by patient
(the other 311 are withheld). `development_half.txt`, beside this script, names them, relative to
the download's `test/` folder. This copies exactly those files from a Kaggle download
("Chest X-Ray Images (Pneumonia)", paultimothymooney/chest-xray-pneumonia) into OUT_DIR, in the
same layout (`OUT_DIR/NORMAL/`, `OUT_DIR/PNEUMONIA/`). It checks every file first and copies
nothing if one is missing.

The copies are the download's originals (grayscale, 384-2916 px wide); the shared folder's films
were resized to 224x224 and stored as 3-channel JPEGs, so figures scored on a rebuilt half may
differ from the documented ones by a few films.

Usage:

    python experiments/tools/development_half.py KAGGLE_CHEST_XRAY OUT_DIR

KAGGLE_CHEST_XRAY is the folder the archive unpacks to (the nested `chest_xray/chest_xray/` and
`__MACOSX` are handled) or any folder holding the split's `test/`. Then, e.g.:

    python -m pneumocnn.evaluate saved_models/pneumocnn_int8.tflite --data-dir OUT_DIR --split all
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

FILE_LIST = Path(__file__).resolve().parent / "development_half.txt"


def listed_files(file_list: Path = FILE_LIST) -> list[str]:
    """The development half's paths (`NORMAL/<name>`, `PNEUMONIA/<name>`), in the list's order."""
    lines = file_list.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def find_test_folder(download: Path) -> Path:
    """The download's `test/` folder, through the archive's `chest_xray/` nesting.

    Raises:
        SystemExit: if there is no `test/` folder with `NORMAL/` and `PNEUMONIA/` in it.
    """
    folder = download
    for _ in range(3):  # chest_xray/ -> chest_xray/chest_xray/
        if (folder / "test" / "NORMAL").is_dir() and (folder / "test" / "PNEUMONIA").is_dir():
            return folder / "test"
        nested = [p for p in folder.glob("chest[_-]xray") if p.is_dir()] if folder.is_dir() else []
        if len(nested) != 1:
            break
        folder = nested[0]
    raise SystemExit(
        f"No test/NORMAL and test/PNEUMONIA folders under '{download}'. Received: "
        f"KAGGLE_CHEST_XRAY='{download}'. Pass the folder the Kaggle archive unpacks to."
    )


def rebuild(download: Path, out_dir: Path, file_list: Path = FILE_LIST) -> list[Path]:
    """Copies the listed files from the download's `test/` into `out_dir`.

    Args:
        download: the Kaggle download (see `find_test_folder`).
        out_dir: the folder to write; it must not hold files of the listed names already.
        file_list: the list of paths. Defaults to `development_half.txt` beside this script.

    Returns:
        The files written.

    Raises:
        SystemExit: if a listed file is missing from the download, or already in `out_dir`;
            nothing is copied then.
    """
    test = find_test_folder(download)
    names = listed_files(file_list)
    missing = [name for name in names if not (test / name).is_file()]
    if missing:
        raise SystemExit(
            f"{len(missing)} of the {len(names)} development-half files are not in '{test}', "
            f"the first: '{missing[0]}'. Received: KAGGLE_CHEST_XRAY='{download}'. Pass an "
            "unmodified Kaggle download (its test/ split holds 624 films)."
        )
    present = [name for name in names if (out_dir / name).exists()]
    if present:
        raise SystemExit(
            f"'{out_dir / present[0]}' exists already. Received: OUT_DIR='{out_dir}'. Pass a new "
            "or empty folder."
        )
    written = []
    for name in names:
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(test / name, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("download", type=Path, metavar="KAGGLE_CHEST_XRAY")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    args = parser.parse_args(argv)
    written = rebuild(args.download, args.out_dir)
    normal = sum(path.parent.name == "NORMAL" for path in written)
    print(
        f"Wrote {len(written)} films to {args.out_dir} ({normal} NORMAL, "
        f"{len(written) - normal} PNEUMONIA)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
