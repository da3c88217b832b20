"""The web page: `python -m pneumocnn.web build OUT/` writes a static site that runs the model
in the browser with LiteRT.js, so a film never leaves the user's device.

The site is plain files (no server code): the page from `web/` (`index.html`, `app.js`,
`preprocess.js`, `png16.js`: 16-bit grayscale PNGs, `input_guard.js`: the input guard of
`pneumocnn.runtime.guard` in JavaScript, `style.css`), the int8 model with its metadata and
labels under `model/`, LiteRT.js (the npm package `@litertjs/core`, pinned in `web/package.json` and
`web/package-lock.json`) under `vendor/`, and `site.json` naming them. Any static host serves it
(e.g. `python -m http.server -d OUT/`).

LiteRT.js comes from `web/node_modules`; when it is missing, the build runs `npm ci` in `web/`
(Node.js and npm needed). Each copied LiteRT.js file is checked against the SHA-256 recorded in
`web/vendor.json`, and the model against its metadata, before anything is written.

Example:

    python -m pneumocnn.web build site/
    python -m http.server -d site/ 8000   # then open http://localhost:8000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pneumocnn import cli
from pneumocnn.core.errors import EXIT_OK, UsageError
from pneumocnn.core.locations import default_model
from pneumocnn.core.metadata import (
    MetadataError,
    find_metadata,
    load_metadata,
    member_path,
    model_name,
)
from pneumocnn.data.pixels import MAX_DECODED_BYTES
from pneumocnn.runtime.guard import DEFAULT_LIMITS

ROOT = Path(__file__).resolve().parents[1]
WEB_DIR = ROOT / "web"
PAGE_FILES = ("index.html", "app.js", "preprocess.js", "png16.js", "input_guard.js", "style.css")
# How the tests and docs/screenshot.py drive Debian's headless Chromium: as root in a closed
# network, so no sandbox, and no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# LiteRT.js 2.5 handles float32, int32 and uint8 tensors (an int8 input or output is refused).
LITERT_JS_DTYPES = ("uint8", "float32", "int32")


class BuildError(UsageError):
    """Raised when the site cannot be built; the message says what to fix (exit code 2)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vendor_files(web_dir: Path = WEB_DIR, install: bool = True) -> tuple[dict[str, Any], dict]:
    """The LiteRT.js files to serve, verified against `web/vendor.json`.

    Args:
        web_dir: the page's folder, with `package.json`, `package-lock.json` and `vendor.json`.
            Defaults to the repository's `web/`.
        install: run `npm ci` in `web_dir` when `node_modules` lacks a file. Defaults to True.

    Returns:
        `(pins, sources)`: the parsed `vendor.json`, and the source path of each destination.

    Raises:
        BuildError: if npm is needed and missing, `npm ci` fails, or a file's SHA-256 differs from
            its pin.
    """
    pins = json.loads((web_dir / "vendor.json").read_text())
    sources = {target: web_dir / pin["source"] for target, pin in pins["files"].items()}
    if install and not all(path.is_file() for path in sources.values()):
        npm = shutil.which("npm")
        if npm is None:
            raise BuildError(
                f"LiteRT.js is not installed in '{web_dir / 'node_modules'}', and npm was not "
                "found to install it. Install Node.js (with npm), then run `npm ci` in "
                f"'{web_dir}' or build again."
            )
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=web_dir,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BuildError(
                f"`npm ci` in '{web_dir}' failed (exit status {result.returncode}):\n"
                f"{result.stderr[-2000:]}\nCheck the network access to the npm registry."
            )
    for target, path in sources.items():
        if not path.is_file():
            raise BuildError(
                f"'{path}' is missing after `npm ci`. Received: {pins['package']}@{pins['version']}"
                f" in '{web_dir / 'package.json'}'; it must provide every file in vendor.json."
            )
        expected = pins["files"][target]["sha256"]
        if _sha256(path) != expected:
            raise BuildError(
                f"'{path}' does not match the SHA-256 pinned in '{web_dir / 'vendor.json'}' "
                f"(expected {expected}). Run `npm ci` in '{web_dir}' to reinstall "
                f"{pins['package']}@{pins['version']} from the lock file."
            )
    return pins, sources


