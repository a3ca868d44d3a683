"""NEU-DET on first use: download, merge a split archive, verify against the shipped checksums, and leave
nothing half-written when any of it fails. Archives are built here and served from file:// URLs."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from hydra.utils import instantiate

from neu_defects.core.errors import UserError
from neu_defects.data import download
from neu_defects.data.download import collect, download_neu_det, read_manifest
from neu_defects.data.index import build_index
from neu_defects.workflows.builders import data_index

from .conftest import compose_cfg

MIRROR_TOP = "NEU-DET-Steel-Surface-Defect-Detection-master"
SPLIT_FOLDERS = {"IMAGES": "Validation_Images", "ANNOTATIONS": "Validation_Annotations"}
# A tiny stand-in for NEU-DET: two classes, one annotation.
TINY = {"IMAGES/crazing_1.jpg": b"crazing one", "IMAGES/crazing_2.jpg": b"crazing two",
        "IMAGES/scratches_1.jpg": b"scratches one",
        "ANNOTATIONS/crazing_1.xml": b"<annotation><size><width>8</width><height>8</height></size></annotation>"}
TINY_MANIFEST = {path: hashlib.sha256(data).hexdigest() for path, data in TINY.items()}
MANUAL_ROUTE = ("README, 'Dataset'", "./data/NEU-DET", "data.root=PATH", "NEU_DATA_DIR")


def mirror_layout(files: dict[str, bytes], top: str = MIRROR_TOP) -> dict[str, bytes]:
    """``files`` as the GitHub mirror ships them: under a top folder, split between IMAGES/ + ANNOTATIONS/
    and Validation_Images/ + Validation_Annotations/ (here: the even-numbered ones)."""
    out = {}
    for path, data in files.items():
        folder, name = path.split("/")
        if int(Path(name).stem.rsplit("_", 1)[1]) % 2 == 0:
            folder = SPLIT_FOLDERS[folder]
        out[f"{top}/{folder}/{name}"] = data
    return out


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def cut_in_half(path: Path) -> Path:
    half = path.with_name(f"half_{path.name}")
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return half


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory with no NEU_DATA_DIR: a newcomer's first run."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("NEU_DATA_DIR", raising=False)
    return work


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    """The folder of tiny archives, with the tiny manifest standing in for the shipped one."""
    monkeypatch.setattr(download, "read_manifest", lambda: dict(TINY_MANIFEST))
    folder = tmp_path / "archives"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def neu_files(neu_root) -> dict[str, bytes]:
    """Every file of the real NEU-DET, by its path in the dataset folder."""
    return {str(p.relative_to(neu_root)): p.read_bytes() for p in neu_root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mirror(neu_files, tmp_path_factory) -> Path:
    files = {**mirror_layout(neu_files), f"{MIRROR_TOP}/README.md": b"# a mirror\n"}
    return write_zip(tmp_path_factory.mktemp("mirror") / "NEU-DET-master.zip", files)


def fails(url: str) -> str:
    with pytest.raises(UserError) as info:
        build_index(download=True, download_url=url)
    return str(info.value)


def test_shipped_manifest_lists_every_neu_det_file_once():
    manifest = read_manifest()
    assert len(manifest) == 3600
    assert len({Path(p).name for p in manifest}) == 3600
    assert sum(p.startswith("IMAGES/") and p.endswith(".jpg") for p in manifest) == 1800
    assert sum(p.startswith("ANNOTATIONS/") and p.endswith(".xml") for p in manifest) == 1800


def test_split_mirror_downloads_merges_and_verifies(mirror, cwd):
    cfg = compose_cfg("train", [f"data.download_url={mirror.as_uri()}"], cwd / "run")
    index = data_index(cfg.data)
    assert (len(index.samples), len(index.class_names), index.layout) == (1800, 6, "neu-det")
    assert index.root == Path("data/NEU-DET") and index.has_boxes
    dataset = cwd / "data" / "NEU-DET"
    assert [p.name for p in (cwd / "data").iterdir()] == ["NEU-DET"]
    assert sorted(p.name for p in dataset.iterdir()) == ["ANNOTATIONS", "IMAGES"]
    assert len(list((dataset / "IMAGES").iterdir())) == 1800


def test_changed_image_fails_verification_and_saves_nothing(neu_files, tmp_path, cwd):
    files = mirror_layout({**neu_files, "IMAGES/crazing_7.jpg": neu_files["IMAGES/crazing_7.jpg"][:-1] + b"\0"})
    message = fails(write_zip(tmp_path / "changed.zip", files).as_uri())
    assert "1 of 3600 files missing or different (IMAGES/crazing_7.jpg (different))" in message
    assert all(part in message for part in MANUAL_ROUTE)
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(("kind", "why"), [("zip", "is not a whole zip or tar archive"), ("tar.gz", "is damaged")])
def test_truncated_archive_fails_and_saves_nothing(kind, why, tiny, cwd):
    write = write_zip if kind == "zip" else write_tar
    # Incompressible padding after NEU-DET's files: the cut falls inside it, the files come through whole.
    archive = write(tiny / f"neu.{kind}", {**mirror_layout(TINY), "padding.bin": random.Random(0).randbytes(100_000)})
    message = fails(cut_in_half(archive).as_uri())
    assert why in message
    assert all(part in message for part in MANUAL_ROUTE)
    assert list(cwd.iterdir()) == []


def test_download_false_gives_the_manual_route_at_once(cwd):
    cfg = compose_cfg("train", ["data.download=false"], cwd / "run")
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        data_index(cfg.data)
    assert time.monotonic() - start < 1
    assert str(info.value).startswith("data root data/NEU-DET does not exist")
    assert all(part in str(info.value) for part in MANUAL_ROUTE)
    assert list(cwd.iterdir()) == []


def test_unreachable_host_fails_fast(cwd):
    start = time.monotonic()
    message = fails("http://127.0.0.1:9/neu.zip")
    assert time.monotonic() - start < 5
    assert message.startswith("could not download NEU-DET from http://127.0.0.1:9/neu.zip (")
    assert all(part in message for part in MANUAL_ROUTE)
    assert list(cwd.iterdir()) == []


def test_a_server_that_never_answers_times_out(cwd, monkeypatch):
    monkeypatch.setattr(download, "READ_TIMEOUT", 0.5)
    # The kernel completes the connection into the listen backlog; nothing ever answers the request.
    with socket.create_server(("127.0.0.1", 0)) as server:
        start = time.monotonic()
        message = fails(f"http://127.0.0.1:{server.getsockname()[1]}/neu.zip")
    assert time.monotonic() - start < download.CONNECT_TIMEOUT
    assert "(timed out)" in message
    assert list(cwd.iterdir()) == []


def test_any_top_folder_nesting_and_tar(tiny, cwd):
    nested = {f"mirror/v2/{name}": data for name, data in mirror_layout(TINY, top="NEU-DET").items()}
    index = build_index(download=True, download_url=write_tar(tiny / "neu.tar.gz", nested).as_uri())
    assert sorted(s.path for s in index.samples) == sorted(p for p in TINY if p.startswith("IMAGES/"))
    assert index.class_names == ["crazing", "scratches"]


def test_stray_copies_and_extra_files_are_left_out(tiny, tmp_path):
    files = {"top/notebooks/crazing_1.jpg": b"another picture", **mirror_layout(TINY, top="top"),
             "top/IMAGES/crazing_3.jpg": b"not in the manifest", "top/README.md": b"hello"}
    out = tmp_path / "out"
    assert collect(write_zip(tiny / "neu.zip", files), TINY_MANIFEST, out, "URL") == []
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == TINY


def test_missing_and_different_files_are_named(tiny, tmp_path):
    files = {**TINY, "IMAGES/crazing_1.jpg": b"changed"}
    del files["ANNOTATIONS/crazing_1.xml"]
    problems = collect(write_zip(tiny / "neu.zip", files), TINY_MANIFEST, tmp_path / "out", "URL")
    assert problems == ["ANNOTATIONS/crazing_1.xml (missing)", "IMAGES/crazing_1.jpg (different)"]


@pytest.mark.parametrize("case", ["data.root", "NEU_DATA_DIR", "layout=mvtec"])
def test_only_the_default_place_is_filled(case, tiny, cwd, monkeypatch):
    url = write_zip(tiny / "neu.zip", TINY).as_uri()
    root = cwd / "elsewhere" if case == "data.root" else None
    if case == "NEU_DATA_DIR":
        monkeypatch.setenv("NEU_DATA_DIR", str(cwd / "elsewhere"))
    layout = "mvtec" if case == "layout=mvtec" else "auto"
    with pytest.raises(UserError, match="does not exist"):
        build_index(root, layout, download=True, download_url=url)
    assert list(cwd.iterdir()) == []


def test_interrupted_download_leaves_nothing(tiny, cwd, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "collect", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_index(download=True, download_url=write_zip(tiny / "neu.zip", TINY).as_uri())
    assert list(cwd.iterdir()) == []


def test_a_dataset_another_run_saved_meanwhile_is_kept(tiny, cwd, monkeypatch):
    target = cwd / "data" / "NEU-DET"
    real_fetch = download.fetch

    def fetch_while_another_run_finishes(url, path):
        real_fetch(url, path)
        (target / "IMAGES").mkdir(parents=True)

    monkeypatch.setattr(download, "fetch", fetch_while_another_run_finishes)
    assert download_neu_det(target, write_zip(tiny / "neu.zip", TINY).as_uri()) == target
    assert [p.name for p in (cwd / "data").iterdir()] == ["NEU-DET"]
    assert list(target.iterdir()) == [target / "IMAGES"]


@pytest.mark.parametrize("data", ["neu", "neu_det", "neu_oneclass"])
def test_neu_data_modules_take_the_download_settings(data, tiny, cwd):
    url = write_zip(tiny / "neu.zip", TINY).as_uri()
    cfg = compose_cfg("train", [f"data={data}", f"data.download_url={url}"], cwd / "run")
    module = instantiate(cfg.data, in_chans=1, mean=[0.5], std=[0.5], image_size=32)
    assert len(module.prepare_index().samples) == 3
