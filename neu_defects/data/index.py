"""The dataset index: which image files exist, their class, and their defect boxes.

Five layouts are read, detected from what is on disk:

- ``neu-det``: ``IMAGES/<class>_<n>.jpg`` plus ``ANNOTATIONS/<class>_<n>.xml`` (Pascal VOC);
- ``neu-cls``: flat ``Cr_1.bmp``, ``In_…``, ``Pa_…``, ``PS_…``, ``RS_…``, ``Sc_…`` files;
- ``folders``: ``root/<class_name>/*.{bmp,jpg,png,…}`` with any classes;
- ``voc``: ``JPEGImages/`` plus ``Annotations/*.xml``, classes from ``classes.txt`` or the XML names;
- ``yolo``: ``images/`` plus ``labels/*.txt`` and a class list (``classes.txt`` or ``data.yaml``);
- ``mvtec``: MVTec AD's ``train/good/``, ``test/good/``, ``test/<defect type>/`` and, optionally,
  ``ground_truth/<defect type>/<name>_mask.png``; classes are ``good`` then the defect types. A root
  holding several categories (``<root>/<category>/train/good``) needs ``category``.

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
from neu_defects.data.download import DEFAULT_URL, DOWNLOAD_HINT, download_neu_det
from neu_defects.data.io import IMAGE_EXTENSIONS, original_size

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
NEU_CLS_PREFIXES = {"cr": "crazing", "in": "inclusion", "pa": "patches", "ps": "pitted_surface",
                    "rs": "rolled-in_scale", "sc": "scratches"}
LAYOUTS = ("auto", "neu-det", "neu-cls", "folders", "voc", "yolo", "mvtec")
MVTEC_NORMAL = "good"
MASK_SUFFIX = "_mask"



@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the index root, class id, boxes with their class ids, and the
    path of its anomaly mask (relative to the root) when it has one."""

    path: str
    label: int
    boxes: tuple[Box, ...] = ()
    box_labels: tuple[int, ...] = ()
    mask: str | None = None

# A reader's row: path relative to the root, image class, (box class, box) pairs, mask path or None.
Row = tuple[str, str, list[tuple[str, Box]], str | None]


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
    if mvtec_categories(root) or (root / "train" / MVTEC_NORMAL).is_dir():
        return "mvtec"
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
        rows.append((str(path.relative_to(root)), path.stem.rsplit("_", 1)[0], pairs, None))
    class_names = _class_order({r[1] for r in rows})
    for path, _, pairs, _ in rows:
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
        out.append((str(path.relative_to(root)), label, pairs, None))
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
        rows.append((path.name, cls, [], None))
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
        rows += [(str(p.relative_to(root)), folder.name, [], None) for p in images]
    return _class_order({r[1] for r in rows}), rows


