"""One-class protocols, anomaly nets and the AnomalyModule: fixtures for the maths, NEU for the floor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from neu_defects.core.checkpoint import load_module
from neu_defects.core.errors import UserError
from neu_defects.data.oneclass import OneClassDataModule
from neu_defects.models.metrics import anomaly_metrics, f1_threshold, normal_quantile, threshold_metrics
from neu_defects.models.nets.autoencoder import ConvAutoencoder, FeatureAutoencoder, ssim_map
from neu_defects.models.nets.feature_gaussian import FeatureGaussian
from neu_defects.models.nets.features import FrozenFeatures
from neu_defects.workflows.evaluate import evaluate
from neu_defects.workflows.train import train

from .conftest import compose_cfg


def test_oneclass_split_trains_on_normals_only(fixture_root):
    dm = OneClassDataModule(normal_classes=["crazing", "patches"], root=str(fixture_root / "neu-cls"), image_size=16)
    dm.setup()
    labels = np.array([s.label for s in dm.index.samples])
    train_classes = set(labels[dm.dataset_indices["train"]])
    assert train_classes == {0, 2}
    # Training targets name the normal class (its position in normal_classes), for per-class models.
    np.testing.assert_array_equal(dm.datasets["train"].labels,
                                  (labels[dm.dataset_indices["train"]] == 2).astype(np.int64))
    for split in ("val", "test"):
        targets = dm.datasets[split].labels
        classes = labels[dm.dataset_indices[split]]
        np.testing.assert_array_equal(targets, ~np.isin(classes, [0, 2]))
        assert 0 < targets.sum() < len(targets)


@pytest.mark.parametrize(("normal", "expected"), [
    (["crazing", "rust"], r"\['rust'\], which are not classes .* choose from \['crazing', 'inclusion'"),
    ([], "data.normal_classes is empty"),
    (["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"], "makes every class normal"),
])
def test_bad_normal_classes(fixture_root, normal, expected):
    dm = OneClassDataModule(normal_classes=normal, root=str(fixture_root / "neu-cls"), image_size=16)
    with pytest.raises(UserError, match=expected):
        dm.setup()


def test_f1_threshold_separates_and_fallback_is_explicit():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9])
    targets = torch.tensor([0, 0, 0, 1, 1])
    metrics = anomaly_metrics()
    metrics.update(scores, targets)
    t = f1_threshold(*metrics.compute()["pr_curve"])
    assert 0.3 < t <= float(scores[3])  # the lowest anomaly score, in the scores' float32
    assert threshold_metrics(scores, targets, t) == pytest.approx({"f1": 1.0, "precision": 1.0, "recall": 1.0})
    assert threshold_metrics(scores, targets, 0.85) == pytest.approx({"f1": 2 / 3, "precision": 1.0, "recall": 0.5})
    normals = torch.linspace(0, 1, 101)
    assert normal_quantile(normals, 0.01) == pytest.approx(0.99)
    assert normal_quantile(normals, 0.2) == pytest.approx(0.8)


def test_anomaly_metrics_rank_raw_scores_without_squashing_them():
    # Mahalanobis-sized scores: torchmetrics' default sigmoid would tie them all at 1.0 (AUROC 0.5).
    scores = torch.tensor([50.0, 52.0, 61.0, 70.0, 80.0, 90.0])
    targets = torch.tensor([0, 0, 1, 0, 1, 1])
    values = anomaly_metrics()(scores, targets)
    assert float(values["image_auroc"]) == pytest.approx(roc_auc_score(targets, scores))
    assert float(values["image_aupr"]) == pytest.approx(average_precision_score(targets, scores))
    precision, recall, thresholds = values["pr_curve"]
    assert f1_threshold(precision, recall, thresholds) == pytest.approx(61.0)


def test_conv_autoencoder_modes_and_ssim():
    net = ConvAutoencoder(image_size=32, widths=(8, 16), latent_dim=8, score="ssim")
    x = torch.rand(3, 1, 32, 32)
    assert net(x).shape == x.shape
    net.eval()
    score, amap = net(x)
    assert score.shape == (3,) and amap.shape == (3, 1, 32, 32)
    assert torch.allclose(ssim_map(x, x), torch.ones(3, 1, 32, 32), atol=1e-4)


def test_feature_autoencoder_weighs_channels_by_their_normal_error():
    torch.manual_seed(0)
    net = FeatureAutoencoder(FrozenFeatures(pretrained=False, layers=[1, 2], cache_items=0), hidden=8, bottleneck=4)
    batches = [torch.rand(4, 3, 32, 32) for _ in range(3)]
    net.train()
    net.reset()
    per_batch = []
    for x in batches:
        net.training_loss(x)
        with torch.no_grad():
            per_batch.append(net._channel_error(x).mean(dim=(0, 2, 3)))
    net.finalize()
    # The scale is the epoch's mean error per channel, and channels differ: otherwise it weighs nothing.
    torch.testing.assert_close(net.error_scale, torch.stack(per_batch).mean(0))
    assert net.error_scale.max() > 2 * net.error_scale.min()
    net.eval()
    x = batches[0]
    with torch.no_grad():
        expected = (net._channel_error(x) / net.error_scale.view(1, -1, 1, 1)).mean(dim=1, keepdim=True)
        torch.testing.assert_close(net._error(x), expected)
        net.normalize_error = False
        assert not torch.allclose(net._error(x), expected)


def test_feature_gaussian_scores_outliers_higher_and_round_trips():
    torch.manual_seed(0)
    features = FrozenFeatures(pretrained=False, layers=[1, 2], cache_items=0)
    net = FeatureGaussian(features, mode="patch", max_channels=16)
    normal = torch.randn(24, 3, 64, 64) * 0.1
    net.update(normal)
    net.finalize()
    scores, amap = net(torch.cat([normal[:4], normal[:4] + 3 * torch.randn(4, 3, 64, 64)]))
    assert amap.shape == (8, 1, 64, 64)
    assert scores[4:].min() > scores[:4].max()
    fresh = FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1, 2], cache_items=0), mode="patch",
                            max_channels=16)
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh(normal[:2])[0], net(normal[:2])[0])


def test_per_class_gaussian_flags_what_lies_between_the_normal_classes(monkeypatch):
    """Two normal classes far apart: one Gaussian around both holds the gap between them as normal;
    a Gaussian per class does not. Old checkpoints (one Gaussian, no class axis) still load."""
    torch.manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0], [-4.0, 0, 0]])
    normal = torch.cat([centres[m] + 0.3 * torch.randn(40, 3) for m in (0, 1)])[..., None, None]
    modes = torch.arange(2).repeat_interleave(40)
    probe = torch.zeros(1, 3, 1, 1)
    scores = {}
    for per_class in (False, True):
        net = FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1], cache_items=0), per_class=per_class)
        monkeypatch.setattr(net, "_embed", lambda x: x.mean(dim=(2, 3)))
        net.update(normal, modes)
        net.finalize()
        assert net.mu.shape == (1 + per_class, 3)
        scores[per_class] = (net(normal)[0], net(probe)[0])
    single_normal, single_probe = scores[False]
    per_class_normal, per_class_probe = scores[True]
    assert single_probe < single_normal.median()
    assert per_class_probe > 3 * per_class_normal.max()

    legacy = {k: v[0] if k in ("mu", "precision") else v for k, v in net.state_dict().items()}
    old = FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1], cache_items=0))
    old.load_state_dict(legacy)
    assert old.mu.shape == (1, 3)
    assert not FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1], cache_items=0), mode="patch").per_class
    with pytest.raises(UserError, match="per_class=true needs model.net.mode=pooled"):
        FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1], cache_items=0), mode="patch", per_class=True)


def test_feature_cache_keeps_pooled_vectors_apart_from_maps_within_its_byte_budget():
    """Pooled features come from the cache as the mean of the maps; the cache holds cache_items
    maps' worth of bytes, so it keeps many more pooled vectors than maps."""
    from neu_defects.models.nets import features as features_module

    features_module._CACHE.clear()
    features_module._CACHE.nbytes = 0
    net = FrozenFeatures(pretrained=False, layers=[1], cache_items=2)
    x = torch.rand(6, 3, 32, 32)
    maps = net(x)
    assert len(features_module._CACHE) == 2  # two maps fill the budget
    pooled = net(x, pooled=True)
    torch.testing.assert_close(pooled, maps.mean(dim=(2, 3)), rtol=1e-2, atol=1e-3)  # maps come back float16
    torch.testing.assert_close(pooled, net.compute(x).mean(dim=(2, 3)))
    assert sum(key[-2] for key in features_module._CACHE) == 6  # all six vectors kept, beside the newest map
    assert features_module._CACHE.nbytes == sum(v.nbytes for v in features_module._CACHE.values())
    twice = torch.rand(1, 3, 32, 32).repeat(2, 1, 1, 1)  # one batch, one image twice
    net(twice, pooled=True)
    assert features_module._CACHE.nbytes == sum(v.nbytes for v in features_module._CACHE.values())


