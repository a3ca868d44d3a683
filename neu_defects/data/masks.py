"""Ground-truth anomaly masks at the model's input resolution, for pixel-level scores of anomaly maps.

A mask is an (S, S) uint8 array: 1 where the image is anomalous, 0 where it is normal, and
``UNKNOWN`` everywhere for an anomalous image with nothing to say where (such an image counts for
image metrics only). Two sources:

- a mask file (MVTec AD's ``ground_truth/<type>/<name>_mask.png``): any non-zero pixel is anomalous,
  resized to S x S by nearest neighbour, so a mask stays binary and small defects keep their pixels;
- defect boxes (NEU-DET): the pixels whose centres lie inside a box. Boxes are coarse masks (a box
  holds normal texture around its defect), so their scores are reported apart, as ``box_pixel_*``.

A normal image's mask is all zero whatever boxes it carries: in the one-class protocols of NEU the
normal class's own defects are what the line calls normal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.data.index import DatasetIndex, Sample
from neu_defects.data.io import original_size

UNKNOWN = 255
# Where a data module's masks come from: the metric names follow it.
MASK_SOURCES = ("masks", "boxes")


def read_mask(path, size: int) -> np.ndarray:
    """A mask file as an (size, size) 0/1 uint8 array, resized by nearest neighbour."""
    try:
        with Image.open(path) as image:
            image.load()
            mask = image.convert("L")
    except FileNotFoundError as err:
        raise UserError(f"mask file {path} does not exist") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot decode mask {path} ({err}): the file is corrupt; replace or remove it") from err
    mask = mask.resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(mask) > 0).astype(np.uint8)


def box_mask(boxes: Sequence[Sequence[float]], image_size: tuple[int, int], size: int) -> np.ndarray:
    """The (size, size) 0/1 mask of the pixels whose centres lie in any box.

    Boxes are 0-based continuous (x1, y1, x2, y2) in an image of ``image_size`` (width, height).
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    width, height = image_size
    centres = (np.arange(size) + 0.5) / size
    xs, ys = centres * width, centres * height
    for x1, y1, x2, y2 in boxes:
        rows = (ys >= y1) & (ys < y2)
        cols = (xs >= x1) & (xs < x2)
        mask[np.ix_(rows, cols)] = 1
    return mask


def sample_mask(index: DatasetIndex, sample: Sample, anomalous: bool, size: int) -> np.ndarray:
    """The mask of one image (see the module docstring): zero if normal, else its file, boxes or UNKNOWN."""
    if not anomalous:
        return np.zeros((size, size), dtype=np.uint8)
    if sample.mask:
        return read_mask(index.root / sample.mask, size)
    if sample.boxes:
        return box_mask(sample.boxes, original_size(index.abspath(sample)), size)
    return np.full((size, size), UNKNOWN, dtype=np.uint8)


def mask_source(index: DatasetIndex) -> str | None:
    """``masks`` when any image has a mask file, else ``boxes`` when any has boxes, else None."""
    if any(s.mask for s in index.samples):
        return "masks"
    return "boxes" if index.has_boxes else None


def load_masks(index: DatasetIndex, positions: np.ndarray, anomalous: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) uint8 masks of the images at ``positions`` of the index."""
    masks = np.zeros((len(positions), size, size), dtype=np.uint8)
    for i, (p, a) in enumerate(zip(positions, anomalous, strict=True)):
        masks[i] = sample_mask(index, index.samples[p], bool(a), size)
    return masks
