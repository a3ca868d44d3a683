"""Decoding image files into uint8 arrays: the one place that reads pixels from disk."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from neu_defects.core.errors import UserError

IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff"})


def _to_uint8(image: Image.Image) -> Image.Image:
    """Bring 16-bit and float images into 8 bits by their dynamic range, not by clipping."""
    if image.mode in ("L", "RGB", "RGBA", "P", "LA", "1", "CMYK", "YCbCr"):
        return image
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max() > 255):
        array = array / 65535.0 * 255.0 if array.max() > 255 else array
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def decode_image(path: str | Path, channels: int) -> np.ndarray:
    """Read ``path`` as an (H, W, channels) uint8 array; channels is 1 (gray) or 3 (RGB).

    Raises UserError naming the file when it is missing, truncated or not an image.
    """
    if channels not in (1, 3):
        raise UserError(f"channels={channels} is not supported: use 1 (grayscale) or 3 (RGB)")
    try:
        with Image.open(path) as image:
            image.load()
            image = _to_uint8(image).convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as err:
        raise UserError(f"image file {path} does not exist") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(
            f"cannot decode image {path} ({err}): the file is corrupt or truncated; replace or remove it"
        ) from err
    return array[..., None] if array.ndim == 2 else array


def original_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read the size of image {path} ({err}): replace or remove the file") from err


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, C) uint8 array to size x size with Pillow's anti-aliased bilinear filter."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    mode = "L" if array.shape[2] == 1 else "RGB"
    image = Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode)
    out = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


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
        raise UserError(f"input={spec} is not a file, a folder or a glob pattern: pass an image, a folder of "
                        "images or a quoted pattern such as 'shots/*.png'")
    if not files:
        raise UserError(f"input={spec} matches no files (a folder is searched for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(files)
