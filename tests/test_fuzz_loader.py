"""The loader under fuzzing: 1,000+ mutated films and crafted headers (PNG, JPEG, TIFF, DICOM)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from fuzz_loader import HANG_SECONDS, MEMORY_LIMIT_MB

TESTS = Path(__file__).resolve().parent
FUZZ_COUNT = 2000


def test_fuzzed_films_and_headers_give_an_image_or_the_loaders_error_within_time_and_memory():
    # A child process: a hang becomes a timeout here, and the peak memory measured is the
    # loader's alone (this process may hold TensorFlow).
    completed = subprocess.run(
        [sys.executable, str(TESTS / "fuzz_loader.py"), "--count", str(FUZZ_COUNT), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    print(json.dumps({key: value for key, value in report.items() if key != "bases"}))
    assert report["tried"] == FUZZ_COUNT
    assert report["crashes"] == [], "\n".join(report["crashes"][:5])
    assert report["hangs"] == 0, report["slowest_input"]
    assert report["slowest_seconds"] < HANG_SECONDS
    assert report["peak_rss_mb"] < MEMORY_LIMIT_MB
    # Both outcomes happen: the mutations are neither all harmless nor all fatal.
    assert report["decoded"] > 100 and report["refused"] > 100
    assert {".png", ".jpeg", ".tiff", ".dcm"} <= {Path(name).suffix for name in report["bases"]}
