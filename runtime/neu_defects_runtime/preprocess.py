"""Image file -> model input, exactly as neu-defects training fed the model, with numpy and Pillow only.

An export's record carries the ``input_spec`` (``in_chans``, ``image_size``, ``mean``, ``std``); the
steps are: decode to uint8 (16-bit and float images by their dynamic range, not by clipping), gray
or RGB as ``in_chans``; resize to image_size x image_size with Pillow's anti-aliased bilinear
filter; ``(pixel / 255 - mean) / std`` in float32; channels first. The normalisation is computed
as a 256-entry float32 table per channel, the arithmetic of training's albumentations ``Normalize``,
so the tensors are identical to the bit, not merely close.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from neu_defects_runtime.errors import InputError

IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff"})
EIGHT_BIT_MODES = ("L", "RGB", "RGBA", "P", "LA", "1", "CMYK", "YCbCr")


def to_uint8(image: Image.Image) -> Image.Image:
    """Bring 16-bit and float images into 8 bits by their dynamic range, not by clipping."""
    if image.mode in EIGHT_BIT_MODES:
        return image
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max() > 255):
        array = array / 65535.0 * 255.0 if array.max() > 255 else array
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def decode_image(path: str | Path, channels: int) -> np.ndarray:
    """Read ``path`` as an (H, W, channels) uint8 array; channels is 1 (gray) or 3 (RGB).

    Raises InputError naming the file when it is missing, truncated or not an image.
    """
    if channels not in (1, 3):
        raise InputError(f"channels={channels} is not supported: use 1 (grayscale) or 3 (RGB)")
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(to_uint8(image).convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except FileNotFoundError as err:
        raise InputError(f"image file {path} does not exist") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode image {path} ({err}): the file is corrupt or truncated; "
                         "replace or remove it") from err
    return array[..., None] if array.ndim == 2 else array


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, C) uint8 array to size x size with Pillow's anti-aliased bilinear filter."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    mode = "L" if array.shape[2] == 1 else "RGB"
    image = Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode)
    out = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def normalisation_tables(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(C, 256) float32: the normalised value of every uint8 level, per channel."""
    offset = np.asarray(mean, dtype=np.float32) * np.float32(255.0)
    scale = np.reciprocal(np.asarray(std, dtype=np.float32) * np.float32(255.0))
    return (np.arange(256, dtype=np.float32)[None, :] - offset[:, None]) * scale[:, None]


class Preprocessor:
    """Image file -> (C, H, W) float32 array, as the model was fed in training."""

    def __init__(self, spec: dict[str, Any]):
        self.channels, self.size = int(spec["in_chans"]), int(spec["image_size"])
        self.tables = normalisation_tables(spec["mean"], spec["std"])
        if self.tables.shape[0] != self.channels:
            raise InputError(f"input_spec has {self.tables.shape[0]} mean/std values for in_chans={self.channels}: "
                             "export the model again")

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.prepare(decode_image(path, self.channels))

    def prepare(self, array: np.ndarray) -> np.ndarray:
        """A decoded (H, W, C) uint8 image -> the model's (C, size, size) float32 input."""
        resized = resize(array, self.size)
        return np.stack([self.tables[c][resized[..., c]] for c in range(self.channels)])


def find_images(spec: str) -> list[Path]:
    """The files a user names: an image file (any extension), a folder (its image files,
    recursively) or a glob pattern (every file it matches), sorted."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    elif glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    else:
        raise InputError(f"input {spec} is not a file, a folder or a glob pattern: pass an image, a folder of "
                         "images or a quoted pattern such as 'shots/*.png'")
    if not files:
        raise InputError(f"input {spec} matches no files (a folder is searched for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(files)
