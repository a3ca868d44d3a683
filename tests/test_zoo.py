"""anomalib's models behind AnomalyModule: offline weights, PatchCore's bounded bank, GANomaly's two optimisers,
STFPM's student learning against the frozen offline teacher."""

from __future__ import annotations

import json

import pytest
import torch

from neu_defects.core.checkpoint import load_module
from neu_defects.core.errors import UserError
from neu_defects.deploy.anomaly import OnnxAnomaly, TorchAnomaly, anomaly_parity, anomaly_to_onnx
from neu_defects.models.nets.features import FrozenFeatures
from neu_defects.models.nets.patchcore import PatchCore
from neu_defects.models.nets.stfpm import STFPM
from neu_defects.models.weights import build_backbone
from neu_defects.workflows.train import train

from .conftest import compose_cfg


def test_patchcore_backbone_carries_the_offline_imagenet_weights():
    net = PatchCore(layers=[2, 3])
    reference = build_backbone("tf_efficientnet_lite0", pretrained=True).state_dict()
    extracted = net.model.feature_extractor.feature_extractor.state_dict()
    for name in ("conv_stem.weight", "blocks.3.0.conv_pw.weight"):
        torch.testing.assert_close(extracted[name], reference[name])
    assert net.mean == pytest.approx((0.5, 0.5, 0.5)) and net.in_chans == 3


def test_patchcore_on_mvtec_bounds_its_bank_and_scores_pixels(mvtec_root, tmp_path):
    run_dir = tmp_path / "patchcore"
    cfg = compose_cfg("train", ["model=patchcore", "model.image_size=64", "model.net.memory_bank_size=50",
                                "data=mvtec", f"data.root={mvtec_root}", "data.category=tiles",
                                "callbacks.progress_bar=null"], run_dir)
    train(cfg)
    written = json.loads((run_dir / "metrics.json").read_text())
    # 20 training images x 8 x 8 patches, 10 % of them is 128: the bound, 50, wins.
    assert written["fit/memory_bank_size"] == 50
    module = load_module(run_dir / "checkpoints" / "best.ckpt", task="anomaly")
    assert module.net.model.memory_bank.shape == (50, 40 + 112)
    assert written["test/image_auroc"] >= 0.9 and written["test/pixel_auroc"] >= 0.9, written


@pytest.mark.parametrize("score", ["latent", "states"])
def test_ganomaly_trains_generator_and_discriminator_and_reloads(fixture_root, tmp_path, score):
    run_dir = tmp_path / "ganomaly"
    cfg = compose_cfg("train", ["model=ganomaly", "model.image_size=32", "model.net.n_features=8",
                                "model.net.latent_vec_size=16", f"model.net.score={score}",
                                "data.normal_classes=[crazing]", f"data.root={fixture_root / 'neu-det'}",
                                "trainer.max_epochs=2", "callbacks.progress_bar=null"], run_dir)
    metrics, objects = train(cfg)
    module = objects["model"]
    assert not module.automatic_optimization
    assert len(module.trainer.optimizers) == 2
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/generator_loss", "train/discriminator_loss"} <= set(logged)
    assert 0.0 <= metrics["test/image_auroc"] <= 1.0 and 0.0 <= metrics["test/box_pixel_auroc"] <= 1.0
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    # The states' Gaussian travels in the checkpoint, fitted; latent-score checkpoints keep their old keys.
    assert ("net.state_mean" in best) == (score == "states")
    if score == "states":
        assert best["net.state_mean"].shape == (1, 3) and torch.all(best["net.state_mean"] != 0)
    reloaded = load_module(run_dir / "checkpoints" / "best.ckpt", task="anomaly")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        module.load_state_dict(best)
        torch.testing.assert_close(reloaded(x)[0], module.eval()(x)[0])
    parity = anomaly_parity(TorchAnomaly(reloaded), OnnxAnomaly(anomaly_to_onnx(reloaded), "memory"),
                            x.numpy())
    # Relative: two epochs on the fixture leave states so tight that its distances run into the tens, and the
    # precision scales float32's rounding with them (on NEU the export's absolute 1e-4 check holds).
    scale = max(1.0, float(reloaded(x)[0].abs().max()))
    assert parity["max_score_diff"] <= 1e-4 * scale and parity["max_map_diff"] <= 1e-4, parity


