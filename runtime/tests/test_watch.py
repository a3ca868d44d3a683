"""--watch: images dropped one by one are each answered once, and Ctrl-C loses none of them."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import uniform_image

INTERVAL, SETTLE = "0.1", "0.8"


def rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def has_rows(path: Path, count: int) -> bool:
    return len(rows(path)) == count


def wait_for(predicate, *args, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate(*args):
            return True
        time.sleep(0.05)
    return False


def start(model: Path, folder: Path, output: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "neu_defects_runtime", str(model), "--watch", str(folder),
                                "--output", str(output), "--interval", INTERVAL, "--settle", SETTLE, "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The banner comes once the model is open and the watch begins.
    assert wait_for(lambda: output.exists()), "the watch did not start"
    return process


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return err


def test_dropped_files_are_each_answered_once_and_none_lost_on_ctrl_c(classifier, tmp_path):
    inbox, output = tmp_path / "inbox", tmp_path / "watch.csv"
    inbox.mkdir()
    process = start(classifier, inbox, output)
    try:
        dropped = []
        for n in range(6):
            staged = uniform_image(tmp_path / "staging" / f"shot_{n}.png", 30 * n)
            target = inbox / ("sub" if n % 2 else "") / staged.name
            target.parent.mkdir(exist_ok=True)
            data = staged.read_bytes()
            # Written in two parts with a pause of several poll intervals: a file still arriving must
            # not be taken (a half-written PNG would be reported unreadable).
            with open(target, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                time.sleep(3 * float(INTERVAL))
                handle.write(data[len(data) // 2:])
            dropped.append(str(target))
            assert wait_for(has_rows, output, len(dropped) + 1), rows(output)
        (inbox / "readme.txt").write_text("ignored: not an image")
        time.sleep(5 * float(INTERVAL))
    finally:
        err = stop(process)
    header, *answered = rows(output)
    assert header[:3] == ["path", "pred", "confidence"]
    assert sorted(r[0] for r in answered) == sorted(dropped)
    assert "skipped" not in err

    # A second watch over the same folder continues the CSV without answering anything twice.
    process = start(classifier, inbox, output)
    try:
        uniform_image(inbox / "late.png", 77)
        assert wait_for(has_rows, output, len(dropped) + 2)
        time.sleep(5 * float(INTERVAL))
    finally:
        stop(process)
    header_again, *answered = rows(output)
    assert header_again == header
    assert sorted(r[0] for r in answered) == sorted([*dropped, str(inbox / "late.png")])


def test_an_unreadable_drop_is_reported_once_and_the_watch_goes_on(classifier, tmp_path):
    inbox, output = tmp_path / "inbox", tmp_path / "watch.csv"
    inbox.mkdir()
    process = start(classifier, inbox, output)
    try:
        (inbox / "broken.png").write_bytes(b"\x89PNG not really")
        time.sleep(float(SETTLE) + 4 * float(INTERVAL))
        uniform_image(inbox / "fine.png", 200)
        assert wait_for(has_rows, output, 2)
    finally:
        err = stop(process)
    assert [Path(r[0]).name for r in rows(output)[1:]] == ["fine.png"]
    assert err.count(f"skipped cannot decode image {inbox / 'broken.png'}") == 1
