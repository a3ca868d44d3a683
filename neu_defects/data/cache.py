"""Decode every indexed image once into RAM as uint8 arrays (NEU is ~72 MB gray at 200 x 200).

The last clean decode is kept for the process: the jobs of a multirun (same data, same input)
decode the data set once instead of once per job, 3 s for NEU at 224 px RGB. It is keyed by every
file's path, size and modification time, so a changed file is decoded again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import numpy as np
from rich.progress import track

from neu_defects.data.index import DatasetIndex
from neu_defects.data.io import decode_image, resize

log = logging.getLogger(__name__)


_LAST: dict[tuple, tuple[np.ndarray, list[str]]] = {}


def _key(index: DatasetIndex, channels: int, size: int) -> tuple:
    files = tuple((s.path, (stat := index.abspath(s).stat()).st_size, stat.st_mtime_ns) for s in index.samples)
    return str(index.root), files, channels, size


def load_images(
    index: DatasetIndex, channels: int, size: int, corruption: Callable[[np.ndarray, str], np.ndarray] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Return (N, size, size, channels) uint8 images and a pixel hash per image.

    Hashes are taken before resizing, on the decoded pixels, so two files with the same pixels
    (whatever their encoding) share a hash and can be kept on one side of a split.
    ``corruption(image, key)`` (see ``corruptions.py``) is applied to the decoded image, as the camera
    would have delivered it, before resizing; the hash stays that of the clean image, so a corrupted
    data set splits exactly as the clean one. The arrays are shared with later calls: read, never write.
    """
    key = _key(index, channels, size) if corruption is None else None
    if key is not None and key in _LAST:
        return _LAST[key]
    start = time.perf_counter()
    images = np.empty((len(index.samples), size, size, channels), dtype=np.uint8)
    hashes = []
    for i, sample in enumerate(track(index.samples, description="decoding images", transient=True)):
        array = decode_image(index.abspath(sample), channels)
        hashes.append(hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest())
        if corruption is not None:
            array = corruption(array, sample.path)
        images[i] = resize(array, size)
    log.info("decoded %d images (%s) in %.1f s", len(images), index.layout, time.perf_counter() - start)
    if key is not None:
        _LAST.clear()
        _LAST[key] = (images, hashes)
    return images, hashes
