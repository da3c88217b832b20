"""A smoke test of the benchmark at its smallest setting, so it cannot rot (no timing asserts)."""

import json

from pneumocnn import bench
from pneumocnn.benchmark.reference import tutorial_cnn


def test_quick_bench_measures_every_model_and_writes_json_and_markdown(exported_model, tmp_path):
    assert (
        bench.main(["--quick", "--model-dir", str(exported_model), "--output-dir", str(tmp_path)])
        == 0
    )
    report = json.loads((tmp_path / "bench.json").read_text())
    models = [row["model"] for row in report["inference"]]
    assert models == ["pneumocnn int8", "pneumocnn fp16", "pneumocnn .keras", "tutorial_cnn int8"]
    for row in report["inference"]:
        assert row["median_ms_1_thread"] > 0 and row["p95_ms_1_thread"] >= row["median_ms_1_thread"]
        assert row["file_bytes"] > 0 and row["peak_memory_mb"] > 0
    assert report["inference"][0]["size_ratio_to_pneumocnn_int8"] == 1.0
    assert report["inference"][3]["parameters"] > report["inference"][0]["parameters"]
    for key in (
        "pneumocnn_images_per_second",
        "pneumocnn_xla_images_per_second",
        "pneumocnn_bfloat16_images_per_second",
        "tutorial_cnn_images_per_second",
        "input_pipeline_images_per_second",
        "decode_each_epoch_images_per_second",
        "decode_each_epoch_parallel_images_per_second",
    ):
        assert report["training"][key] > 0
    assert "| pneumocnn int8 |" in (tmp_path / "bench.md").read_text()


def test_tutorial_cnn_matches_its_published_shape():
    model = tutorial_cnn()
    assert model.input_shape == (None, 180, 180, 3)
    assert model.output_shape == (None, 1)
    dense_units = [layer.units for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert dense_units == [512, 128, 64, 1]
