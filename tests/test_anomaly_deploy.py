"""Anomaly models outside the training loop: ONNX with score and map parity, predict's CSV and overlays."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from neu_defects.core.checkpoint import load_module
from neu_defects.core.errors import UserError
from neu_defects.deploy.anomaly import OnnxAnomaly, TorchAnomaly, anomaly_parity, anomaly_to_onnx
from neu_defects.deploy.backends import split_arrays
from neu_defects.deploy.detection import OnnxDetector
from neu_defects.workflows.builders import load_checkpoint_and_data
from neu_defects.workflows.export import export
from neu_defects.workflows.predict import predict
from neu_defects.workflows.train import train

from .conftest import REPO, compose_cfg

# The two the deployment is held to; the pixel autoencoder and the others export through the same code.
MODELS = {
    "patchcore": ["model=patchcore", "model.net.memory_bank_size=64"],
    "autoencoder": ["model=autoencoder", "trainer.max_epochs=1"],
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def mvtec_run(request, mvtec_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(request.param)
    overrides = [*MODELS[request.param], "model.image_size=64", "data=mvtec", f"data.root={mvtec_root}",
                 "data.category=tiles", "callbacks.progress_bar=null"]
    train(compose_cfg("train", overrides, run_dir))
    return request.param, run_dir / "checkpoints" / "best.ckpt"


def test_onnx_scores_and_maps_match_the_checkpoint(mvtec_run, mvtec_root, tmp_path):
    name, ckpt = mvtec_run
    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", "data=mvtec", f"data.root={mvtec_root}", "data.category=tiles"],
                      tmp_path)
    module, datamodule = load_checkpoint_and_data(cfg, task="anomaly")
    images, _ = split_arrays(datamodule, "test", 8)
    model = anomaly_to_onnx(module)
    onnx_model = OnnxAnomaly(model, "memory")
    parity = anomaly_parity(TorchAnomaly(module), onnx_model, images)
    assert parity["max_score_diff"] <= 1e-4 and parity["max_map_diff"] <= 1e-4, (name, parity)
    assert onnx_model.threshold == pytest.approx(float(module.threshold))
    with pytest.raises(UserError, match="holds a model of task 'anomaly', not 'detector'"):
        OnnxDetector(model, "memory")
    assert onnx_model.threshold_policy == module.threshold_policy == "normal_quantile(fpr=0.01)"


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_then_predict_flags_by_the_threshold_with_either_backend(mvtec_run, mvtec_root, tmp_path):
    """train (the fixture) -> test -> export -> predict, on the checkpoint and on its export."""
    name, ckpt = mvtec_run
    exported = tmp_path / "model.onnx"
    report = export(compose_cfg("export", [f"ckpt_path={ckpt}", f"output={exported}", "data=mvtec",
                                           f"data.root={mvtec_root}", "data.category=tiles"], tmp_path / "e"))
    assert report["parity"]["images"] == 19 and report["threshold_policy"] == "normal_quantile(fpr=0.01)"
    base = ["input=" + str(mvtec_root / "tiles" / "test"), "progress=false"]
    torch_csv, onnx_csv = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    predict(compose_cfg("predict", [f"ckpt_path={ckpt}", f"output={torch_csv}", f"annotate={tmp_path / 'maps'}",
                                    *base], tmp_path / "p1"))
    predict(compose_cfg("predict", [f"ckpt_path={exported}", f"output={onnx_csv}", *base], tmp_path / "p2"))
    by_torch, by_onnx = _rows(torch_csv), _rows(onnx_csv)
    assert list(by_torch[0]) == ["path", "score", "is_anomaly"] and len(by_torch) == 19
    threshold = float(load_module(ckpt, task="anomaly").threshold)
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a["path"] == b["path"] and abs(float(a["score"]) - float(b["score"])) <= 1e-4
        assert int(a["is_anomaly"]) == int(float(a["score"]) >= threshold)
    assert [r["is_anomaly"] for r in by_torch] == [r["is_anomaly"] for r in by_onnx]
    # Synthetic defects are obvious: most are flagged, few good images are (measured on every model).
    flagged = {k: np.mean([int(r["is_anomaly"]) for r in by_torch if f"/{k}/" in r["path"]])
               for k in ("good", "scratch", "blob")}
    assert flagged["good"] <= 0.5 and max(flagged["scratch"], flagged["blob"]) >= 0.5, (name, flagged)
    # Every image drawn, at its own place: good/000.png and blob/000.png both kept.
    assert len(list((tmp_path / "maps").rglob("*.png"))) == 19 and (tmp_path / "maps" / "blob" / "000.png").is_file()


def test_an_anomaly_reader_refuses_other_exports_and_missing_files(tmp_path):
    from neu_defects.deploy.anomaly import open_anomaly

    with pytest.raises(UserError, match="does not exist"):
        open_anomaly(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="holds a model of task 'classifier', not 'anomaly'"):
        open_anomaly(REPO / "tests" / "data" / "legacy_ff76304_cnn.ckpt")
