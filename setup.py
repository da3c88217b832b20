"""Build hook: the wheel carries the shipped models.

`saved_models/` (beside the package) stays the home of the model files in the repository; a
regular build copies them into the package as `pneumocnn/saved_models/`, so `pip install .`
gives a working `python -m pneumocnn.predict` (see `pneumocnn.core.locations.shipped_model_dir`).
The sdist carries them through MANIFEST.in. Everything else is in setup.cfg.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SAVED_MODELS = Path(__file__).resolve().parent / "saved_models"


class BuildPyWithModels(build_py):
    """`build_py` that also copies `saved_models/*` into `<build>/pneumocnn/saved_models/`."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads saved_models/ in the checkout itself
        if not SAVED_MODELS.is_dir():
            raise FileNotFoundError(
                f"No saved_models/ folder at '{SAVED_MODELS}' to put into the wheel. Build from "
                "a checkout of the repository (or its sdist), which holds it."
            )
        target = Path(self.build_lib) / "pneumocnn" / "saved_models"
        self.mkpath(str(target))
        for path in sorted(SAVED_MODELS.iterdir()):
            if path.is_file():
                self.copy_file(str(path), str(target / path.name))


setup(cmdclass={"build_py": BuildPyWithModels})
