"""Drawing class activation maps: heat-map overlays and grids of tiles, saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam.utils.image import show_cam_on_image

from neu_defects.core.io import atomic_write


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) uint8 -> (H, W, 3) uint8."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def overlay(image: np.ndarray, cam_map: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The map as a jet heat map over the uint8 image, resized to the image if needed."""
    rgb = to_rgb(image)
    if cam_map.shape != rgb.shape[:2]:
        cam_map = cv2.resize(cam_map.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(cam_map, 0, 1), use_rgb=True,
                             image_weight=image_weight)


@dataclass
class Tile:
    """One panel of a grid: the image beside its overlay, a caption, and boxes in image pixels:
    ``boxes`` (the annotation, white) and ``predicted`` (red), drawn on the overlay."""

    image: np.ndarray
    cam_map: np.ndarray
    caption: str
    boxes: Sequence[tuple[float, float, float, float]] = ()
    predicted: Sequence[tuple[float, float, float, float]] = ()



def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG, whole or not at all."""
    # zlib's default level spent most of a validation panel's time compressing; 3 is 3x faster.
    return atomic_write(path, lambda h: Image.fromarray(pixels).save(h, format="PNG", compress_level=3), binary=True)


def render_tiles(tiles: Sequence[Tile], path: str | Path, title: str, columns: int = 4,
                 empty_note: str = "nothing to show", panel: int = 160) -> np.ndarray:
    """Save a grid of tiles as a PNG and return its pixels (H, W, 3) for image loggers.

    Drawn with Pillow rather than matplotlib: a grid of every misclassified image of a poor model
    has hundreds of tiles, which took a minute as matplotlib axes.
    """
    font = ImageFont.load_default(size=12)
    pad, gap, line = 8, 4, 15
    lines = max([t.caption.count("\n") + 1 for t in tiles] or [1])
    tile_w, tile_h = 2 * panel + gap, panel + lines * line + 4
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    top = 2 * line + pad
    canvas = Image.new("RGB", (pad + columns * (tile_w + pad), top + rows * (tile_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad // 2), title, fill="black", font=ImageFont.load_default(size=14))
    if not tiles:
        draw.text((pad, top), empty_note, fill="black", font=font)
    for k, tile in enumerate(tiles):
        x0 = pad + (k % columns) * (tile_w + pad)
        y0 = top + (k // columns) * (tile_h + pad)
        draw.multiline_text((x0, y0), tile.caption, fill="black", font=font, spacing=3)
        y_img = y0 + lines * line + 4
        rgb = to_rgb(tile.image)
        for offset, pixels in ((0, rgb), (panel + gap, overlay(rgb, tile.cam_map))):
            canvas.paste(Image.fromarray(pixels).resize((panel, panel), Image.Resampling.BILINEAR),
                         (x0 + offset, y_img))
        sx, sy = panel / rgb.shape[1], panel / rgb.shape[0]
        left = x0 + panel + gap
        for boxes, colour in ((tile.boxes, "white"), (tile.predicted, (230, 0, 0))):
            for bx0, by0, bx1, by1 in boxes:
                # The far edge is the last pixel inside; a box under one panel pixel is drawn one pixel wide.
                x_a, y_a = left + bx0 * sx, y_img + by0 * sy
                draw.rectangle((x_a, y_a, max(x_a, left + bx1 * sx - 1), max(y_a, y_img + by1 * sy - 1)),
                               outline=colour, width=1)
    pixels = np.asarray(canvas)
    save_png(pixels, path)
    return pixels
