"""The MVTec AD layout (data=mvtec), its bad inputs, the threshold policies and pixel scores end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from neu_defects.core.checkpoint import load_module
from neu_defects.core.errors import UserError
from neu_defects.data.index import build_index
from neu_defects.data.masks import UNKNOWN
from neu_defects.data.mvtec import MVTecDataModule
from neu_defects.models.anomaly import AnomalyModule
from neu_defects.workflows.evaluate import evaluate
from neu_defects.workflows.train import train

from .conftest import compose_cfg


def test_index_reads_categories_masks_and_defect_types(mvtec_root):
    index = build_index(mvtec_root, category="tiles")
    assert index.layout == "mvtec" and index.root == mvtec_root / "tiles"
    assert index.class_names == ["good", "blob", "scratch", "stain"]
    by_kind = {}
    for s in index.samples:
        by_kind.setdefault((s.path.split("/")[0], index.class_names[s.label]), []).append(s)
    assert {k: len(v) for k, v in by_kind.items()} == {("train", "good"): 24, ("test", "good"): 6,
                                                        ("test", "blob"): 4, ("test", "scratch"): 6,
                                                        ("test", "stain"): 3}
    assert all(s.mask == f"ground_truth/scratch/{s.path.split('/')[-1][:-4]}_mask.png"
               for s in by_kind[("test", "scratch")])
    assert not any(s.mask for k in (("train", "good"), ("test", "good"), ("test", "stain")) for s in by_kind[k])
    # A category root passed directly needs no category.
    assert build_index(mvtec_root / "carpet").class_names == index.class_names


@pytest.mark.parametrize(("category", "expected"), [
    (None, r"holds 2 MVTec AD categories: pick one with data.category= \(carpet, tiles\)"),
    ("bottle", "data.category=bottle is not a category of .*: choose from carpet, tiles"),
])
def test_category_errors_list_the_categories(mvtec_root, category, expected):
    with pytest.raises(UserError, match=expected):
        build_index(mvtec_root, layout="mvtec", category=category)


def _copy(mvtec_root, tmp_path):
    target = tmp_path / "tiles"
    shutil.copytree(mvtec_root / "tiles", target)
    return target


def test_bad_mvtec_folders_name_the_file(mvtec_root, tmp_path):
    root = _copy(mvtec_root, tmp_path)
    with pytest.raises(UserError, match="has no train/good/ folder"):
        build_index(root / "test", layout="mvtec")
    (root / "ground_truth" / "scratch" / "002_mask.png").unlink()
    with pytest.raises(UserError, match=r"image .*test/scratch/002.png has no mask .*002_mask.png"):
        build_index(root)
    (root / "test" / "scratch" / "002.png").unlink()
    build_index(root)
    Image.new("L", (64, 64)).save(root / "ground_truth" / "blob" / "017_mask.png")
    with pytest.raises(UserError, match=r"mask .*017_mask.png has no image 017\.\* in .*test/blob"):
        build_index(root)
    Image.new("L", (32, 64)).save(root / "ground_truth" / "blob" / "017_mask.png")
    (root / "ground_truth" / "blob" / "017_mask.png").rename(root / "ground_truth" / "blob" / "001_mask.png")
    with pytest.raises(UserError, match=r"mask .*001_mask.png is \(32, 64\) but its image .*001.png is \(64, 64\)"):
        build_index(root)


def test_splits_train_on_normals_validate_on_normals_and_serve_masks(mvtec_root):
    dm = MVTecDataModule(root=str(mvtec_root), category="carpet", image_size=40, in_chans=3, seed=3,
                         val_fraction=0.25)
    dm.setup()
    names = dm.index.class_names
    for split in ("train", "val"):
        assert all(dm.index.samples[i].path.startswith("train/good/") for i in dm.dataset_indices[split])
        assert (dm.datasets[split].labels == 0).all()
    assert len(dm.datasets["val"]) == 6 and len(dm.datasets["train"]) == 18
    test = dm.datasets["test"]
    labels = np.array([dm.index.samples[i].label for i in dm.dataset_indices["test"]])
    np.testing.assert_array_equal(test.labels, labels != names.index("good"))
    x, _, mask = test[0]
    assert x.shape == (3, 40, 40) and mask.shape == (40, 40)
    # Nearest-neighbour resizing keeps masks binary; a type without masks is UNKNOWN, good is all zero.
    for i, label in enumerate(labels):
        values = set(np.unique(test.masks[i]).tolist())
        kind = names[label]
        assert values == ({UNKNOWN} if kind == "stain" else {0} if kind == "good" else {0, 1}), (kind, values)
    assert dm.mask_source == "masks"


def _module(fpr: float = 0.05) -> AnomalyModule:
    from neu_defects.models.nets.feature_gaussian import FeatureGaussian
    from neu_defects.models.nets.features import FrozenFeatures

    net = FeatureGaussian(FrozenFeatures(pretrained=False, layers=[1], cache_items=0))
    return AnomalyModule(net, threshold={"fpr": fpr})


class _Trainer:
    world_size = 1


def _validate(module, scores, targets) -> None:
    module._scores, module._targets = [torch.tensor(scores, dtype=torch.float64)], [torch.tensor(targets)]
    module.val_metrics.update(torch.tensor(scores).float(), torch.tensor(targets))
    module.log_dict = lambda *a, **k: None
    module._trainer = _Trainer()
    module.trainer.val_dataloaders = type("L", (), {"dataset": list(range(len(scores)))})()
    module.on_validation_epoch_end()


@pytest.mark.parametrize(("targets", "policy", "threshold"), [
    ([0, 0, 0, 1, 1], "f1", 8.0),
    ([0, 0, 0, 0, 0], "normal_quantile(fpr=0.05)", float(np.quantile([1, 2, 3, 8, 9], 0.95))),
    ([1, 1, 1, 1, 1], "max_score", 9.0),
])
def test_threshold_policy_follows_what_validation_holds(targets, policy, threshold):
    module = _module()
    module.net.trainable = True  # keep the fitted-net early stop out of a hand-fed epoch
    _validate(module, [1.0, 2.0, 3.0, 8.0, 9.0], targets)
    assert module.threshold_policy == policy
    assert float(module.threshold) == pytest.approx(threshold)


def test_threshold_fpr_must_be_a_share():
    with pytest.raises(ValueError, match=r"model.threshold.fpr=1.5"):
        _module(fpr=1.5)


@pytest.mark.slow
def test_mvtec_train_scores_pixels_and_eval_reproduces(mvtec_root, tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["model=feature_gaussian", "model.net.mode=patch", "model.image_size=64", "data=mvtec",
                 f"data.root={mvtec_root}", "data.category=tiles", "callbacks.progress_bar=null"]
    metrics, _ = train(compose_cfg("train", overrides, run_dir))
    written = json.loads((run_dir / "metrics.json").read_text())
    # The synthetic defects are plain to see: the maps find them (measured: image AUROC 1.0, pixel AUROC 0.978, AUPRO 0.907).
    assert written["test/image_auroc"] >= 0.9, written
    assert written["test/pixel_auroc"] >= 0.9 and written["test/pixel_aupro"] >= 0.8, written
    assert "test/box_pixel_auroc" not in written
    assert written["threshold_policy"] == "normal_quantile(fpr=0.01)"
    module = load_module(run_dir / "checkpoints" / "best.ckpt", task="anomaly")
    assert module.threshold_policy == written["threshold_policy"]
    assert float(module.threshold) == pytest.approx(written["test/threshold"])

    eval_cfg = compose_cfg("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "task=anomaly",
                                    "data=mvtec", f"data.root={mvtec_root}", "data.category=tiles",
                                    "callbacks.progress_bar=null"], tmp_path / "eval")
    again, _ = evaluate(eval_cfg)
    for key in ("test/image_auroc", "test/pixel_auroc", "test/pixel_aupro"):
        assert again[key] == pytest.approx(written[key], abs=1e-6), key
    assert again["threshold_policy"] == written["threshold_policy"]
