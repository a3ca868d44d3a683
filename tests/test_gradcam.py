"""Grad-CAM: maps under inference mode and frozen nets, target layers, the callback in real runs, explain."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, RefineCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from neu_defects.core.errors import UserError
from neu_defects.models.nets import BackboneClassifier, DefectCNN
from neu_defects.saliency.cam import (
    METHODS,
    ORIENTED,
    CAMExplainer,
    CAMSetting,
    cam_grid,
    raw_gradcam,
    thin_2d_projection,
)
from neu_defects.saliency.layers import candidate_layers, resolve_layer
from neu_defects.saliency.settings import resolve_setting

from .conftest import compose_cfg


def small_cnn() -> DefectCNN:
    torch.manual_seed(0)
    return DefectCNN(num_classes=3, in_chans=1, widths=(8, 16, 16))


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def test_maps_inside_inference_mode_leave_the_net_as_it_was():
    net = small_cnn().train()
    net.features[0].eval()
    net.features[0].requires_grad_(False)
    sentinel = torch.ones_like(net.head[-1].weight)
    net.head[-1].weight.grad = sentinel
    explainer = CAMExplainer(net, "features.2", "gradcam")
    with torch.inference_mode():
        maps, logits = explainer(images(), [0, 1, 2, 0])
    assert maps.shape == (4, 32, 32) and logits.shape == (4, 3)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    assert net.training and not net.features[0].training and net.features[1].training
    assert not any(p.requires_grad for p in net.features[0].parameters())
    assert all(p.requires_grad for p in net.features[1].parameters())
    assert net.head[-1].weight.grad is sentinel and net.features[1][0].weight.grad is None
    assert not net.features[2]._forward_hooks


def test_frozen_net_gets_the_same_maps():
    net = small_cnn().eval()
    x = images()
    trainable, _ = CAMExplainer(net, "features.2", "layercam")(x, [0, 1, 2, 0])
    net.requires_grad_(False)
    frozen, _ = CAMExplainer(net, "features.2", "layercam")(x, [0, 1, 2, 0])
    np.testing.assert_array_equal(trainable, frozen)
    assert frozen.max() > 0


@pytest.mark.parametrize(("aug", "eigen"), [(False, False), (True, False), (False, True)])
def test_shared_pass_grid_equals_the_library_per_method(aug, eigen):
    net = small_cnn().eval()
    x, targets = images(), [2, 0, 1, 1]
    layers = ["features.2", "features.1"]
    library_methods = [m for m in METHODS if m not in ORIENTED]
    grid, logits = cam_grid(net, x, targets, layers, library_methods, aug, eigen)
    torch.testing.assert_close(logits, net(x))
    cam_targets = [ClassifierOutputTarget(t) for t in targets]
    for (method, layer), maps in grid.items():
        with METHODS[method](model=net, target_layers=[net.get_submodule(layer)]) as cam:
            reference = cam(input_tensor=x, targets=cam_targets, aug_smooth=aug, eigen_smooth=eigen)
        np.testing.assert_allclose(maps, reference, atol=1e-5, err_msg=f"{method} on {layer}")


def test_fused_layers_are_refinecam():
    net = small_cnn().eval()
    x, targets = images(), [0, 1, 2, 0]
    fused, _ = CAMExplainer(net, "features.1+features.2", "gradcam")(x, targets)
    refine = RefineCAM(net, [net.features[1], net.features[2]], base_method=GradCAM)
    np.testing.assert_allclose(fused, refine(x, [ClassifierOutputTarget(t) for t in targets]), atol=1e-5)
    assert (fused.max(axis=(1, 2)) > 0.99).sum() >= 2
    assert resolve_layer(net, "net.features.2+features.1+features.2", 1, 32) == "features.1+features.2"
    with pytest.raises(UserError, match="features.7"):
        resolve_layer(net, "features.2+features.7", 1, 32)


def test_oriented_eigencam_agrees_with_the_class_evidence():
    net = small_cnn().eval()
    x, targets = images(8), [0, 1, 2, 0, 1, 2, 0, 1]
    maps, _ = CAMExplainer(net, "features.1", "oriented-eigencam")(x, targets)
    with torch.no_grad():
        fine = net.features[1](net.pool(net.features[0](x)))
        last = net.features[2](net.pool(fine)).requires_grad_(True)
    # The evidence: Grad-CAM of the true class on the last block, before its ReLU.
    grads = torch.autograd.grad(net.head(last).gather(1, torch.tensor(targets)[:, None]).sum(), last)[0]
    evidence = raw_gradcam(last.detach().numpy(), grads.numpy())
    signs = []
    for cam_map, projection, reference in zip(maps, thin_2d_projection(fine.numpy()), evidence, strict=True):
        coarse = cv2.resize(reference, projection.shape[::-1], interpolation=cv2.INTER_AREA)
        sign = 1.0 if (projection * coarse).sum() >= 0 else -1.0
        # BaseCAM's scaling: to [0, 1] at the map's size, then again after the resize to the input.
        expected = scale_cam_image(scale_cam_image(np.maximum(sign * projection, 0)[None], (32, 32)))[0]
        np.testing.assert_allclose(cam_map, expected, atol=1e-5)
        signs.append(sign)
    assert set(signs) == {1.0, -1.0}, "the case needs both orientations to test anything"


def test_thin_projection_equals_the_library():
    activations = np.random.default_rng(0).normal(size=(3, 24, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(thin_2d_projection(activations), get_2d_projection(activations), atol=1e-5)


def test_target_layers_for_the_cnn_and_a_timm_backbone():
    cnn = small_cnn()
    assert candidate_layers(cnn, 1, 32) == ["features.2", "features.1", "features.0"]
    assert resolve_layer(cnn, "net.features.1", 1, 32) == "features.1"
    assert resolve_setting(cnn, 1, 32).layer in candidate_layers(cnn, 1, 32)
    with pytest.raises(UserError, match="features.2"):
        resolve_layer(cnn, "features.9", 1, 32)

    # A net of no studied family: Grad-CAM on its last block, smoothing off.
    assert resolve_setting(cnn, 1, 32) == CAMSetting("gradcam", "features.2")
    assert resolve_setting(DefectCNN(), 1, 64) == CAMSetting("gradcam", "features.2+features.3", eigen_smooth=True)
    assert resolve_setting(DefectCNN(), 1, 64, method="layercam") == CAMSetting("layercam", "features.2+features.3")

    lite0 = BackboneClassifier("tf_efficientnet_lite0", num_classes=3, pretrained=False).eval()
    assert candidate_layers(lite0, 3, 64) == ["backbone.bn2", "backbone.blocks.4", "backbone.blocks.2"]
    setting = resolve_setting(lite0, 3, 64, layer="auto", eigen_smooth=True)
    assert setting == CAMSetting("oriented-eigencam", "backbone.blocks.2+backbone.blocks.4+backbone.blocks.5"
                                 "+backbone.blocks.6", eigen_smooth=True)
    lite0.backbone.requires_grad_(False)
    with torch.inference_mode():
        maps, _ = CAMExplainer(lite0, "backbone.bn2", "gradcam++")(torch.randn(2, 3, 64, 64), [0, 1])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


def train_run(tmp_path, overrides):
    from neu_defects.workflows.train import train

    run_dir = tmp_path / "run"
    cfg = compose_cfg("train", ["experiment=seed000_cnn", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                                "trainer.enable_model_summary=false", *overrides], run_dir)
    metrics, _ = train(cfg)
    return run_dir, metrics


@pytest.fixture(scope="module")
def real_run(neu_root, tmp_path_factory):
    """One short real run with the default callbacks and loggers (validation panel every epoch)."""
    return train_run(tmp_path_factory.mktemp("gradcam_real"), [
        f"data.root={neu_root}", "+trainer.limit_train_batches=4",
        "callbacks.gradcam.every_n_epochs=1"])


@pytest.mark.real_data
@pytest.mark.slow
def test_callback_writes_grids_metrics_and_tensorboard_images(real_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics = real_run
    for name in ("gradcam/val_epoch001.png", "gradcam/test_correct.png", "gradcam/test_misclassified.png",
                 "plots/cam_localisation.png"):
        assert (run_dir / name).stat().st_size > 1000, name
    written = json.loads((run_dir / "metrics.json").read_text())
    classes = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    for score in ("pointing_game", "energy_in_box", "iou", "chance"):
        assert 0 <= written[f"test/cam_{score}"] <= 1
        assert all(f"test/cam_{score}/{c}" in written for c in classes)
    assert written["test/cam_chance"] == pytest.approx(0.40, abs=0.03)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"gradcam/val", "gradcam/test_correct", "gradcam/test_misclassified"} <= set(events.Tags()["images"])


@pytest.mark.real_data
@pytest.mark.slow
def test_explain_any_image_files_and_lists_unreadable_ones(real_run, neu_root, tmp_path):
    from neu_defects.workflows.explain import explain

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(neu_root / "IMAGES" / "scratches_1.jpg", inputs)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(inputs / "foreign.png")
    (inputs / "broken.jpg").write_bytes(b"not an image")
    run_dir, _ = real_run
    out = tmp_path / "explain"
    cfg = compose_cfg("explain", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"input={inputs}",
                                  "method=gradcam++"], out)
    result = explain(cfg)
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in result["explained"]) == ["foreign.png", "scratches_1.jpg"]
    assert Image.open(out / "overlays" / "foreign.png").size == (120, 90)
    assert Image.open(out / "overlays" / "scratches_1.png").size == (200, 200)
    assert (out / "contact_sheet.png").is_file() and (out / "predictions.csv").is_file()
    assert "broken.jpg" in (out / "unreadable.txt").read_text()


@pytest.mark.real_data
@pytest.mark.slow
def test_localisation_study_scores_methods_and_fused_layers(real_run, tmp_path):
    import csv

    from neu_defects.workflows.cam_study import run_study

    run_dir, _ = real_run
    out = tmp_path / "study"
    cfg = compose_cfg("cam_study", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "study.smoothing=[none]",
                                    "study.methods=[gradcam,oriented-eigencam]"], out)
    rows = run_study(cfg)
    layers = ["features.3", "features.2", "features.1", "features.2+features.3", "features.1+features.3",
              "features.1+features.2+features.3"]
    assert sorted((r["method"], r["layer"]) for r in rows[:-1]) == sorted(
        (m, layer) for m in ("gradcam", "oriented-eigencam") for layer in layers)
    scores = [r[f"cam_{s}"] for r in rows for s in ("pointing_game", "energy_in_box", "iou")]
    assert all(0 <= v <= 1 for v in scores) and len(set(scores)) > 10
    assert rows[-1]["cam_pointing_game"] == pytest.approx(0.40, abs=0.03)
    with open(out / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    table = (out / "table.md").read_text()
    assert "chance (uniform map or point)" in table and "test accuracy" in table
    assert (out / "cam_localisation_best.png").stat().st_size > 1000


def test_callback_off_on_fixture_data(fixture_root, tmp_path):
    run_dir, metrics = train_run(tmp_path, [f"data.root={fixture_root / 'neu-det'}", "model.image_size=32",
                                            "callbacks.gradcam=null"])
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "gradcam").exists()
    assert not any(k.startswith("test/cam_") for k in metrics)
