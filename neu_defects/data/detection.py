"""``DetectionDataModule``: the NEU splits with every image's boxes, for a detector.

Splits, ``split.csv`` and k-fold are the classification ones (stratified by image class,
duplicates kept together), so a detector and a classifier trained on one seed test on the same
images. Images are decoded once and resized to the model's square input, and their boxes scaled
with them; a detection's box goes back to the original image's pixels by ``to_original``.

Augmentation is albumentations' bbox-aware pipeline: boxes move with the pixels, are clipped to
the image, and a box with less than ``min_box_area`` pixels or ``min_visibility`` of its area left
after the transform is dropped (its image then trains as that much background).

``mosaic`` (a probability) adds YOLO's mosaic (Bochkovskiy et al. 2020) before those steps:
albumentations' ``Mosaic`` lays the image and three others of the training split, each whole at
input size (its defects keep their scale), on a 2 x 2 grid and crops one input-sized window around
a random centre, so an item shows defects of several classes cut by new borders. Which three is drawn from (seed, epoch, index), as
the rest of the item's augmentation is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from neu_defects.core.errors import UserError
from neu_defects.data.datamodule import NEUDataModule
from neu_defects.data.dataset import ArrayDataset
from neu_defects.data.io import original_size

Target = dict[str, torch.Tensor]


def build_detection_transform(augment: Mapping[str, A.BasicTransform | None] | None = None,
                              min_box_area: float = 4.0, min_visibility: float = 0.3,
                              mosaic: A.Mosaic | None = None) -> A.Compose:
    """The mosaic, if any, then named bbox-aware augmentations, then [0, 1] floats (the detector
    normalises inside). The mosaic comes first so its four images pass the same later steps."""
    steps = [mosaic] if mosaic is not None else []
    steps += [t for t in (augment or {}).values() if t is not None]
    steps += [A.ToFloat(max_value=255.0), ToTensorV2()]
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True,
                               min_area=min_box_area, min_visibility=min_visibility)
    return A.Compose(steps, bbox_params=bbox_params)


def scaled(boxes: np.ndarray, original: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 from an (width, height) frame to another."""
    factors = np.array([size[0] / original[0], size[1] / original[1]] * 2, dtype=np.float64)
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * factors).astype(np.float32)


class DetectionDataset(ArrayDataset):
    """(image tensor in [0, 1], {boxes, labels}) from cached images and their boxes in the image frame.

    As ``ArrayDataset``, a training item's augmentation is seeded from (seed, epoch, index); its
    ``labels`` are each image's box classes. With ``donors``, each item also hands the transform's
    mosaic that many other images of the set, with their boxes.
    """

    def __init__(self, images: np.ndarray, boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                 transform: A.Compose, seed: int | None = None, donors: int = 0):
        super().__init__(images, list(labels), transform, seed)
        self.boxes, self.donors = list(boxes), donors

    def donor_items(self, i: int) -> list[dict[str, np.ndarray]]:
        """The other images (and boxes) of item ``i``'s mosaic, drawn from (seed, epoch, i)."""
        rng = np.random.default_rng([self.seed or 0, self.epoch, i, 1])
        picked = rng.choice(len(self.images), size=self.donors, replace=len(self.images) <= self.donors)
        return [{"image": self.images[j], "bboxes": self.boxes[j], "labels": self.labels[j]} for j in picked]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        extra = {"mosaic_metadata": self.donor_items(i)} if self.donors else {}
        i = self.seeded_index(i)
        out = self.transform(image=self.images[i], bboxes=self.boxes[i], labels=self.labels[i], **extra)
        boxes = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
        return out["image"], {"boxes": boxes, "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64))}


def collate_detection(items: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Square images of one size stack; their targets, one dict per image, do not."""
    return torch.stack([image for image, _ in items]), [target for _, target in items]


class DetectionDataModule(NEUDataModule):
    collate_fn = staticmethod(collate_detection)

    def __init__(self, min_box_area: float = 4.0, min_visibility: float = 0.3, mosaic: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= mosaic <= 1.0:
            raise UserError(f"data.mosaic={mosaic} is a probability: give a value in [0, 1] (0: no mosaic)")
        self.min_box_area, self.min_visibility, self.mosaic = min_box_area, min_visibility, mosaic
        # Per split, in loader order: each image's original (width, height).
        self.original_sizes: dict[str, list[tuple[int, int]]] = {}

    def make_dataset(self, name: str, images: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> Dataset:
        samples = [self.index.samples[p] for p in positions]
        missing = [s.path for s in samples if not s.boxes]
        if missing:
            raise UserError(f"{self.index.root / missing[0]} has no box but is in the {name} split of a detection "
                            f"run ({len(missing)} such images): annotate it, or use a dataset whose images all "
                            "have boxes (NEU-DET with ANNOTATIONS/, VOC, YOLO)")
        sizes = [original_size(self.index.abspath(s)) for s in samples]
        self.original_sizes[name] = sizes
        frame = (self.image_size, self.image_size)
        boxes = [scaled(np.array(s.boxes), size, frame) for s, size in zip(samples, sizes, strict=True)]
        labels = [np.array(s.box_labels, dtype=np.int64) for s in samples]
        train = name == "train"
        # Evaluation keeps every box as annotated: a filter there would drop hard boxes from the score.
        mosaic = None
        if train and self.mosaic > 0:
            size = (self.image_size, self.image_size)
            mosaic = A.Mosaic(grid_yx=(2, 2), target_size=size, cell_shape=size, p=self.mosaic)
        transform = (build_detection_transform(self.augment, self.min_box_area, self.min_visibility, mosaic) if train
                     else build_detection_transform(None, 0.0, 0.0))
        return DetectionDataset(images, boxes, labels, transform, self.seed if train else None,
                                donors=3 if mosaic is not None else 0)

    def to_original(self, name: str, position: int, boxes: np.ndarray) -> np.ndarray:
        """Boxes of item ``position`` of split ``name``, from the model's input frame to the image's pixels."""
        return scaled(boxes, (self.image_size, self.image_size), self.original_sizes[name][position])