def test_ganomaly_states_score_is_the_mahalanobis_distance_to_the_nearest_normal_class():
    from neu_defects.models.nets.ganomaly import GANomaly

    torch.manual_seed(0)
    net = GANomaly(image_size=32, n_features=8, latent_vec_size=16, score="states")
    normals = torch.rand(20, 1, 32, 32) * 2 - 1
    with pytest.raises(RuntimeError, match="fitted after a training epoch"):
        net.eval()(normals)
    net.train()
    net.update(normals[:12])
    net.update(normals[12:])
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    running = [m.running_mean.clone() for m in norms]
    net.finalize()
    # Fitted in eval mode, so BatchNorm's running statistics are not moved, and train mode is given back.
    assert net.training and all(torch.equal(m.running_mean, r) for m, r in zip(norms, running, strict=True))
    net.eval()
    with torch.no_grad():
        states = net._states(*net._generate(normals)).double()
        score, amap = net(normals)
    assert net.state_mean.shape == (1, 3) and amap.shape == (20, 1, 32, 32)
    torch.testing.assert_close(net.state_mean[0], states.mean(0).float())
    # Mahalanobis distances under the maximum-likelihood covariance average the dimension over the fitted set.
    assert score.pow(2).mean().item() == pytest.approx(3.0, abs=1e-3)
    offset = states[0] - states.mean(0)
    expected = offset @ torch.linalg.inv(torch.cov(states.T, correction=0)) @ offset
    assert score[0].item() == pytest.approx(expected.sqrt().item(), rel=1e-3)

    # Two normal classes (the modes): a Gaussian each, fitted afresh, and an image is as far as the nearest.
    net.train()
    net.reset()
    modes = torch.arange(20) % 2
    net.update(normals, modes)
    net.finalize()
    net.eval()
    with torch.no_grad():
        score = net(normals)[0]
    assert net.state_mean.shape == (2, 3) and net.state_precision.shape == (2, 3, 3)
    distances = []
    for k in (0, 1):
        group = states[modes == k]
        torch.testing.assert_close(net.state_mean[k], group.mean(0).float())
        offsets = states - group.mean(0)
        precision = torch.linalg.pinv(torch.cov(group.T, correction=0), hermitian=True)
        distances.append(torch.einsum("ni,ij,nj->n", offsets, precision, offsets))
    torch.testing.assert_close(score.double(), torch.stack(distances).amin(0).sqrt(), rtol=1e-3, atol=1e-3)


def test_ganomaly_refuses_an_unknown_score():
    from neu_defects.models.nets.ganomaly import GANomaly

    with pytest.raises(UserError, match=r"model.net.score='recon': use 'latent' .* or 'states'"):
        GANomaly(image_size=32, score="recon")


def test_ganomaly_needs_a_power_of_two():
    from neu_defects.models.nets.ganomaly import GANomaly

    for size in (200, 16):
        with pytest.raises(ValueError, match=rf"model.image_size={size}: .*power of two of at least 32"):
            GANomaly(image_size=size)


def test_ganomaly_on_frozen_features_learns_only_its_gan_and_maps_at_input_size():
    from neu_defects.models.nets.ganomaly import GANomaly

    torch.manual_seed(0)
    features = FrozenFeatures(layers=[1, 2, 3], cache_items=0, embed_backend="eager")
    net = GANomaly(image_size=256, in_chans=3, n_features=8, latent_vec_size=16, features=features)
    assert net.in_chans == 3 and net.mean == features.mean and net.reconstruction(torch.rand(1, 3, 256, 256)) is None
    groups = {name: list(params) for name, params in net.parameter_groups().items()}
    optimizers = {name: torch.optim.Adam(params, lr=1e-3) for name, params in groups.items()}
    backbone = {k: v.clone() for k, v in features.state_dict().items()}
    generator = {k: v.clone() for k, v in net.model.generator.state_dict().items()}

    def step(name, loss, retain_graph):
        optimizers[name].zero_grad()
        loss.backward(retain_graph=retain_graph)
        optimizers[name].step()

    net.train()
    x = torch.randn(4, 3, 256, 256)
    losses = net.adversarial_step(x, step)
    assert all(torch.isfinite(v) for v in losses.values())
    # The generator sees the 176 feature channels of stages 1-3 on a 32 x 32 grid, not the pixels.
    assert net.model.generator.encoder1.input_layers[0].in_channels == 24 + 40 + 112
    assert all(torch.equal(features.state_dict()[k], v) for k, v in backbone.items())
    assert any(not torch.equal(net.model.generator.state_dict()[k], v) for k, v in generator.items())

    net.eval()
    with torch.no_grad():
        score, amap = net(x[:3])
    assert score.shape == (3,) and amap.shape == (3, 1, 256, 256) and torch.isfinite(amap).all()
    for size in (200, 128):  # 128 px gives a 16 x 16 grid: too small for the encoder
        with pytest.raises(ValueError, match=rf"model.image_size={size}: .*8 x a power of two of at least 32"):
            GANomaly(image_size=size, in_chans=3, features=features)


