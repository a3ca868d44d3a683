"""The detector: nets and freezing, a run from train to eval, export and predict, and task mix-ups."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.data import NEU_CLASSES
from neu_defects.deploy.detection import box_parity
from neu_defects.models.nets.detector import DefectDetector
from neu_defects.workflows.evaluate import evaluate
from neu_defects.workflows.export import export
from neu_defects.workflows.predict import predict
from neu_defects.workflows.train import train

from .conftest import compose_cfg

# A short run: a frozen backbone, one epoch of a few batches.
FAST = ["model=fcos", "model.image_size=64", "model.net.trainable_stages=0", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4", "callbacks.progress_bar=null", "data.batch_size=4"]
# On NEU: 128 px, 40 batches of 8 through a frozen backbone. That run scored test mAP@0.5 0.095 on
# 2026-12-03, an untrained head about 1e-4: the floor says the run learnt boxes, with margin.
REAL = ["model=fcos", "model.image_size=128", "model.net.trainable_stages=0", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=40", "callbacks.progress_bar=null", "data.batch_size=8",
        "model.optimizer.lr=0.003"]
MAP_50_FLOOR = 0.05


def targets(count: int, size: int = 64) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]) * size / 64, "labels": torch.tensor([k % 6])}
            for k in range(count)]


@pytest.mark.parametrize("arch", ["fcos", "retinanet", "faster_rcnn"])
def test_each_detector_trains_and_detects(arch):
    torch.manual_seed(0)
    net = DefectDetector(arch, image_size=64, trainable_stages=1, fpn_channels=32)
    losses = net.train()(torch.rand(2, 3, 64, 64), targets(2))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in net.backbone.fpn.parameters())
    with torch.no_grad():
        out = net.eval()(torch.rand(2, 3, 64, 64))
    assert len(out) == 2
    for d in out:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
        # Labels come back as the dataset's class ids: torchvision's background 0 never leaks out.
        assert ((d["labels"] >= 0) & (d["labels"] < 6)).all()


def test_trainable_stages_freeze_the_shallow_blocks_and_their_statistics():
    frozen = DefectDetector("fcos", image_size=64, trainable_stages=0)
    assert not any(p.requires_grad for p in frozen.backbone.body.parameters())
    full = DefectDetector("fcos", image_size=64, trainable_stages=5)
    assert all(p.requires_grad for p in full.backbone.body.parameters())
    partial = DefectDetector("fcos", image_size=64, trainable_stages=2).train()
    body = partial.backbone.body
    # Five feature stages end at blocks 0, 1, 2, 4, 6: two trained stages are blocks 3..6.
    assert not any(p.requires_grad for p in body.conv_stem.parameters())
    assert [any(p.requires_grad for p in b.parameters()) for b in body.blocks] == [False] * 3 + [True] * 4
    # Frozen blocks keep ImageNet's batch-norm statistics: their norms stay in eval mode under train().
    norms = [[m.training for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)] for b in body.blocks]
    assert not any(norms[2]) and all(norms[3]) and not body.bn1.training
    # Any timm backbone: a ResNet's stages end at act1, layer1 .. layer4.
    resnet = DefectDetector("fcos", backbone="resnet18", pretrained=False, image_size=64, trainable_stages=2).train()
    trained = {n.split(".")[0] for n, p in resnet.backbone.body.named_parameters() if p.requires_grad}
    assert trained == {"layer3", "layer4"} and not resnet.backbone.body.layer2[1].bn2.training


def test_bad_detector_settings_name_the_value():
    with pytest.raises(UserError, match="model.net.arch='yolo' is not a detector: use one of fcos, retinanet"):
        DefectDetector("yolo", pretrained=False)
    with pytest.raises(UserError, match="model.trainable_stages=7: tf_efficientnet_lite0 has 5 feature stages"):
        DefectDetector("fcos", trainable_stages=7, pretrained=False)
    with pytest.raises(UserError, match=r"model.net.anchor_sizes=\[32\]: fcos has 5 pyramid levels"):
        DefectDetector("fcos", anchor_sizes=[32], pretrained=False)
    with pytest.raises(UserError, match=r"model.net.stages=\[2, 9\]: tf_efficientnet_lite0 has feature stages 0..4"):
        DefectDetector("fcos", stages=[2, 9], pretrained=False)


@pytest.fixture(scope="module")
def fixture_run(fixture_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("detector_run")
    metrics, objects = train(compose_cfg("train", [f"data.root={fixture_root / 'neu-det'}", *FAST], run_dir))
    return run_dir, metrics, objects


@pytest.fixture(scope="module")
def real_run(neu_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("detector_real")
    metrics, objects = train(compose_cfg("train", [f"data.root={neu_root}", *REAL], run_dir))
    return run_dir, metrics, objects


@pytest.mark.real_data
@pytest.mark.slow
def test_a_run_on_neu_learns_boxes_and_writes_its_reports(real_run):
    run_dir, metrics, _ = real_run
    assert metrics["test/map_50"] >= MAP_50_FLOOR
    written = json.loads((run_dir / "metrics.json").read_text())
    written = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/map_50", "test/map", "test/map_75", "test/mar_100", "fit/seconds",
                *(f"test/map_50/{c}" for c in NEU_CLASSES)):
        assert key in written, key
    assert all(0 <= v <= 1 for k, v in written.items() if k.startswith("test/"))
    # The class APs are what map_50 averages.
    assert np.isclose(np.mean([written[f"test/map_50/{c}"] for c in NEU_CLASSES]), written["test/map_50"])
    for name in ("detections.csv", "detection_confusion.csv", "plots/pr_curves.png",
                 "plots/detection_confusion.png", "detections/best_and_worst.png", "split.csv"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = pd.read_csv(run_dir / "detections.csv")
    assert list(rows.columns) == ["path", "label", "score", "x1", "y1", "x2", "y2"]
    assert set(rows["label"]) <= set(NEU_CLASSES)
    # Boxes in the original 200 px frame, not the 128 px model input.
    corners = rows[["x1", "y1", "x2", "y2"]].to_numpy()
    assert corners.min() >= 0 and corners.max() <= 200 + 1e-6 and corners.max() > 128
    assert set(rows["path"]) <= set(pd.read_csv(run_dir / "split.csv").query("split == 'test'")["path"])


@pytest.mark.real_data
@pytest.mark.slow
def test_eval_reproduces_the_test_metrics(neu_root, real_run, tmp_path):
    run_dir, metrics, _ = real_run
    cfg = compose_cfg("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "task=detector",
                               f"data.root={neu_root}", "callbacks.progress_bar=null"], tmp_path)
    again, _ = evaluate(cfg)
    assert again.keys() == {k for k in metrics if k.startswith("test/")}
    assert all(abs(again[k] - metrics[k]) <= 1e-6 for k in again)
    assert (tmp_path / "detections.csv").read_text() == (run_dir / "detections.csv").read_text()


@pytest.mark.real_data
@pytest.mark.slow
def test_export_and_predict_agree_box_for_box_on_neu(neu_root, real_run, tmp_path):
    run_dir, _, _ = real_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    report = export(compose_cfg("export", [f"ckpt_path={ckpt}", f"data.root={neu_root}",
                                           f"output={tmp_path / 'det.onnx'}", "parity.images=16"], tmp_path))
    parity = report["parity"]
    assert parity["count_mismatches"] == parity["label_mismatches"] == 0
    assert parity["max_box_diff"] <= 0.01 and parity["max_score_diff"] <= 1e-4
    images = tmp_path / "images"  # a few real images of each class
    images.mkdir()
    for cls in NEU_CLASSES:
        for n in (1, 2):
            (images / f"{cls}_{n}.jpg").write_bytes((neu_root / "IMAGES" / f"{cls}_{n}.jpg").read_bytes())
    outputs = {}
    for name, path in (("torch", ckpt), ("onnx", tmp_path / "det.onnx")):
        out = predict(compose_cfg("predict", [f"ckpt_path={path}", f"input={images}", "min_score=0.0",
                                              f"output={tmp_path / name}.csv", f"annotate={tmp_path / name}",
                                              "progress=false"], tmp_path))
        outputs[name] = out["rows"]
    assert len(outputs["torch"]) > 0

    def per_image(rows):
        return [{"boxes": g[["x1", "y1", "x2", "y2"]].to_numpy(), "scores": g["score"].to_numpy(),
                 "labels": g["label"].to_numpy()} for _, g in rows.groupby("path")]

    # The CSVs round corners to 0.01 px and scores to 1e-4: the tolerances of the rounding.
    csv_parity = box_parity(per_image(outputs["torch"]), per_image(outputs["onnx"]), 0.1)
    assert csv_parity["images"] == len(NEU_CLASSES) * 2
    assert csv_parity["count_mismatches"] == csv_parity["label_mismatches"] == 0
    assert csv_parity["max_box_diff"] <= 0.011 and csv_parity["max_score_diff"] <= 1.1e-4
    annotated = sorted((tmp_path / "onnx").glob("*.png"))
    assert len(annotated) == len(list(images.glob("*.jpg")))
    assert Image.open(annotated[0]).size == (320, 320)  # 200 px images drawn enlarged


@pytest.mark.slow
def test_classifier_and_detector_checkpoints_are_not_interchangeable(fixture_root, fixture_run, tmp_path):
    detector_ckpt = fixture_run[0] / "checkpoints" / "best.ckpt"
    classifier_dir = tmp_path / "classifier"
    train(compose_cfg("train", [f"data.root={fixture_root / 'neu-det'}", "trainer.max_epochs=1",
                                "callbacks.progress_bar=null", "callbacks.gradcam=null", "model.net.widths=[8,16]",
                                "model.image_size=32"], classifier_dir))
    classifier_ckpt = classifier_dir / "checkpoints" / "best.ckpt"
    data = f"data.root={fixture_root / 'neu-det'}"
    with pytest.raises(UserError, match=f"checkpoint {classifier_ckpt} holds a model of task 'classifier', not "
                                        "'detector': pass a detector checkpoint"):
        evaluate(compose_cfg("eval", [f"ckpt_path={classifier_ckpt}", "task=detector", data], tmp_path / "a"))
    with pytest.raises(UserError, match="holds a model of task 'detector', not 'classifier'"):
        evaluate(compose_cfg("eval", [f"ckpt_path={detector_ckpt}", "task=classifier", data], tmp_path / "b"))
    from neu_defects.workflows.cam_boxes import cam_boxes

    with pytest.raises(UserError, match="holds a model of task 'detector', not 'classifier'"):
        cam_boxes(compose_cfg("cam_boxes", [f"ckpt_path={detector_ckpt}", data], tmp_path / "c"))
    assert not any((tmp_path / d / "metrics.json").exists() for d in "abc")
