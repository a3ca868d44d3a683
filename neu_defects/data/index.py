"""The dataset index: which image files exist, their class, and their defect boxes.

Three layouts are read, detected from what is on disk:

- ``neu-det``: ``IMAGES/<class>_<n>.jpg`` plus ``ANNOTATIONS/<class>_<n>.xml`` (Pascal VOC);
- ``neu-cls``: flat ``Cr_1.bmp``, ``In_…``, ``Pa_…``, ``PS_…``, ``RS_…``, ``Sc_…`` files;
- ``folders``: ``root/<class_name>/*.{bmp,jpg,png,…}`` with any classes.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from neu_defects.core.errors import UserError
from neu_defects.data.io import IMAGE_EXTENSIONS

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
NEU_CLS_PREFIXES = {"cr": "crazing", "in": "inclusion", "pa": "patches", "ps": "pitted_surface",
                    "rs": "rolled-in_scale", "sc": "scratches"}
LAYOUTS = ("auto", "neu-det", "neu-cls", "folders")
DOWNLOAD_HINT = ("download NEU-CLS or NEU-DET (see README, 'Dataset') and pass data.root=PATH "
                 "or set NEU_DATA_DIR")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the index root, class id, and boxes (xmin, ymin, xmax, ymax)."""

    path: str
    label: int
    boxes: tuple[Box, ...] = ()


@dataclass
class DatasetIndex:
    root: Path
    layout: str
    class_names: list[str]
    samples: list[Sample] = field(default_factory=list)

    @property
    def has_boxes(self) -> bool:
        return any(s.boxes for s in self.samples)

    def abspath(self, sample: Sample) -> Path:
        return self.root / sample.path


def default_root() -> Path:
    """``NEU_DATA_DIR`` if set, else ``data/NEU-DET`` under the working directory."""
    return Path(os.environ.get("NEU_DATA_DIR") or "data/NEU-DET")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_order(names: set[str]) -> list[str]:
    """NEU's canonical order when the names are NEU's, alphabetical otherwise."""
    if names <= set(NEU_CLASSES):
        return [c for c in NEU_CLASSES if c in names]
    return sorted(names)


def _find_child(root: Path, name: str) -> Path | None:
    for child in root.iterdir() if root.is_dir() else ():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def _neu_cls_class(path: Path) -> str | None:
    return NEU_CLS_PREFIXES.get(path.stem.split("_", 1)[0].lower()) if "_" in path.stem else None


def detect_layout(root: Path) -> str:
    images_dir = _find_child(root, "IMAGES")
    if images_dir is not None and _images_in(images_dir):
        return "neu-det"
    flat = _images_in(root)
    if flat and all(_neu_cls_class(p) for p in flat):
        return "neu-cls"
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs and not flat:
        return "folders"
    raise UserError(
        f"cannot recognise the dataset layout under {root}: expected IMAGES/ + ANNOTATIONS/ (NEU-DET), "
        "Cr_1.bmp-style files (NEU-CLS) or one folder per class; pass data.layout= to force one"
    )


def _parse_voc_boxes(xml_path: Path) -> tuple[Box, ...]:
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as err:
        raise UserError(f"cannot parse annotation {xml_path} ({err}): fix or remove the file") from err
    boxes = []
    for obj in tree.getroot().iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        coords = [int(round(float(bb.findtext(k, "nan")))) for k in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(tuple(coords))
    return tuple(boxes)


def _index_neu_det(root: Path) -> tuple[list[str], list[tuple[str, str, tuple[Box, ...]]]]:
    images_dir = _find_child(root, "IMAGES")
    ann_dir = _find_child(root, "ANNOTATIONS")
    if images_dir is None:
        raise UserError(f"{root} has no IMAGES/ folder, which the neu-det layout needs; check data.layout")
    rows = []
    for path in _images_in(images_dir):
        if "_" not in path.stem:
            raise UserError(f"{path} is not named <class>_<n>: rename it or use data.layout=folders")
        cls = path.stem.rsplit("_", 1)[0]
        xml = ann_dir / f"{path.stem}.xml" if ann_dir is not None else None
        boxes = _parse_voc_boxes(xml) if xml is not None and xml.is_file() else ()
        rows.append((str(path.relative_to(root)), cls, boxes))
    return _class_order({r[1] for r in rows}), rows


def _index_neu_cls(root: Path) -> tuple[list[str], list[tuple[str, str, tuple[Box, ...]]]]:
    rows = []
    for path in _images_in(root):
        cls = _neu_cls_class(path)
        if cls is None:
            raise UserError(f"{path} has no NEU-CLS class prefix (Cr_, In_, Pa_, PS_, RS_, Sc_)")
        rows.append((path.name, cls, ()))
    return _class_order({r[1] for r in rows}), rows


def _index_folders(root: Path) -> tuple[list[str], list[tuple[str, str, tuple[Box, ...]]]]:
    rows = []
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for folder in class_dirs:
        images = _images_in(folder)
        if not images:
            raise UserError(
                f"class folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                "add images or remove the folder"
            )
        rows += [(str(p.relative_to(root)), folder.name, ()) for p in images]
    return _class_order({r[1] for r in rows}), rows


_READERS = {"neu-det": _index_neu_det, "neu-cls": _index_neu_cls, "folders": _index_folders}


def build_index(root: str | Path | None = None, layout: str = "auto") -> DatasetIndex:
    """Index the dataset at ``root`` (default: ``default_root()``) in the given or detected layout."""
    root = Path(root) if root else default_root()
    if layout not in LAYOUTS:
        raise UserError(f"data.layout={layout!r} is not a layout: use one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder: {DOWNLOAD_HINT}")
    if not any(root.iterdir()):
        raise UserError(f"data root {root} is empty: {DOWNLOAD_HINT}")
    layout = detect_layout(root) if layout == "auto" else layout
    class_names, rows = _READERS[layout](root)
    if not rows:
        raise UserError(f"no images found under {root} in the {layout} layout: {DOWNLOAD_HINT}")
    if len(class_names) < 2:
        raise UserError(f"{root} holds only the class {class_names}: a classifier needs at least two")
    label_of = {c: i for i, c in enumerate(class_names)}
    samples = [Sample(path, label_of[cls], boxes) for path, cls, boxes in rows]
    return DatasetIndex(root=root, layout=layout, class_names=class_names, samples=samples)
