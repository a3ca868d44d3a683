"""Where rows go: a CSV written whole at the end (a batch run), or one appended row by row (--watch)."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from neu_defects_runtime.errors import InputError


def write_whole(path: Path, header: list[str], rows: Iterable[list[str]]) -> Path:
    """The CSV appears complete or not at all: written beside ``path``, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class AppendingCsv:
    """A CSV that grows one flushed row at a time, so stopping loses nothing already answered.

    An existing file is continued when its header is this model's; the paths it already lists are
    ``done``, so a restarted watch does not answer an image twice.
    """

    def __init__(self, path: Path, header: list[str]):
        self.path, self.done = path, set()
        if path.is_file() and path.stat().st_size:
            with open(path, newline="") as handle:
                lines = list(csv.reader(handle))
            if lines[0] != header:
                raise InputError(f"{path} holds another model's columns ({','.join(lines[0][:4])}...): pass a new "
                                 "--output file")
            self.done = {line[0] for line in lines[1:] if line}
            self.handle = open(path, "a", newline="")  # noqa: SIM115 - open for the life of the watch
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(path, "w", newline="")  # noqa: SIM115
            csv.writer(self.handle).writerow(header)
            self.handle.flush()
        self.writer = csv.writer(self.handle)

    def add(self, path: str, rows: list[list[str]]) -> None:
        self.writer.writerows(rows)
        self.handle.flush()
        self.done.add(path)

    def close(self) -> None:
        self.handle.close()
