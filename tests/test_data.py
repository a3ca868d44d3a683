"""Index, splits, decoding and the data module, on generated fixtures and on the real NEU set."""

from __future__ import annotations

import collections
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.data import NEU_CLASSES, NEUDataModule, build_index
from neu_defects.data.cache import load_images
from neu_defects.data.io import decode_image
from neu_defects.data.splits import assign_splits, parse_split, read_split_csv, write_split_csv
from neu_defects.data.transforms import build_transform

from .conftest import FIXTURE_CLASSES, PER_CLASS, toy_labels


@pytest.mark.parametrize("layout", ["neu-det", "neu-cls"])
def test_neu_layouts_are_detected_with_neu_class_order(fixture_root, layout):
    index = build_index(fixture_root / layout)
    assert index.layout == layout
    assert index.class_names == list(FIXTURE_CLASSES)
    counts = collections.Counter(s.label for s in index.samples)
    extra = 1 if layout == "neu-det" else 0  # the duplicate patches_99
    assert counts == {i: PER_CLASS + (extra if c == "patches" else 0) for i, c in enumerate(FIXTURE_CLASSES)}


def test_neu_det_keeps_voc_boxes(fixture_root):
    index = build_index(fixture_root / "neu-det")
    assert index.has_boxes
    # VOC's 1-based inclusive 4..24 is the continuous span [3, 24]; each box keeps its class.
    assert all(s.boxes == ((3.0, 3.0, 24.0, 30.0),) and s.box_labels == (s.label,) for s in index.samples)


def test_class_folders_take_any_names(fixture_root):
    index = build_index(fixture_root / "folders")
    assert index.layout == "folders"
    assert index.class_names == ["dent", "good", "scratch"]
    assert not index.has_boxes


def test_layout_can_be_forced(fixture_root):
    assert build_index(fixture_root / "neu-cls", layout="neu-cls").layout == "neu-cls"
    with pytest.raises(UserError, match="data.layout='coco'"):
        build_index(fixture_root / "neu-cls", layout="coco")


@pytest.mark.parametrize(("spec", "expected"), [
    ("70_15_15", (0.7, 0.15, 0.15)),
    (701515, (0.7, 0.15, 0.15)),  # what Hydra's override grammar makes of 70_15_15
    ("80_20", (0.8, 0.2)),
    (8020, (0.8, 0.2)),
])
def test_parse_split(spec, expected):
    assert parse_split(spec) == pytest.approx(expected)


@pytest.mark.parametrize("spec", ["70_20", "abc", 7015, "100"])
def test_parse_split_rejects_bad_specs(spec):
    with pytest.raises(UserError, match="data.split="):
        parse_split(spec)


def test_three_way_split_is_stratified_and_deterministic():
    labels, groups = toy_labels()
    a = assign_splits(labels, groups, split="70_15_15", seed=3)
    assert a == assign_splits(labels, groups, split="70_15_15", seed=3)
    assert a != assign_splits(labels, groups, split="70_15_15", seed=4)
    for c in range(3):
        per = collections.Counter(s for s, y in zip(a, labels, strict=True) if y == c)
        assert per == {"train": 14, "val": 3, "test": 3}


def test_two_way_split_carves_validation_from_train():
    labels, groups = toy_labels(per_class=50)
    a = assign_splits(labels, groups, split="80_20", seed=0, val_fraction=0.1)
    assert collections.Counter(a) == {"train": 3 * 36, "val": 3 * 4, "test": 3 * 10}


def test_folds_partition_the_data():
    labels, groups = toy_labels(per_class=25)
    tests = [assign_splits(labels, groups, fold=k, folds=5, seed=1) for k in range(5)]
    in_test = np.array([[s == "test" for s in a] for a in tests])
    assert (in_test.sum(axis=0) == 1).all()
    assert all(collections.Counter(a)["test"] == 15 for a in tests)
    with pytest.raises(UserError, match="data.fold=5"):
        assign_splits(labels, groups, fold=5, folds=5)


def test_duplicates_stay_on_one_side():
    labels = [0] * 30
    groups = [f"g{i}" for i in range(28)] + ["g0", "g1"]  # samples 28, 29 copy samples 0, 1
    for seed in range(20):
        a = assign_splits(labels, groups, split="70_15_15", seed=seed)
        assert a[0] == a[28] and a[1] == a[29]


