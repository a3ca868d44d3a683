"""Shared fixtures: tiny generated datasets in each layout (unit tests) and the real NEU data.

Real-data tests fail, never skip, when NEU_DATA_DIR is missing: a skipped accuracy floor would
let a broken model pass CI.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Exports of frozen backbones (models/frozen.py) go to a folder of this session, not the user's cache;
# subprocesses and xdist workers inherit it, so one export serves every test of the session. The process
# that made it removes it at exit (each session otherwise left up to 50 MB in the temp folder).
if "NEU_DEFECTS_CACHE" not in os.environ:
    os.environ["NEU_DEFECTS_CACHE"] = tempfile.mkdtemp(prefix="neu_defects_cache_")
    atexit.register(shutil.rmtree, os.environ["NEU_DEFECTS_CACHE"], ignore_errors=True)

# ONNX export, ONNX Runtime inference and the benchmark need the [export] extra (part of [dev], so CI
# runs them); without it the rest of the suite runs, frozen backbones falling back to eager.
collect_ignore = [] if importlib.util.find_spec("onnxruntime") else ["test_export.py", "test_benchmark.py"]
# anomalib's models need the [anomaly] extra (part of [dev]); TFLite export needs requirements-tflite.txt.
if not importlib.util.find_spec("anomalib"):
    collect_ignore.append("test_zoo.py")
if not importlib.util.find_spec("litert_torch"):
    collect_ignore.append("test_tflite.py")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FIXTURE_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
CLS_PREFIX = {"crazing": "Cr", "inclusion": "In", "patches": "Pa", "pitted_surface": "PS",
              "rolled-in_scale": "RS", "scratches": "Sc"}
PER_CLASS = 10
SIZE = 48


def toy_labels(per_class: int = 20, classes: int = 3) -> tuple[list[int], list[str]]:
    """Labels of ``classes`` classes with ``per_class`` images each, and one group per image."""
    labels = [c for c in range(classes) for _ in range(per_class)]
    return labels, [f"g{i}" for i in range(len(labels))]


def fixture_image(label: int, n: int) -> np.ndarray:
    """A gray texture whose stripe orientation and brightness depend on the class: learnable in seconds."""
    rng = np.random.default_rng(1000 * label + n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    angle = label * np.pi / len(FIXTURE_CLASSES)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.6)
    image = 100 + 20 * label + 40 * stripes + rng.normal(0, 8, (SIZE, SIZE))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_voc(path: Path, filename: str, cls: str, box: tuple[int, int, int, int]) -> None:
    xmin, ymin, xmax, ymax = box
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{SIZE}</width><height>{SIZE}</height>"
        f"<depth>1</depth></size><object><name>{cls}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    """Small datasets in the three layouts: <root>/neu-det, <root>/neu-cls, <root>/folders."""
    root = tmp_path_factory.mktemp("fixture_data")
    det, cls_dir, folders = root / "neu-det", root / "neu-cls", root / "folders"
    (det / "IMAGES").mkdir(parents=True)
    (det / "ANNOTATIONS").mkdir()
    cls_dir.mkdir()
    for label, cls in enumerate(FIXTURE_CLASSES):
        for n in range(1, PER_CLASS + 1):
            image = Image.fromarray(fixture_image(label, n))
            image.convert("RGB").save(det / "IMAGES" / f"{cls}_{n}.jpg", quality=95)
            write_voc(det / "ANNOTATIONS" / f"{cls}_{n}.xml", f"{cls}_{n}.jpg", cls, (4, 4, 24, 30))
            image.save(cls_dir / f"{CLS_PREFIX[cls]}_{n}.bmp")
    # An exact duplicate, like NEU's patches_101 / patches_105, annotated like its twin.
    (det / "IMAGES" / "patches_99.jpg").write_bytes((det / "IMAGES" / "patches_1.jpg").read_bytes())
    write_voc(det / "ANNOTATIONS" / "patches_99.xml", "patches_99.jpg", "patches", (4, 4, 24, 30))
    for label, name in enumerate(("good", "dent", "scratch")):
        (folders / name).mkdir(parents=True)
        for n in range(PER_CLASS):
            Image.fromarray(fixture_image(label * 2, n)).save(folders / name / f"{name}_{n}.png")
    return root


@pytest.fixture(scope="session")
def neu_root() -> Path:
    """The real NEU-DET folder from NEU_DATA_DIR."""
    value = os.environ.get("NEU_DATA_DIR")
    if not value or not (Path(value) / "IMAGES").is_dir():
        pytest.fail(f"NEU_DATA_DIR={value!r} is not the NEU-DET folder: real-data tests need it "
                    "(export NEU_DATA_DIR=../shared/data/NEU-DET)")
    return Path(value)


def compose_cfg(config_name: str, overrides: list[str], run_dir: Path):
    """Compose an entry config as Hydra would, with paths.output_dir pointing at ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[*overrides, f"paths.output_dir={run_dir}"])
    GlobalHydra.instance().clear()
    return cfg


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal surface: fine horizontal stripes under sensor noise, as a float image."""
    yy = np.mgrid[0:size, 0:size][0]
    return 120 + 25 * np.sin(yy * 0.8) + rng.normal(0, 6, (size, size))


def write_mvtec_category(root: Path, size: int, rgb: bool, seed: int) -> None:
    """One MVTec AD category: 24 + 6 normal images, two defect types with masks, one without."""
    rng = np.random.default_rng(seed)

    def save(array: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
        (image.convert("RGB") if rgb else image).save(path)

    for split, count in (("train", 24), ("test", 6)):
        for n in range(count):
            save(texture(rng, size), root / split / "good" / f"{n:03d}.png")
    yy, xx = np.mgrid[0:size, 0:size]
    for kind, count in (("scratch", 6), ("blob", 4), ("stain", 3)):
        for n in range(count):
            image = texture(rng, size)
            if kind == "scratch":
                col = int(rng.integers(size // 4, 3 * size // 4))
                mask = (np.abs(xx - col) <= 1) & (yy > size // 5) & (yy < 4 * size // 5)
                image[mask] = 250
            else:
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 8) ** 2
                image[mask] = 20 if kind == "blob" else 200
            save(image, root / "test" / kind / f"{n:03d}.png")
            if kind != "stain":  # a defect type without masks: scored by image only
                save(mask.astype(np.uint8) * 255, root / "ground_truth" / kind / f"{n:03d}_mask.png")


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    """An MVTec AD root with two categories: ``tiles`` (gray, 64 px) and ``carpet`` (RGB, 80 px)."""
    root = tmp_path_factory.mktemp("mvtec")
    write_mvtec_category(root / "tiles", 64, rgb=False, seed=0)
    write_mvtec_category(root / "carpet", 80, rgb=True, seed=1)
    return root
