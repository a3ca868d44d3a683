"""Watching a folder: each image that lands in it is answered once, when it has finished arriving.

The folder is polled (no inotify: the same code runs on any OS and on network shares). A file is
taken once its size and modification time have stayed unchanged for ``settle`` seconds, so a
camera or ``scp`` still writing it is left alone; one that then fails to decode is reported and
retried only if it changes again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from neu_defects_runtime.errors import InputError
from neu_defects_runtime.preprocess import IMAGE_EXTENSIONS
from neu_defects_runtime.sinks import AppendingCsv

Signature = tuple[int, int]


def signature(path: Path) -> Signature | None:
    try:
        stat = path.stat()
    except OSError:  # gone between listing and stat
        return None
    return stat.st_size, stat.st_mtime_ns


def candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def watch(folder: Path, answer: Callable[[Path], list[list[str]]], sink: AppendingCsv, interval: float = 0.5,
          settle: float = 1.0, stop: Callable[[], bool] = lambda: False) -> tuple[int, int]:
    """Answer every new image in ``folder`` into ``sink`` until interrupted (or ``stop()`` is true).

    Returns (images answered, files skipped as unreadable).
    """
    seen: dict[Path, tuple[Signature | None, float]] = {}
    failed: dict[Path, Signature] = {}
    answered = 0
    while not stop():
        for path in candidates(folder):
            key = str(path)
            if key in sink.done:
                continue
            now, clock = signature(path), time.monotonic()
            if seen.get(path, (None, 0.0))[0] != now:
                seen[path] = (now, clock)
            steady = now is not None and now[0] > 0 and clock - seen[path][1] >= settle
            if not steady or failed.get(path) == now:
                continue
            try:
                rows = answer(path)
            except InputError as err:
                failed[path] = now
                print(f"skipped {err}", file=sys.stderr, flush=True)
                continue
            sink.add(key, rows)
            answered += 1
        time.sleep(interval)
    return answered, len(failed)
