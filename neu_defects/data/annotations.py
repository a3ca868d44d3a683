"""Box annotations: Pascal-VOC XML and YOLO text files, read into one convention.

Every box here is ``(x1, y1, x2, y2)`` in continuous pixel coordinates of the original image,
0-based: the image spans ``[0, width] x [0, height]``, and pixel ``i`` covers ``[i, i + 1)``.
VOC stores the 1-based indices of the first and last pixel inside the box, so a VOC box
``xmin..xmax`` covers ``[xmin - 1, xmax]`` (a box of one pixel, ``xmin = xmax = 1``, is ``[0, 1]``).
YOLO stores the centre and size, normalised by the image's size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from neu_defects.core.errors import UserError

Box = tuple[float, float, float, float]
CLASS_LIST_FILES = ("classes.txt", "data.yaml", "dataset.yaml")


def voc_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> Box:
    """A VOC box (1-based, first and last pixel inclusive) as 0-based continuous coordinates."""
    return (xmin - 1.0, ymin - 1.0, float(xmax), float(ymax))


def yolo_to_xyxy(cx: float, cy: float, w: float, h: float, width: int, height: int) -> Box:
    return ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)


def check_box(box: Box, size: tuple[int, int], where: str) -> Box:
    """The box clipped to the image; a box with no area inside the image is an error naming ``where``.

    Clipping is the honest repair of a box that runs past the border (annotation tools let a drag
    end outside the image): what it marks inside the image is unchanged. A box of zero area, or
    one wholly outside, marks nothing, and no repair can say what was meant.
    """
    width, height = size
    x1, y1, x2, y2 = box
    clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        shown = ", ".join(f"{v:g}" for v in box)
        raise UserError(f"{where}: the box ({shown}) has no area inside the {width} x {height} image: "
                        "fix its corners or delete the box")
    return clipped


def read_voc(xml_path: Path) -> tuple[list[tuple[str, Box]], tuple[int, int] | None]:
    """The named boxes of a VOC XML file, and the image (width, height) it states (None if it does not)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise UserError(f"cannot parse annotation {xml_path} ({err}): fix or remove the file") from err
    size = None
    if (node := root.find("size")) is not None:
        width, height = (int(float(node.findtext(k) or 0)) for k in ("width", "height"))
        size = (width, height) if width > 0 and height > 0 else None
    boxes = []
    for obj in root.iter("object"):
        name, bb = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if bb is None:
            continue
        try:
            coords = [float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as err:
            raise UserError(f"{xml_path}: a box of {name!r} has a corner that is not a number ({err})") from err
        if any(c != c for c in coords):
            raise UserError(f"{xml_path}: a box of {name!r} lacks one of xmin, ymin, xmax, ymax")
        boxes.append((name, voc_to_xyxy(*coords)))
    return boxes, size


def read_yolo(txt_path: Path, class_names: Sequence[str], size: tuple[int, int]) -> list[tuple[str, Box]]:
    """The named boxes of a YOLO label file (``class cx cy w h`` per line, normalised)."""
    boxes = []
    for number, line in enumerate(txt_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            class_id, values = int(fields[0]), [float(v) for v in fields[1:5]]
        except (ValueError, IndexError):
            values = []
        if len(fields) != 5 or len(values) != 4:
            raise UserError(f"{txt_path}:{number}: expected 'class cx cy w h', got {line.strip()!r}")
        if not 0 <= class_id < len(class_names):
            raise UserError(f"{txt_path}:{number}: class {class_id} is not in the class list "
                            f"(0..{len(class_names) - 1}: {', '.join(class_names)}); fix the label or the list")
        boxes.append((class_names[class_id], yolo_to_xyxy(*values, *size)))
    return boxes


def _yaml_names(path: Path) -> list[str]:
    import yaml  # a dependency of omegaconf

    names = (yaml.safe_load(path.read_text()) or {}).get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path} has no 'names:' list of classes: add one, e.g. names: [crazing, inclusion]")
    return [str(n) for n in names]


def read_class_list(root: Path) -> list[str] | None:
    """The class list of a detection dataset: ``classes.txt`` (one per line) or a YOLO ``data.yaml``."""
    for name in CLASS_LIST_FILES:
        path = root / name
        if path.is_file():
            if path.suffix == ".txt":
                names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
                if not names:
                    raise UserError(f"{path} is empty: list one class name per line")
                return names
            return _yaml_names(path)
    return None


def check_names(names: Sequence[str], class_names: Sequence[str], where: Path) -> None:
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise UserError(f"{where}: box class {', '.join(map(repr, unknown))} is not in the class list "
                        f"({', '.join(class_names)}); fix the name or add it to the list")
