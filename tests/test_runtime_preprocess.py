"""One preprocessing: the torch-free runtime feeds a model the very tensors training's Preprocessor does.

``neu_defects_runtime.preprocess`` (numpy + Pillow) against ``neu_defects.deploy.backends.Preprocessor``
(the RAM cache's decode and resize, then albumentations' Normalize and ToTensorV2), on real NEU
images saved as gray, RGB, palette and 16-bit files of several sizes, for gray and RGB specs at
input sizes that shrink, keep and enlarge the 200 x 200 originals. Equality is exact, not close.
"""

from __future__ import annotations

import numpy as np
import pytest
from neu_defects_runtime import preprocess as runtime
from neu_defects_runtime.errors import InputError
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.data import NEU_CLASSES
from neu_defects.deploy.backends import Preprocessor

pytestmark = pytest.mark.real_data

SPECS = [
    {"in_chans": 1, "image_size": 64, "mean": [0.5], "std": [0.25]},
    {"in_chans": 1, "image_size": 200, "mean": [0.41], "std": [0.17]},
    {"in_chans": 3, "image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    {"in_chans": 3, "image_size": 97, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
]


@pytest.fixture(scope="module")
def variants(neu_root, tmp_path_factory) -> list:
    """Each class's first image as the camera might deliver it: formats, bit depths, colours, sizes."""
    out = tmp_path_factory.mktemp("variants")
    files = []
    for k, cls in enumerate(NEU_CLASSES):
        source = neu_root / "IMAGES" / f"{cls}_{k + 1}.jpg"
        gray = np.asarray(Image.open(source).convert("L"))
        files.append(source)
        Image.fromarray(gray.astype(np.uint16) * 257 + k).save(out / f"{cls}_16bit.png")
        # Not 16 bits of range: a 16-bit file holding 8-bit values is read as it is, not rescaled.
        Image.fromarray(gray.astype(np.uint16)).save(out / f"{cls}_16bit_low.png")
        tinted = np.stack([gray, np.roll(gray, 7, axis=0), 255 - gray], axis=-1)
        Image.fromarray(tinted).save(out / f"{cls}_rgb.png")
        Image.fromarray(tinted).convert("P").save(out / f"{cls}_palette.png")
        odd = Image.fromarray(tinted).resize((131 + 17 * k, 89 + 5 * k), Image.Resampling.BICUBIC)
        odd.save(out / f"{cls}_odd.bmp")
        Image.fromarray(gray).resize((301, 257)).save(out / f"{cls}_large.tif")
    return sorted(files + [p for p in out.iterdir()])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['in_chans']}ch_{s['image_size']}px")
def test_runtime_tensors_equal_trainings_to_the_bit(spec, variants):
    ours, theirs = runtime.Preprocessor(spec), Preprocessor(spec)
    assert len(variants) == 7 * len(NEU_CLASSES)
    for path in variants:
        got, expected = ours(path), theirs(path)
        assert got.dtype == expected.dtype == np.float32
        assert got.shape == expected.shape == (spec["in_chans"], spec["image_size"], spec["image_size"])
        assert np.array_equal(got, expected), path


def test_decode_resize_and_file_search_agree_with_the_main_package(variants, neu_root):
    from neu_defects.data.io import decode_image, find_images, resize

    for path in variants:
        for channels in (1, 3):
            array = runtime.decode_image(path, channels)
            assert np.array_equal(array, decode_image(path, channels))
            assert np.array_equal(runtime.resize(array, 77), resize(array, 77))
    folder = variants[-1].parent
    assert runtime.find_images(str(folder)) == find_images(str(folder))
    pattern = str(neu_root / "IMAGES" / "scratches_1*.jpg")
    assert runtime.find_images(pattern) == find_images(pattern)


def test_unreadable_files_fail_alike(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    for path in (tmp_path / "text.png", tmp_path / "missing.png"):
        with pytest.raises(UserError) as main_error:
            Preprocessor(SPECS[0])(path)
        with pytest.raises(InputError) as runtime_error:
            runtime.Preprocessor(SPECS[0])(path)
        assert str(runtime_error.value) == str(main_error.value)