def test_split_csv_round_trip_and_errors(fixture_root, tmp_path):
    index = build_index(fixture_root / "neu-cls")
    a = assign_splits([s.label for s in index.samples], [s.path for s in index.samples], seed=0)
    path = write_split_csv(tmp_path / "split.csv", index, a)
    assert read_split_csv(path, index) == a
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\nCr_1.bmp,scratches,train\n")
    with pytest.raises(UserError, match="labelled 'scratches'"):
        read_split_csv(bad, index)
    with pytest.raises(UserError, match="does not exist"):
        read_split_csv(tmp_path / "missing.csv", index)


def test_decode_gray_rgb_and_16_bit(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert decode_image(tmp_path / "g.png", 1).shape == (16, 16, 1)
    rgb = decode_image(tmp_path / "g.png", 3)
    assert rgb.shape == (16, 16, 3) and (rgb[..., 0] == gray).all()
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "g16.png", 1)[..., 0], gray)


def test_augmentation_replays_per_seed_epoch_and_index(fixture_root):
    import albumentations as A

    dm = NEUDataModule(root=str(fixture_root / "neu-cls"), image_size=32, seed=0,
                       augment={"rot": A.Affine(rotate=(-40, 40), p=1.0), "off": None})
    dm.setup()
    train = dm.datasets["train"]
    first = train[2][0]
    assert torch.equal(first, train[2][0])
    train.epoch = 1
    assert not torch.equal(first, train[2][0])
    plain = build_transform((0.5,), (0.5,))
    assert plain(image=train.images[2])["image"].shape == (1, 32, 32)


def test_datamodule_serves_the_models_input(fixture_root, tmp_path):
    dm = NEUDataModule(root=str(fixture_root / "neu-det"), image_size=40, in_chans=3, mean=(0.5,) * 3,
                       std=(0.5,) * 3, batch_size=4, output_dir=str(tmp_path))
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 40, 40) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert (tmp_path / "split.csv").is_file()
    total = sum(len(dm.datasets[s]) for s in ("train", "val", "test"))
    assert total == len(dm.index.samples)


@pytest.mark.real_data
def test_real_neu_index(neu_root):
    index = build_index(neu_root)
    assert index.layout == "neu-det"
    assert index.class_names == list(NEU_CLASSES)
    assert collections.Counter(s.label for s in index.samples) == dict.fromkeys(range(6), 300)
    boxes = [b for s in index.samples for b in s.boxes]
    assert len(boxes) == sum(len(s.box_labels) for s in index.samples) == 4189
    # Boxes carry their own class: 71 scratches images hold inclusion boxes, for instance.
    assert sum(index.class_names[b] == "inclusion" for s in index.samples for b in s.box_labels
               if index.class_names[s.label] == "scratches") == 71
    assert all(0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200 for x0, y0, x1, y1 in boxes)


@pytest.mark.real_data
def test_real_duplicate_pair_never_straddles_a_split(neu_root):
    dm = NEUDataModule(root=str(neu_root), image_size=16)
    dm.setup()
    paths = [s.path for s in dm.index.samples]
    a, b = paths.index("IMAGES/patches_101.jpg"), paths.index("IMAGES/patches_105.jpg")
    from neu_defects.data.cache import load_images

    images, hashes = load_images(dm.index, 1, 16)
    labels = [s.label for s in dm.index.samples]
    assert hashes[a] == hashes[b]
    assert len(set(hashes)) == 1799
    for seed in range(10):
        for kwargs in ({"split": "70_15_15"}, {"split": "80_20"}, {"fold": seed % 5, "folds": 5}):
            assignment = assign_splits(labels, hashes, seed=seed, **kwargs)
            assert assignment[a] == assignment[b]


def test_decoded_images_are_kept_for_the_next_job_until_a_file_changes(fixture_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fixture_root / "neu-cls", root)
    index = build_index(root)
    first, hashes = load_images(index, 1, 32)
    again, _ = load_images(index, 1, 32)
    assert again is first  # a multirun's next job decodes nothing
    changed = root / index.samples[0].path
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(changed.stat().st_mtime_ns + 10**9,) * 2)
    redone, new_hashes = load_images(index, 1, 32)
    assert redone is not first and (redone[0] == 7).all() and new_hashes[0] != hashes[0]
    assert (redone[1:] == first[1:]).all()
