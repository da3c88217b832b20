import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pneumocnn.core.metadata import INT8_FILE, METADATA_FILE, MetadataError
from pneumocnn.data.pixels import ImageLoadError
from pneumocnn.runtime.lite import LiteModel
from pneumocnn.testing import synthetic_xray


def test_lite_runs_without_importing_tensorflow(exported_model, tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(synthetic_xray(np.random.default_rng(0), 1, (50, 70))).save(image)
    script = (
        "import sys\n"
        "from pneumocnn.runtime.lite import LiteModel\n"
        f"result = LiteModel({str(exported_model / INT8_FILE)!r}).predict_file({str(image)!r})\n"
        "assert 0.0 <= result.probability <= 1.0, result\n"
        "assert result.verdict.status in ('ok', 'flagged'), result\n"
        "print('tensorflow' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "False"


def test_label_follows_the_threshold_in_the_metadata(exported_model, tmp_path):
    image = tmp_path / "x.jpeg"
    Image.fromarray(synthetic_xray(np.random.default_rng(1), 0, (64, 64))).save(image)
    probability = LiteModel(exported_model / INT8_FILE).predict_file(image).probability
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / INT8_FILE).write_bytes((exported_model / INT8_FILE).read_bytes())
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    # Thresholds just above and just below this image's probability (kept inside (0, 1), as the
    # metadata requires), so the test holds whatever the toy model outputs.
    thresholds = {min(probability + 0.01, 0.999), max(probability - 0.01, 0.001), 0.001, 0.999}
    labels = set()
    for threshold in sorted(thresholds):
        metadata["threshold"] = threshold
        (folder / METADATA_FILE).write_text(json.dumps(metadata))
        result = LiteModel(folder / INT8_FILE).predict_file(image)
        expected = "PNEUMONIA" if probability >= threshold else "NORMAL"
        assert (result.label, result.threshold) == (expected, threshold)
        labels.add(result.label)
    # Unless the output saturates at a uint8 end (0 or 255/256), both labels were seen.
    assert labels == {"NORMAL", "PNEUMONIA"} or not 0.001 < probability < 0.999


def test_missing_model_file_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model file not found"):
        LiteModel(tmp_path / "absent.tflite")


def test_model_without_metadata_gives_a_clear_error(exported_model, tmp_path):
    (tmp_path / INT8_FILE).write_bytes((exported_model / INT8_FILE).read_bytes())
    with pytest.raises(MetadataError, match="No metadata file 'pneumocnn.json'"):
        LiteModel(tmp_path / INT8_FILE)


def test_threshold_out_of_range_in_metadata_is_refused(exported_model, tmp_path):
    (tmp_path / INT8_FILE).write_bytes((exported_model / INT8_FILE).read_bytes())
    metadata = json.loads((exported_model / METADATA_FILE).read_text())
    metadata["threshold"] = 1.5
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(MetadataError, match="threshold"):
        LiteModel(tmp_path / INT8_FILE)


def test_corrupt_image_raises_load_error(exported_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageLoadError, match="bad.png"):
        LiteModel(exported_model / INT8_FILE).predict_file(bad)


def test_unreadable_metadata_is_named_with_the_fix(tmp_path):
    # The bug: "Cannot read metadata file" named neither the received value nor the fix.
    from pneumocnn.core.metadata import load_metadata

    path = tmp_path / METADATA_FILE
    path.write_text("{half a json")
    with pytest.raises(MetadataError, match="Cannot read metadata file") as error:
        load_metadata(path)
    assert f"Received: path='{path}'" in str(error.value)
    assert "python -m pneumocnn.export" in str(error.value)
