"""Regenerates docs/app.png: the app, with the shipped model, on a synthetic phantom film.

Images from the data set are never committed, so the screenshot uses a drawn phantom.
Needs the dev extra and Debian's chromium: `python docs/screenshot.py`.
"""

import socket
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from playwright.sync_api import sync_playwright

from pneumocnn.testing import serve_app
from pneumocnn.web import CHROMIUM_ARGS

DOCS = Path(__file__).resolve().parent


def phantom(size: int = 512, seed: int = 0) -> Image.Image:
    """A rough frontal chest film: dark lungs, bright mediastinum and ribs, a hazy patch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    film = 170 - 60 * np.exp(-(((xx - 0.30) / 0.16) ** 2 + ((yy - 0.50) / 0.30) ** 2))
    film -= 60 * np.exp(-(((xx - 0.70) / 0.16) ** 2 + ((yy - 0.50) / 0.30) ** 2))
    film += 50 * np.exp(-(((xx - 0.50) / 0.07) ** 2))  # mediastinum and spine
    film += 18 * (np.sin(yy * 60) > 0.6) * (np.abs(xx - 0.5) > 0.08)  # ribs
    film += 55 * np.exp(-(((xx - 0.70) / 0.10) ** 2 + ((yy - 0.62) / 0.10) ** 2))  # consolidation
    film += rng.normal(0, 6, film.shape)
    image = Image.fromarray(np.clip(film, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(2))


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        film = Path(scratch) / "phantom_chest.png"
        phantom().save(film)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with serve_app(port) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1250})
            page.goto(url)
            page.locator("input[type=file]").set_input_files(str(film))
            page.get_by_text("All results").wait_for(timeout=90_000)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(DOCS / "app.png"), full_page=False)
            browser.close()
    print(f"Wrote {DOCS / 'app.png'}")


if __name__ == "__main__":
    main()
