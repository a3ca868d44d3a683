"""``python -m neu_defects_runtime``: predict's CSV from a file, folder or glob; one-line errors; --threads."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BOXES, CLASSES, LABELS, SCORES, expected_probabilities, uniform_image

from neu_defects_runtime.cli import main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neu_defects_runtime", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def read(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_folder_is_searched_recursively_and_answered_as_predict_writes(classifier, tmp_path):
    levels = {"dark.png": 10, "nested/bright.jpg": 250, "nested/deeper/mid.bmp": 140}
    for name, level in levels.items():
        uniform_image(tmp_path / "shots" / name, level)
    (tmp_path / "shots" / "notes.txt").write_text("not an image")
    result = run(classifier, tmp_path / "shots", "--output", tmp_path / "p.csv", "--threads", 1)
    assert result.returncode == 0, result.stderr

    header, *rows = read(tmp_path / "p.csv")
    assert header == ["path", "pred", "confidence", *(f"p_{c}" for c in CLASSES)]
    assert [r[0] for r in rows] == sorted(str(tmp_path / "shots" / name) for name in levels)
    for row in rows:
        name = str(Path(row[0]).relative_to(tmp_path / "shots"))
        probs = expected_probabilities(levels[name])
        assert all(len(v.split(".")[1]) == 6 for v in row[2:])
        assert np.abs(np.array(row[3:], dtype=float) - probs).max() < 2e-6
        assert row[1] == CLASSES[int(probs.argmax())] and float(row[2]) == pytest.approx(probs.max(), abs=2e-6)
    by_name = {Path(r[0]).name: r[1] for r in rows}
    assert by_name["dark.png"] == "crazing" and by_name["bright.jpg"] == "scratches"


def test_a_glob_and_a_single_file(classifier, tmp_path):
    for n in range(3):
        uniform_image(tmp_path / f"a{n}.png", 40 * n)
    uniform_image(tmp_path / "b.png", 200)
    assert main([str(classifier), str(tmp_path / "a*.png"), "-o", str(tmp_path / "glob.csv")]) == 0
    assert [Path(r[0]).name for r in read(tmp_path / "glob.csv")[1:]] == ["a0.png", "a1.png", "a2.png"]
    assert main([str(classifier), str(tmp_path / "b.png"), "-o", str(tmp_path / "one.csv")]) == 0
    assert len(read(tmp_path / "one.csv")) == 2


def test_gray_rgb_and_16_bit_files_get_the_same_answer(classifier, tmp_path):
    uniform_image(tmp_path / "in" / "gray.png", 180)
    uniform_image(tmp_path / "in" / "rgb.png", 180, mode="RGB")
    from PIL import Image

    Image.fromarray(np.full((30, 40), 180 * 257, dtype=np.uint16)).save(tmp_path / "in" / "sixteen.png")
    assert Image.open(tmp_path / "in" / "sixteen.png").mode.startswith("I")
    assert main([str(classifier), str(tmp_path / "in"), "-o", str(tmp_path / "p.csv")]) == 0
    answers = {Path(r[0]).name: r[1:] for r in read(tmp_path / "p.csv")[1:]}
    assert answers["gray.png"] == answers["rgb.png"] == answers["sixteen.png"]


def test_unreadable_files_are_listed_and_skipped(classifier, tmp_path):
    uniform_image(tmp_path / "in" / "good.png", 90)
    good = (tmp_path / "in" / "good.png").read_bytes()
    (tmp_path / "in" / "truncated.png").write_bytes(good[:40])
    (tmp_path / "in" / "text.jpg").write_text("hello")
    result = run(classifier, tmp_path / "in", "-o", tmp_path / "p.csv")
    assert result.returncode == 0, result.stderr
    assert [Path(r[0]).name for r in read(tmp_path / "p.csv")[1:]] == ["good.png"]
    for bad in ("truncated.png", "text.jpg"):
        assert f"skipped cannot decode image {tmp_path / 'in' / bad}" in result.stderr


@pytest.mark.parametrize("case", ["missing model", "no metadata", "wrong suffix", "empty folder", "no match",
                                  "all unreadable", "negative threads", "no input", "missing sidecar"])
def test_mistakes_are_one_line_with_exit_2_and_write_nothing(case, classifier, unlabelled, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("no")
    (tmp_path / "model.tflite").write_bytes(b"TFL3")
    args, expected = {
        "missing model": ([tmp_path / "gone.onnx", tmp_path], "gone.onnx does not exist"),
        "no metadata": ([unlabelled, tmp_path / "bad"], "has no 'neu_defects' metadata"),
        "wrong suffix": ([tmp_path / "model.pt", tmp_path], "neither .tflite nor .onnx"),
        "empty folder": ([classifier, tmp_path / "empty"], "matches no files"),
        "no match": ([classifier, tmp_path / "nothing_*.png"], "matches no files"),
        "all unreadable": ([classifier, tmp_path / "bad"], "none of the 1 files"),
        "negative threads": ([classifier, tmp_path / "bad", "--threads", -2], "--threads -2"),
        "no input": ([classifier], "nothing to do"),
        "missing sidecar": ([tmp_path / "model.tflite", tmp_path / "bad"], "model.tflite.json is missing"),
    }[case]
    result = run(*args, "--output", tmp_path / "p.csv")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if not line.startswith("skipped")]) == 1, result.stderr
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert not (tmp_path / "p.csv").exists()


def test_detector_rows_are_in_the_original_pixels(detector, tmp_path):
    uniform_image(tmp_path / "wide.png", 120, size=(64, 48))
    assert main([str(detector), str(tmp_path / "wide.png"), "-o", str(tmp_path / "boxes.csv"),
                 "--min-score", "0.3"]) == 0
    header, *rows = read(tmp_path / "boxes.csv")
    assert header == ["path", "label", "score", "x1", "y1", "x2", "y2"]
    kept = np.argsort(-SCORES)[: int((SCORES >= 0.3).sum())]
    assert [r[1] for r in rows] == [CLASSES[LABELS[k]] for k in kept]
    assert [float(r[2]) for r in rows] == pytest.approx(SCORES[kept], abs=1e-4)
    scale = np.array([64 / 32, 48 / 32] * 2)
    assert np.array([r[3:] for r in rows], dtype=float) == pytest.approx(BOXES[kept] * scale, abs=0.005)