def test_stfpm_teacher_is_the_offline_lite0_and_only_the_student_learns():
    torch.manual_seed(0)
    net = STFPM(layers=[1, 2, 3])
    reference = build_backbone("tf_efficientnet_lite0", pretrained=True).state_dict()
    teacher = net.model.teacher_model.feature_extractor.state_dict()
    for name, tensor in teacher.items():
        torch.testing.assert_close(tensor, reference[name], msg=name)
    student = net.model.student_model.feature_extractor
    assert not torch.equal(student.conv_stem.weight, teacher["conv_stem.weight"])  # from scratch
    before_teacher = {k: v.clone() for k, v in teacher.items()}
    before_stem = student.conv_stem.weight.detach().clone()

    x = torch.randn(4, 3, 64, 64)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net.train()
    loss = net.training_loss(x)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and net.training_loss(x) < loss
    assert all(p.grad is None for p in net.model.teacher_model.parameters())
    assert student.conv_stem.weight.grad.abs().sum() > 0
    after_teacher = net.model.teacher_model.feature_extractor.state_dict()
    assert all(torch.equal(after_teacher[k], v) for k, v in before_teacher.items())
    assert not torch.equal(student.conv_stem.weight, before_stem)

    net.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        score, amap = net(x)
        single = net(x[1:2])
    assert score.shape == (3,) and amap.shape == (3, 1, 64, 64)
    torch.testing.assert_close(score, amap.amax(dim=(1, 2, 3)))
    # The ONNX export runs at batch 1 (deploy/anomaly.py): an image scores alike alone and in a batch.
    # The export itself (parity 1e-6) takes 18 s on one core, too slow for this tier.
    torch.testing.assert_close(single[0], score[1:2])
    torch.testing.assert_close(single[1], amap[1:2])


def test_stfpm_on_mvtec_trains_and_reloads(mvtec_root, tmp_path):
    run_dir = tmp_path / "stfpm"
    cfg = compose_cfg("train", ["model=stfpm", "model.image_size=64", "trainer.max_epochs=1", "data=mvtec",
                                f"data.root={mvtec_root}", "data.category=tiles", "callbacks.progress_bar=null"],
                      run_dir)
    metrics, objects = train(cfg)
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss" in logged
    assert 0.0 <= metrics["test/image_auroc"] <= 1.0 and 0.0 <= metrics["test/pixel_auroc"] <= 1.0
    module = objects["model"]
    module.load_state_dict(torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"])
    reloaded = load_module(run_dir / "checkpoints" / "best.ckpt", task="anomaly")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(reloaded(x), module.eval()(x), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("build", "layers", "key"), [
    (lambda layers: STFPM(layers=layers, pretrained=False), [1, 5], "model.net.layers"),
    (lambda layers: PatchCore(layers=layers, pretrained=False), [2, 2], "model.net.layers"),
    (lambda layers: FrozenFeatures(layers=layers, pretrained=False, cache_items=0), [], "model.net.features.layers"),
], ids=["stfpm-out-of-range", "patchcore-repeated", "features-empty"])
def test_feature_layers_outside_the_backbone_get_one_line_naming_the_stages(build, layers, key):
    stages = r"tf_efficientnet_lite0 has feature stages 0\.\.4 \(16, 24, 40, 112, 320 channels at strides 2, 4, 8, 16, 32\)"
    with pytest.raises(UserError, match=rf"{key}=\{list(layers)}: {stages}; list one or more, each at most once"):
        build(layers)
