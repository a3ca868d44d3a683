"""Writing run outputs whole: a file appears complete or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO], Any], binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private; outputs are meant to be read like any other file.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as handle:
            write(handle)
            # On disk before the rename, so even a machine crash leaves the old file or the new one.
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda h: (json.dump(obj, h, indent=2, sort_keys=False), h.write("\n")))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda h: h.write(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda h: h.write(data), binary=True)