def mvtec_categories(root: Path) -> list[str]:
    """The subfolders of ``root`` that are MVTec AD categories (hold ``train/good/``)."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "train" / MVTEC_NORMAL).is_dir())


def mvtec_category_root(root: Path, category: str | None) -> Path:
    """The folder of one MVTec AD category: ``root`` itself, or ``root/<category>``."""
    categories = mvtec_categories(root)
    if category:
        if category in categories:
            return root / category
        if not categories and root.name == category and (root / "train" / MVTEC_NORMAL).is_dir():
            return root
        choices = f"choose from {', '.join(categories)}" if categories else "it holds no categories; leave data.category out"
        raise UserError(f"data.category={category} is not a category of {root}: {choices}")
    if (root / "train" / MVTEC_NORMAL).is_dir():
        return root
    if len(categories) == 1:
        return root / categories[0]
    if categories:
        raise UserError(f"{root} holds {len(categories)} MVTec AD categories: pick one with data.category= "
                        f"({', '.join(categories)})")
    raise UserError(f"{root} has no train/good/ folder: an MVTec AD dataset needs train/good/ (normal images), "
                    "test/good/ and test/<defect type>/, with optional ground_truth/<defect type>/<name>_mask.png")


def _mvtec_masks(image_dir: Path, mask_dir: Path) -> dict[Path, Path]:
    """Each test image of one defect type with its mask; an image without a mask, a mask without an
    image, or a mask of another size than its image is an error naming the file."""
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in _images_in(mask_dir) if p.stem.endswith(MASK_SUFFIX)}
    by_stem = {p.stem: p for p in _images_in(image_dir)}
    if orphans := sorted(set(masks) - set(by_stem)):
        raise UserError(f"mask {masks[orphans[0]]} has no image {orphans[0]}.* in {image_dir}: remove the mask "
                        "or add its image")
    pairs = {}
    for stem, image in by_stem.items():
        if stem not in masks:
            raise UserError(f"image {image} has no mask {mask_dir / (stem + MASK_SUFFIX)}.png: add it, or remove "
                            f"{mask_dir} to score that defect type by image only")
        if original_size(masks[stem]) != original_size(image):
            raise UserError(f"mask {masks[stem]} is {original_size(masks[stem])} but its image {image} is "
                            f"{original_size(image)} (width, height): a mask must have its image's size")
        pairs[image] = masks[stem]
    return pairs


def _index_mvtec(root: Path) -> tuple[list[str], list[Row]]:
    train_good = root / "train" / MVTEC_NORMAL
    train_images = _images_in(train_good) if train_good.is_dir() else []
    if not train_images:
        raise UserError(f"{train_good} holds no images: MVTec AD trains on the normal images in train/good/")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise UserError(f"{root} has no test/ folder: add test/good/ and test/<defect type>/ folders")
    rows: list[Row] = [(str(p.relative_to(root)), MVTEC_NORMAL, [], None) for p in train_images]
    types = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    for kind in types:
        images = _images_in(test_dir / kind)
        mask_dir = root / "ground_truth" / kind
        masks = _mvtec_masks(test_dir / kind, mask_dir) if kind != MVTEC_NORMAL and mask_dir.is_dir() else {}
        rows += [(str(p.relative_to(root)), kind, [], str(masks[p].relative_to(root)) if p in masks else None)
                 for p in images]
    defect_types = [t for t in types if t != MVTEC_NORMAL]
    return [MVTEC_NORMAL, *defect_types], rows


_READERS = {"neu-det": _index_neu_det, "neu-cls": _index_neu_cls, "folders": _index_folders,
            "voc": _index_voc, "yolo": _index_yolo, "mvtec": _index_mvtec}


def build_index(root: str | Path | None = None, layout: str = "auto", category: str | None = None,
                download: bool = False, download_url: str = DEFAULT_URL) -> DatasetIndex:
    """Index the dataset at ``root`` (default: ``default_root()``) in the given or detected layout;
    ``category`` picks one category of an MVTec AD root that holds several. ``download`` fetches
    NEU-DET from ``download_url`` into ./data/NEU-DET when neither ``root`` nor NEU_DATA_DIR is given
    and nothing is there yet."""
    # A data.root or NEU_DATA_DIR that does not exist is a mistake to report, not a place to fill; and
    # what the download brings is NEU-DET, which other layouts would not read.
    fetch = download and not root and not os.environ.get("NEU_DATA_DIR") and layout in ("auto", "neu-det")
    root = Path(root) if root else default_root()
    if fetch and not root.exists():
        download_neu_det(root, download_url)
    if layout not in LAYOUTS:
        raise UserError(f"data.layout={layout!r} is not a layout: use one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder: {DOWNLOAD_HINT}")
    if not any(root.iterdir()):
        raise UserError(f"data root {root} is empty: {DOWNLOAD_HINT}")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "mvtec":
        root = mvtec_category_root(root, category)
    elif category:
        raise UserError(f"data.category={category} applies to MVTec AD folders, but {root} is in the {layout} "
                        "layout: leave data.category out")
    class_names, rows = _READERS[layout](root)
    if not rows:
        raise UserError(f"no images found under {root} in the {layout} layout: {DOWNLOAD_HINT}")
    if len(class_names) < 2:
        raise UserError(f"{root} holds only the class {class_names}: a classifier needs at least two")
    label_of = {c: i for i, c in enumerate(class_names)}
    samples = [Sample(path, label_of[cls], tuple(b for _, b in pairs), tuple(label_of[n] for n, _ in pairs), mask)
               for path, cls, pairs, mask in rows]
    return DatasetIndex(root=root, layout=layout, class_names=class_names, samples=samples)
