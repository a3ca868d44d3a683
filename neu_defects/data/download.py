"""NEU-DET on first use: fetch an archive, take the NEU-DET files out of it, check each against the
checksums shipped with the package (``NEU-DET.sha256``), and move the checked folder into place.

A file is found by its name wherever it sits in the archive (any top folder, split into ``IMAGES/`` and
``Validation_Images/`` as the default GitHub mirror ships it, or merged) and written where the manifest
puts it, so the result is always the layout the index reads: ``IMAGES/<class>_<n>.jpg`` and
``ANNOTATIONS/<class>_<n>.xml``. The checksums are of the files, not of the archive, so any mirror or
re-packing verifies; files the manifest does not list (the mirror's notebooks, say) are left out.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import shutil
import ssl
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path, PurePosixPath

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from neu_defects.core.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_URL = ("https://github.com/siddhartamukherjee/NEU-DET-Steel-Surface-Defect-Detection/archive/refs/heads/"
               "master.zip")
MANIFEST = "NEU-DET.sha256"
DOWNLOAD_HINT = ("get NEU-DET or NEU-CLS by hand (README, 'Dataset') and put it in ./data/NEU-DET, "
                 "or pass data.root=PATH or set NEU_DATA_DIR")
# An offline machine or a dead host fails within CONNECT_TIMEOUT; a server that is slow to start (GitHub
# builds the archive on the fly) or a transfer that stalls gets READ_TIMEOUT.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
CHUNK = 1 << 20
SHOWN = 5  # offending files a verification error names


class _ReadTimeout:
    """Connects within the timeout urlopen passes, then waits up to READ_TIMEOUT for each read."""

    def connect(self):
        super().connect()
        self.sock.settimeout(READ_TIMEOUT)


class _HTTPConnection(_ReadTimeout, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ReadTimeout, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=ssl.create_default_context())


def read_manifest() -> dict[str, str]:
    """The shipped checksums: path inside the dataset folder (``IMAGES/crazing_1.jpg``) -> sha256."""
    manifest = {}
    for line in resources.files(__package__).joinpath(MANIFEST).read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        # sha256sum's paths start with the dataset folder (NEU-DET/...); "*" marks its binary mode.
        manifest[path.lstrip("*").split("/", 1)[1]] = digest
    return manifest


def _why(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def fetch(url: str, path: Path) -> None:
    """Save ``url`` (http, https or file) to ``path`` with a progress bar on stderr."""
    opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
    try:
        with opener.open(url, timeout=CONNECT_TIMEOUT) as response, path.open("wb") as out, progress:
            task = progress.add_task("NEU-DET", total=int(response.headers.get("Content-Length") or 0) or None)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                progress.advance(task, len(chunk))
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise UserError(f"could not download NEU-DET from {url} ({_why(err)}): {DOWNLOAD_HINT}") from err


def _members(archive: Path, url: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """The name and a reader of each file in a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.read(info)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf:
                if member.isfile():
                    yield member.name, lambda member=member: tf.extractfile(member).read()
    else:
        raise UserError(f"the file downloaded from {url} is not a whole zip or tar archive: {DOWNLOAD_HINT}")


def collect(archive: Path, manifest: dict[str, str], out: Path, url: str) -> list[str]:
    """Write each manifest file found in ``archive`` whose checksum matches into ``out``, at its manifest
    path; return the manifest paths left missing or different. The first copy that matches wins, so
    stray copies elsewhere in the archive do no harm. NEU-DET's file names are unique across folders."""
    by_name = {PurePosixPath(p).name: p for p in manifest}
    found: set[str] = set()
    different: set[str] = set()
    try:
        for name, read in _members(archive, url):
            path = by_name.get(PurePosixPath(name.replace("\\", "/")).name)
            if path is None or path in found:
                continue
            data = read()
            if hashlib.sha256(data).hexdigest() != manifest[path]:
                different.add(path)
                continue
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_bytes(data)
            found.add(path)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise UserError(f"the archive from {url} is damaged ({_why(err)}): {DOWNLOAD_HINT}") from err
    return sorted(f"{p} ({'different' if p in different else 'missing'})" for p in manifest if p not in found)


def download_neu_det(target: Path, url: str = DEFAULT_URL, manifest: dict[str, str] | None = None) -> Path:
    """Download NEU-DET from ``url`` into ``target``, every file verified, or leave nothing behind.

    The work happens in a temporary folder beside ``target``, renamed into place only once verified and
    removed whatever happens (a failure, Ctrl-C), so ``target`` is whole or absent.
    """
    manifest = manifest or read_manifest()
    made_parent = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        log.info("no dataset at %s: downloading NEU-DET from %s", target, url)
        fetch(url, work / "archive")
        problems = collect(work / "archive", manifest, work / target.name, url)
        if problems:
            more = ", ..." if len(problems) > SHOWN else ""
            raise UserError(f"NEU-DET from {url} fails its checksums ({MANIFEST}): {len(problems)} of "
                            f"{len(manifest)} files missing or different ({', '.join(problems[:SHOWN])}{more}); "
                            f"nothing was saved: {DOWNLOAD_HINT}")
        try:
            (work / target.name).rename(target)
        except OSError:
            # Another run (a parallel sweep job) finished its download first: use that one.
            if not target.is_dir():
                raise
        log.info("NEU-DET: %d files verified, saved in %s", len(manifest), target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made_parent and not target.exists():
            with contextlib.suppress(OSError):
                target.parent.rmdir()