def test_feature_gaussian_rotations_make_the_score_rotation_invariant():
    """With the four quarter turns averaged, an image and its turned copy have one embedding, so
    they score the same; without them they do not."""
    torch.manual_seed(0)
    net = FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1, 2], cache_items=0), rotations=[0, 1, 2, 3])
    normal = torch.rand(12, 3, 32, 32)
    net.update(normal)
    net.finalize()
    probe = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(net(torch.rot90(probe, 1, dims=(2, 3)))[0], net(probe)[0], rtol=1e-4, atol=1e-4)
    unturned = FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1, 2], cache_items=0))
    unturned.load_state_dict(net.state_dict())
    assert not torch.allclose(unturned(torch.rot90(probe, 1, dims=(2, 3)))[0], unturned(probe)[0], rtol=1e-3)
    for bad in ([], [0, 4], [1, 1]):
        with pytest.raises(UserError, match="model.net.rotations"):
            FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1], cache_items=0), rotations=bad)
    with pytest.raises(UserError, match="needs model.net.mode=pooled"):
        FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1], cache_items=0), mode="patch", rotations=[0, 1])


@pytest.mark.real_data
@pytest.mark.slow
def test_feature_gaussian_one_vs_rest_on_real_neu(neu_root, tmp_path):
    """Pretrained-feature Gaussian, pitted_surface normal: measured 0.99+; the floor is 0.95."""
    run_dir = tmp_path / "fg"
    cfg = compose_cfg("train", ["model=feature_gaussian", "data.normal_classes=[pitted_surface]",
                                f"data.root={neu_root}", "callbacks.progress_bar=null", "callbacks.gradcam=null"],
                      run_dir)
    metrics, _ = train(cfg)
    assert metrics["test/image_auroc"] >= 0.95, metrics
    written = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/image_auroc", "test/image_aupr", "test/f1", "test/precision", "test/recall"} <= set(written)
    # NEU-DET's boxes are coarse masks. The pooled Gaussian's map is one value per image, so the
    # normal texture around an anomalous image's boxes scores as high as the boxes: its box pixel
    # AUROC is little above chance (measured 0.589) although its image AUROC is 0.999.
    assert 0.55 <= written["test/box_pixel_auroc"] <= 1.0, written
    assert written["threshold_policy"] == "f1"
    for name in ("plots/score_histogram.png", "plots/roc.png", "anomaly_maps/best_and_worst.png", "split.csv"):
        assert (run_dir / name).is_file(), name
    module = load_module(run_dir / "checkpoints" / "best.ckpt", task="anomaly")
    assert torch.isfinite(module.threshold)

    eval_cfg = compose_cfg("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"data.root={neu_root}",
                                    "task=anomaly", "callbacks.progress_bar=null"], tmp_path / "eval")
    eval_metrics, _ = evaluate(eval_cfg)
    assert eval_metrics["test/image_auroc"] == pytest.approx(written["test/image_auroc"], abs=1e-6)

    wrong = compose_cfg("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"data.root={neu_root}",
                                 "task=classifier"], tmp_path / "wrong")
    with pytest.raises(UserError, match="holds a model of task 'anomaly', not 'classifier'"):
        evaluate(wrong)


