"""The benchmark's speed section end to end on the fixture data: every figure is measured and reported."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from neu_defects.workflows.benchmark import benchmark

from .conftest import CONF


@pytest.mark.slow
def test_speed_section_measures_every_backend_layout_and_run(fixture_root, tmp_path):
    overrides = [
        "models=null", f"data_root={fixture_root / 'neu-det'}", f"paths.output_dir={tmp_path}",
        "speed.embedding.images=8", "speed.embedding.batch_size=4", "speed.embedding.repeats=1",
        "speed.training.models.lite0_finetune=null",
        "speed.training.models.cnn=['experiment=seed000_cnn','model.image_size=32','model.net.widths=[8,16]','data.batch_size=8']",
        "speed.training.batches=2", "speed.training.warmup_batches=1", "speed.training.rounds=1",
        "speed.time_to_accuracy.runs.lite0_frozen=null", "speed.time_to_accuracy.runs.lite0_frozen_eager=null",
        "speed.time_to_accuracy.runs.seed000_cnn=['experiment=seed000_cnn','trainer.max_epochs=1',"
        "'model.image_size=32','callbacks.gradcam=null']",
        "speed.detector_latency.overrides=['experiment=detection','model.image_size=64']",
        "speed.detector_latency.warmup=1", "speed.detector_latency.runs=3",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        report = benchmark(compose(config_name="benchmark", overrides=overrides))
    GlobalHydra.instance().clear()
    speed = report["speed"]
    rates = speed["embedding"]["images_per_s"]
    assert set(rates) == {"eager NCHW", "eager channels-last", "FrozenRunner (ONNX Runtime)", "plain ONNX Runtime"}
    assert all(v > 0 for v in rates.values())
    assert speed["cache_build"]["cache_over_plain_ort"] > 0
    training = speed["training"]["cnn"]["images_per_s"]
    assert all(v > 0 and not math.isnan(v) for v in training.values())
    run = speed["time_to_accuracy"]["seed000_cnn"]
    assert 0 <= run["test_acc"] <= 1 and run["reached"] == (run["test_acc"] >= 0.99)
    bars = {b["bar"] for b in report["bars"]}
    assert "cache build / plain ONNX Runtime >= 0.8" in bars and "data / training >= 3.0" in bars
    detector = speed["detector_latency"]
    assert all(detector["latency"][k]["median_ms"] > 0 for k in ("torch eager", "ORT fp32"))
    assert detector["parity"]["count_mismatches"] == detector["parity"]["label_mismatches"] == 0
    text = (tmp_path / "benchmark.md").read_text()
    assert "## Frozen embedding" in text and "## Time to accuracy" in text and "## Detector latency" in text
