"""The dataset index: which image files exist, their class, and their defect boxes.

Five layouts are read, detected from what is on disk:

- ``neu-det``: ``IMAGES/<class>_<n>.jpg`` plus ``ANNOTATIONS/<class>_<n>.xml`` (Pascal VOC);
- ``neu-cls``: flat ``Cr_1.bmp``, ``In_…``, ``Pa_…``, ``PS_…``, ``RS_…``, ``Sc_…`` files;
- ``folders``: ``root/<class_name>/*.{bmp,jpg,png,…}`` with any classes;
- ``voc``: ``JPEGImages/`` plus ``Annotations/*.xml``, classes from ``classes.txt`` or the XML names;
- ``yolo``: ``images/`` plus ``labels/*.txt`` and a class list (``classes.txt`` or ``data.yaml``).

Boxes follow ``neu_defects.data.annotations``: 0-based continuous ``(x1, y1, x2, y2)`` in the
original image's pixels, each with its own class (a NEU-DET scratches image can hold an inclusion
box). In the voc and yolo layouts an image's class, which splits are stratified by, is the class
of most of its boxes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neu_defects.core.errors import UserError
from neu_defects.data.annotations import Box, check_box, check_names, read_class_list, read_voc, read_yolo
from neu_defects.data.io import IMAGE_EXTENSIONS, original_size

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
NEU_CLS_PREFIXES = {"cr": "crazing", "in": "inclusion", "pa": "patches", "ps": "pitted_surface",
                    "rs": "rolled-in_scale", "sc": "scratches"}
LAYOUTS = ("auto", "neu-det", "neu-cls", "folders", "voc", "yolo")
DOWNLOAD_HINT = ("download NEU-CLS or NEU-DET (see README, 'Dataset') and pass data.root=PATH "
                 "or set NEU_DATA_DIR")



@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the index root, class id, and boxes with their class ids."""

    path: str
    label: int
    boxes: tuple[Box, ...] = ()
    box_labels: tuple[int, ...] = ()

# A reader's row: path relative to the root, image class, (box class, box) pairs.
Row = tuple[str, str, list[tuple[str, Box]]]


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
        # NEU-DET's IMAGES/ and YOLO's images/ differ by what sits beside them.
        return "yolo" if _find_child(root, "labels") is not None else "neu-det"
    jpeg_dir = _find_child(root, "JPEGImages")
    if jpeg_dir is not None and _find_child(root, "Annotations") is not None:
        return "voc"
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


def _checked(pairs: list[tuple[str, Box]], size: tuple[int, int], where: Path) -> list[tuple[str, Box]]:
    return [(name, check_box(box, size, str(where))) for name, box in pairs]


def _voc_rows(images: list[Path], ann_dir: Path | None) -> list[tuple[Path, list[tuple[str, Box]]]]:
    """Each image with its VOC boxes (none when it has no XML), clipped to the image."""
    rows = []
    for path in images:
        xml = ann_dir / f"{path.stem}.xml" if ann_dir is not None else None
        if xml is None or not xml.is_file():
            rows.append((path, []))
            continue
        pairs, size = read_voc(xml)
        rows.append((path, _checked(pairs, size or original_size(path), xml)))
    return rows


def _index_neu_det(root: Path) -> tuple[list[str], list[Row]]:
    images_dir = _find_child(root, "IMAGES")
    if images_dir is None:
        raise UserError(f"{root} has no IMAGES/ folder, which the neu-det layout needs; check data.layout")
    rows = []
    for path, pairs in _voc_rows(_images_in(images_dir), _find_child(root, "ANNOTATIONS")):
        if "_" not in path.stem:
            raise UserError(f"{path} is not named <class>_<n>: rename it or use data.layout=folders")
        rows.append((str(path.relative_to(root)), path.stem.rsplit("_", 1)[0], pairs))
    class_names = _class_order({r[1] for r in rows})
    for path, _, pairs in rows:
        check_names([n for n, _ in pairs], class_names, root / path)
    return class_names, rows


def _majority_rows(root: Path, rows: list[tuple[Path, list[tuple[str, Box]]]],
                   class_names: Sequence[str]) -> list[Row]:
    """Rows whose image class is that of most of its boxes (ties: the earlier class in the list)."""
    out = []
    for path, pairs in rows:
        if not pairs:
            raise UserError(f"{path} has no box: annotate it or move it out of the dataset "
                            "(a detection dataset's images each need at least one box)")
        counts = Counter(name for name, _ in pairs)
        label = min(counts, key=lambda n: (-counts[n], class_names.index(n)))
        out.append((str(path.relative_to(root)), label, pairs))
    return out


def _index_voc(root: Path) -> tuple[list[str], list[Row]]:
    images_dir, ann_dir = _find_child(root, "JPEGImages"), _find_child(root, "Annotations")
    if images_dir is None or ann_dir is None:
        raise UserError(f"{root} needs JPEGImages/ and Annotations/ for the voc layout; check data.layout")
    rows = _voc_rows(_images_in(images_dir), ann_dir)
    class_names = read_class_list(root) or _class_order({n for _, pairs in rows for n, _ in pairs})
    for path, pairs in rows:
        check_names([n for n, _ in pairs], class_names, ann_dir / f"{path.stem}.xml")
    return list(class_names), _majority_rows(root, rows, class_names)


def _index_yolo(root: Path) -> tuple[list[str], list[Row]]:
    images_dir, labels_dir = _find_child(root, "images"), _find_child(root, "labels")
    if images_dir is None or labels_dir is None:
        raise UserError(f"{root} needs images/ and labels/ for the yolo layout; check data.layout")
    class_names = read_class_list(root)
    if class_names is None:
        raise UserError(f"{root} has no class list: a YOLO dataset needs classes.txt (one name per line) "
                        "or a data.yaml with names:")
    rows = []
    for path in _images_in(images_dir):
        txt = labels_dir / f"{path.stem}.txt"
        size = original_size(path)
        rows.append((path, _checked(read_yolo(txt, class_names, size), size, txt) if txt.is_file() else []))
    return class_names, _majority_rows(root, rows, class_names)


def _index_neu_cls(root: Path) -> tuple[list[str], list[Row]]:
    rows = []
    for path in _images_in(root):
        cls = _neu_cls_class(path)
        if cls is None:
            raise UserError(f"{path} has no NEU-CLS class prefix (Cr_, In_, Pa_, PS_, RS_, Sc_)")
        rows.append((path.name, cls, []))
    return _class_order({r[1] for r in rows}), rows


def _index_folders(root: Path) -> tuple[list[str], list[Row]]:
    rows = []
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for folder in class_dirs:
        images = _images_in(folder)
        if not images:
            raise UserError(
                f"class folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                "add images or remove the folder"
            )
        rows += [(str(p.relative_to(root)), folder.name, []) for p in images]
    return _class_order({r[1] for r in rows}), rows


_READERS = {"neu-det": _index_neu_det, "neu-cls": _index_neu_cls, "folders": _index_folders,
            "voc": _index_voc, "yolo": _index_yolo}


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
    samples = [Sample(path, label_of[cls], tuple(b for _, b in pairs), tuple(label_of[n] for n, _ in pairs))
               for path, cls, pairs in rows]
    return DatasetIndex(root=root, layout=layout, class_names=class_names, samples=samples)
