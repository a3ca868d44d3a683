"""Detection data: VOC's 1-based boxes, the VOC and YOLO layouts, bbox-aware augmentation, bad annotations."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.data.annotations import check_box, voc_to_xyxy, yolo_to_xyxy
from neu_defects.data.detection import (
    DetectionDataModule,
    DetectionDataset,
    build_detection_transform,
    scaled,
)
from neu_defects.data.index import build_index

from .conftest import FIXTURE_CLASSES, PER_CLASS, SIZE, fixture_image

# Two boxes per image, of two classes: (class, VOC xmin, ymin, xmax, ymax), 1-based inclusive.
BOXES = (("crazing", 1, 1, 24, 48), ("scratches", 30, 10, 40, 20))


def voc_xml(filename: str, boxes=BOXES, size=SIZE) -> str:
    objects = "".join(f"<object><name>{c}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                      f"<ymax>{y1}</ymax></bndbox></object>" for c, x0, y0, x1, y1 in boxes)
    return (f"<annotation><filename>{filename}</filename><size><width>{size}</width><height>{size}</height>"
            f"</size>{objects}</annotation>")


def yolo_txt(boxes=BOXES, size=SIZE) -> str:
    """The same boxes as YOLO lines: class id, centre and size normalised by the image."""
    lines = []
    for c, x0, y0, x1, y1 in boxes:
        left, top, right, bottom = x0 - 1, y0 - 1, x1, y1
        lines.append(f"{FIXTURE_CLASSES.index(c)} {(left + right) / 2 / size} {(top + bottom) / 2 / size} "
                     f"{(right - left) / size} {(bottom - top) / size}")
    return "\n".join(lines) + "\n"


def make_dataset(root, layout: str, per_class: int = 4):
    images, labels = {"voc": ("JPEGImages", "Annotations"), "yolo": ("images", "labels")}[layout]
    (root / images).mkdir(parents=True)
    (root / labels).mkdir()
    (root / "classes.txt").write_text("\n".join(FIXTURE_CLASSES) + "\n")
    for label, cls in enumerate(FIXTURE_CLASSES):
        for n in range(per_class):
            stem = f"{cls}_{n}"
            Image.fromarray(fixture_image(label, n)).convert("RGB").save(root / images / f"{stem}.jpg")
            boxes = ((cls, 5, 5, 30, 30), *BOXES[1:]) if label else BOXES
            if layout == "voc":
                (root / labels / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", boxes))
            else:
                (root / labels / f"{stem}.txt").write_text(yolo_txt(boxes))
    return root


def test_voc_boxes_are_one_based_and_inclusive():
    assert voc_to_xyxy(1, 1, 200, 200) == (0.0, 0.0, 200.0, 200.0)  # the whole 200 px image
    assert voc_to_xyxy(1, 1, 1, 1) == (0.0, 0.0, 1.0, 1.0)  # one pixel has area 1
    assert voc_to_xyxy(5, 7, 9, 11) == (4.0, 6.0, 9.0, 11.0)
    assert yolo_to_xyxy(0.5, 0.5, 1.0, 1.0, 200, 100) == (0.0, 0.0, 200.0, 100.0)


def test_boxes_past_the_border_are_clipped_and_empty_ones_refused():
    assert check_box((-3.0, 2.0, 210.0, 50.0), (200, 200), "a.xml") == (0.0, 2.0, 200.0, 50.0)
    for box in ((10.0, 10.0, 10.0, 40.0), (210.0, 0.0, 230.0, 50.0), (20.0, 30.0, 10.0, 40.0)):
        with pytest.raises(UserError, match=r"a\.xml: the box .* has no area inside the 200 x 200 image"):
            check_box(box, (200, 200), "a.xml")


@pytest.mark.parametrize("layout", ["voc", "yolo"])
def test_voc_and_yolo_layouts_index_the_same_boxes(tmp_path, layout):
    index = build_index(make_dataset(tmp_path / layout, layout))
    assert index.layout == layout
    assert index.class_names == list(FIXTURE_CLASSES)
    first = next(s for s in index.samples if s.path.endswith("crazing_0.jpg"))
    np.testing.assert_allclose(first.boxes, [(0, 0, 24, 48), (29, 9, 40, 20)], atol=1e-9)
    assert first.box_labels == (0, 5)
    # An image's class is its boxes' majority, ties to the earlier class: crazing here.
    assert first.label == 0
    inclusion = next(s for s in index.samples if s.path.endswith("inclusion_0.jpg"))
    assert inclusion.box_labels == (1, 5) and inclusion.label == 1


def test_neu_det_box_of_an_unknown_class_names_the_file(fixture_root, tmp_path):
    root = tmp_path / "det"
    (root / "IMAGES").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    for cls in ("crazing", "patches"):
        (root / "IMAGES" / f"{cls}_1.jpg").write_bytes((fixture_root / "neu-det" / "IMAGES" / f"{cls}_1.jpg").read_bytes())
        (root / "ANNOTATIONS" / f"{cls}_1.xml").write_text(voc_xml(f"{cls}_1.jpg", ((cls, 2, 2, 9, 9),)))
    (root / "ANNOTATIONS" / "patches_1.xml").write_text(voc_xml("patches_1.jpg", (("dent", 2, 2, 9, 9),)))
    with pytest.raises(UserError, match=r"patches_1\.jpg: box class 'dent' is not in the class list"):
        build_index(root)


def test_voc_name_outside_the_class_list_and_yolo_id_out_of_range(tmp_path):
    voc = make_dataset(tmp_path / "voc", "voc", per_class=1)
    (voc / "Annotations" / "patches_0.xml").write_text(voc_xml("patches_0.jpg", (("rust", 2, 2, 9, 9),)))
    with pytest.raises(UserError, match=r"patches_0\.xml: box class 'rust' is not in the class list"):
        build_index(voc)
    yolo = make_dataset(tmp_path / "yolo", "yolo", per_class=1)
    (yolo / "labels" / "patches_0.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(UserError, match=r"patches_0\.txt:1: class 7 is not in the class list"):
        build_index(yolo)


def test_voc_box_with_no_area_names_the_file(tmp_path):
    voc = make_dataset(tmp_path / "voc", "voc", per_class=1)
    (voc / "Annotations" / "crazing_0.xml").write_text(voc_xml("crazing_0.jpg", (("crazing", 60, 2, 70, 9),)))
    with pytest.raises(UserError, match=r"crazing_0\.xml: the box \(59, 1, 70, 9\) has no area inside the 48 x 48"):
        build_index(voc)


def test_an_image_without_boxes_cannot_enter_a_detection_split(fixture_root, tmp_path):
    root = tmp_path / "det"
    (root / "IMAGES").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    for cls in FIXTURE_CLASSES:
        for n in range(1, PER_CLASS + 1):
            name = f"{cls}_{n}"
            (root / "IMAGES" / f"{name}.jpg").write_bytes((fixture_root / "neu-det" / "IMAGES" / f"{name}.jpg").read_bytes())
            if name != "inclusion_3":
                (root / "ANNOTATIONS" / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", ((cls, 2, 2, 9, 9),)))
    dm = DetectionDataModule(root=str(root), image_size=SIZE, in_chans=3, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(UserError, match=r"inclusion_3\.jpg has no box but is in the \w+ split of a detection run"):
        dm.setup()


def test_boxes_follow_the_resize_and_the_flips(tmp_path):
    np.testing.assert_allclose(scaled(np.array([[0, 0, 200, 100]]), (200, 200), (320, 320)), [[0, 0, 320, 160]])
    image = np.zeros((40, 40, 3), np.uint8)
    image[5:15, 2:12] = 255  # a bright square exactly under the box [2, 5, 12, 15]
    flip = build_detection_transform({"h": A.HorizontalFlip(p=1.0), "v": A.VerticalFlip(p=1.0)})
    out = flip(image=image, bboxes=np.array([[2, 5, 12, 15]], np.float32), labels=np.array([3]))
    np.testing.assert_allclose(out["bboxes"], [[28, 25, 38, 35]])
    x0, y0, x1, y1 = (round(v) for v in out["bboxes"][0])
    assert torch.all(out["image"][:, y0:y1, x0:x1] == 1.0) and out["image"].sum() == 3 * 100
    # A shift that pushes a box mostly out of the image drops it; what stays in is clipped.
    shift = build_detection_transform({"s": A.Affine(translate_px={"x": -10, "y": 0}, p=1.0)}, min_visibility=0.3)
    out = shift(image=image, bboxes=np.array([[2, 5, 12, 15], [20, 5, 40, 15]], np.float32), labels=np.array([1, 2]))
    np.testing.assert_allclose(out["bboxes"], [[10, 5, 30, 15]])
    assert list(out["labels"]) == [2]


def test_mosaic_tiles_four_training_images_with_their_boxes_and_stays_seeded(fixture_root):
    # Four flat images of distinct gray levels, each boxed whole with its own class.
    size, levels = 32, (40, 90, 160, 230)
    images = np.stack([np.full((size, size, 3), v, np.uint8) for v in levels])
    boxes = [np.array([[0, 0, size, size]], np.float32)] * 4
    labels = [np.array([k]) for k in range(4)]
    mosaic = A.Mosaic(grid_yx=(2, 2), target_size=(size, size), cell_shape=(size, size), p=1.0)
    dataset = DetectionDataset(images, boxes, labels, build_detection_transform(None, mosaic=mosaic), seed=3, donors=3)
    seen = set()
    for i in range(8):
        image, target = dataset[i]
        assert image.shape == (3, size, size)
        for (x0, y0, x1, y1), k in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            # Every pixel under a box is its own image's, so boxes moved with their tiles.
            tile = image[:, round(y0):round(y1), round(x0):round(x1)]
            torch.testing.assert_close(tile, torch.full_like(tile, levels[k] / 255))
        seen.add(frozenset(target["labels"].tolist()))
        distinct = {round(v * 255) for v in image[0].unique().tolist()}
        assert len(distinct) >= 2, "a mosaic shows more than one image"
    assert any(len(shown) >= 2 for shown in seen)
    first = dataset[5]
    torch.testing.assert_close(dataset[5][0], first[0])  # (seed, epoch, index) decide the item
    dataset.epoch = 1
    assert not torch.equal(dataset[5][0], first[0])

    dm = DetectionDataModule(root=str(fixture_root / "neu-det"), image_size=SIZE, in_chans=3, mean=(0,) * 3,
                             std=(1,) * 3, mosaic=1.0)
    dm.setup()
    assert dm.datasets["train"].donors == 3
    assert dm.datasets["val"].donors == 0 and dm.datasets["test"].donors == 0  # evaluation sees images as shot
    with pytest.raises(UserError, match=r"data\.mosaic=1\.5 is a probability"):
        DetectionDataModule(root=str(fixture_root / "neu-det"), mosaic=1.5)


@pytest.mark.real_data
def test_real_detection_splits_match_the_classification_splits(neu_root):
    from neu_defects.data import NEUDataModule

    common = {"root": str(neu_root), "in_chans": 3, "mean": (0,) * 3, "std": (1,) * 3, "seed": 0}
    det = DetectionDataModule(image_size=320, **common)
    det.setup()
    cls = NEUDataModule(image_size=64, **common)
    cls.setup()
    for name in ("train", "val", "test"):
        assert (det.dataset_indices[name] == cls.dataset_indices[name]).all()
    image, target = det.datasets["test"][0]
    sample = det.index.samples[det.dataset_indices["test"][0]]
    assert image.shape == (3, 320, 320) and image.min() >= 0 and image.max() <= 1
    np.testing.assert_allclose(target["boxes"].numpy(), np.array(sample.boxes) * 1.6, rtol=1e-6)
    assert target["labels"].tolist() == list(sample.box_labels)
    # Evaluation keeps every annotated box; back in the original frame they are the index's.
    np.testing.assert_allclose(det.to_original("test", 0, target["boxes"].numpy()), sample.boxes, rtol=1e-6)
    assert sum(len(det.datasets["test"][i][1]["labels"]) for i in range(len(det.datasets["test"]))) == sum(
        len(det.index.samples[p].boxes) for p in det.dataset_indices["test"])