def check_model(model: Path) -> dict[str, Any]:
    """Checks that LiteRT.js can run an exported model, and returns its metadata.

    Raises:
        BuildError: if the model or its metadata is missing or does not match, the input has a
            dynamic batch, a tensor type is one LiteRT.js cannot handle, or the metadata lacks
            what the page shows.
    """
    try:
        metadata = load_metadata(find_metadata(model), model)
    except (MetadataError, FileNotFoundError) as error:
        raise BuildError(f"Cannot use the model '{model}': {error}") from error
    try:
        tensors = metadata.get("tensors", {}).get(model.name, {})
        shape = tensors.get("input", {}).get("shape")
        dtypes = {role: tensors[role]["dtype"] for role in ("input", "output")}
    except (AttributeError, KeyError, TypeError) as error:
        raise BuildError(
            f"The metadata of '{model}' does not describe the model's tensors "
            f"({type(error).__name__}: {str(error)[:200]}). Re-export the model with the "
            "current pneumocnn (`python -m pneumocnn.export RUN_DIR`)."
        ) from error
    if not shape or shape[0] != 1:
        raise BuildError(
            f"The model '{model}' takes input of shape {shape}; LiteRT.js needs a fixed batch of "
            "1. Re-export it with the current pneumocnn (`python -m pneumocnn.export RUN_DIR`), "
            "whose models have a batch of 1."
        )
    for role, dtype in dtypes.items():
        if dtype not in LITERT_JS_DTYPES:
            raise BuildError(
                f"The model's {role} is {dtype}; LiteRT.js handles {', '.join(LITERT_JS_DTYPES)}. "
                f"Received: model='{model}'. Use the exported uint8-in, uint8-out int8 model."
            )
    if not metadata.get("warning"):
        raise BuildError(
            f"The metadata of '{model}' has no `warning` for the page to show. Re-export the "
            "model with the current pneumocnn."
        )
    return metadata


def build(output_dir: str | Path, model: str | Path | None = None, web_dir: Path = WEB_DIR) -> Path:
    """Builds the static site into `output_dir`.

    Args:
        output_dir: the folder to write (created; files already there are overwritten).
        model: the exported `.tflite` to serve (its metadata and labels files must sit beside
            it). Defaults to `None`: the shipped int8 model
            (`pneumocnn.core.locations.default_model`: `$PNEUMOCNN_MODEL_DIR`, else
            `saved_models/`).
        web_dir: the page's source folder. Defaults to the repository's `web/`.

    Returns:
        The site's folder.

    Raises:
        BuildError: see `vendor_files` and `check_model`.
    """
    model = Path(model) if model is not None else default_model()
    metadata = check_model(model)
    pins, sources = vendor_files(web_dir)
    output_dir = Path(output_dir)
    (output_dir / "model").mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(web_dir / name, output_dir / name)
    for target, source in sources.items():
        (output_dir / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, output_dir / target)
    name = model_name(model)
    metadata_file = find_metadata(model)
    # A name the metadata lists is a file of the model's own folder (checked by load_metadata).
    labels = member_path(
        metadata_file, metadata.get("files", {}).get("labels", f"{name}_labels.txt")
    )
    for path in (model, metadata_file, labels):
        if path.is_file():
            shutil.copyfile(path, output_dir / "model" / path.name)
    site = {
        "model": f"model/{model.name}",
        "metadata": f"model/{metadata_file.name}",
        "litert": {
            "package": pins["package"],
            "version": pins["version"],
            "wasm": "vendor/litertjs/wasm/",
        },
        # The page keeps to the Python loader's decode budget, checked on the header before
        # decoding, and to the guard's default limits where the metadata carries none.
        "max_decoded_bytes": MAX_DECODED_BYTES,
        "guard_limits": DEFAULT_LIMITS,
    }
    (output_dir / "site.json").write_text(json.dumps(site, indent=2) + "\n")
    return output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.web",
        description="Build the static web page that runs the model in the browser (LiteRT.js).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser(
        "build", help="write the site (page, model, metadata, LiteRT.js) into a folder"
    )
    build_parser.add_argument("output_dir", help="the folder to write, e.g. site/")
    build_parser.add_argument(
        "--model",
        default=None,
        help="the int8 .tflite to serve, its metadata beside it (default: "
        "$PNEUMOCNN_MODEL_DIR/pneumocnn_int8.tflite, else saved_models/pneumocnn_int8.tflite)",
    )
    return parser


def _command(args: argparse.Namespace) -> int:
    site = build(args.output_dir, args.model)
    print(f"Wrote the site to {site}/. Serve it with: python3 -m http.server -d {site} 8000")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit codes as in `pneumocnn.cli` (2: the site cannot be built)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