def test_latent_isolation_forest_fits_on_codes_and_refits_from_its_checkpoint():
    from neu_defects.models.nets.latent_iforest import LatentIsolationForest

    torch.manual_seed(0)
    ae = ConvAutoencoder(image_size=32, widths=(8, 16), latent_dim=4)
    net = LatentIsolationForest(ae, n_estimators=50, seed=0)
    normal = torch.randn(40, 1, 32, 32) * 0.1
    net.reset()
    net.update(normal)
    net.finalize()
    assert net.latents.shape == (40, 4)
    net.eval()
    scores, amap = net(torch.cat([normal[:5], normal[:5] + 5]))
    assert amap.shape == (10, 1, 32, 32)
    assert scores[5:].mean() > scores[:5].mean()
    fresh = LatentIsolationForest(ConvAutoencoder(image_size=32, widths=(8, 16), latent_dim=4), n_estimators=50,
                                  seed=0).eval()
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh(normal[:3])[0], net(normal[:3])[0])


def test_isolation_forest_config_trains_through_the_entry_point(fixture_root, tmp_path):
    run_dir = tmp_path / "iforest"
    cfg = compose_cfg("train", ["model=ae_iforest", "data.normal_classes=[crazing]", f"data.root={fixture_root / 'neu-cls'}",
                                "model.image_size=32", "model.net.autoencoder.widths=[8,16]", "model.net.n_estimators=20",
                                "trainer.max_epochs=1", "callbacks.progress_bar=null", "callbacks.gradcam=null"], run_dir)
    metrics, _ = train(cfg)
    assert 0.0 <= metrics["test/image_auroc"] <= 1.0
    # The forest was fitted on one latent code per normal training image, and the checkpoint carries them.
    train_rows = [line for line in (run_dir / "split.csv").read_text().splitlines() if line.endswith(",crazing,train")]
    module = load_module(run_dir / "checkpoints" / "best.ckpt", task="anomaly")
    assert module.net.latents.shape == (len(train_rows), 128)


def test_greedy_coreset_covers_every_cluster_and_picks_distinct_rows():
    from neu_defects.models.nets.patchcore import greedy_coreset

    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    patches = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centres])
    chosen = greedy_coreset(patches, 4, seed=3)
    assert len(set(chosen.tolist())) == 4
    # Farthest-first from any start lands once in each of four far-apart clusters.
    assert sorted((chosen // 50).tolist()) == [0, 1, 2, 3]
    # Every patch lies within the cluster spread of a chosen one: the coreset's covering radius.
    radius = torch.cdist(patches, patches[chosen]).min(1).values.max()
    assert radius < 1.0


def test_greedy_coreset_on_a_pool_and_a_projection_still_spans_the_clusters():
    from neu_defects.models.nets.patchcore import greedy_coreset

    torch.manual_seed(0)
    centres = 20 * torch.eye(8)  # eight clusters, far apart in 8 dimensions
    patches = torch.cat([c + 0.1 * torch.randn(100, 8) for c in centres])
    chosen = greedy_coreset(patches, 8, seed=1, pool=200, projection=4)
    assert chosen.max() < len(patches) and len(set(chosen.tolist())) == 8
    assert sorted((chosen // 100).tolist()) == list(range(8))
