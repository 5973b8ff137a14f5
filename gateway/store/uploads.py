"""The audio files of Uploads, kept on disk beside a store: one file per job, named by its id.

An Upload is spooled (written as its chunks arrive) into ``incoming/`` under the folder, then, once
it is checked, moved into the folder under its job's id (a rename: same file system) and made durable
before its job is, so that a job never exists without its audio. The file goes when the job's inputs
go (it ends, or is deleted). What a crash leaves (a spool half written, a file whose job never got
stored or has ended) is removed at the next start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

__all__ = ["SPOOL_PREFIX", "UploadFiles", "copy_upload", "new_copy", "reader", "remove", "spool_file", "sweep_spools", "sync_dir"]

SPOOL_PREFIX = "upload-"  # then the writing process's pid and "-": a spool whose process is gone is a leftover


def sync_dir(path: Path) -> None:
    """fsync a folder, so that a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Deletes a file if it is there (a quick local unlink, also from the event loop)."""
    with contextlib.suppress(OSError):
        path.unlink()


def reader(path: Path) -> BinaryIO:
    return open(path, "rb")


def new_copy(folder: Path | None) -> tuple[BinaryIO, Path]:
    """An empty file in ``folder`` (or the system's temporary folder), open for writing, for a copy of a
    job's upload kept elsewhere."""
    path = spool_file(folder) if folder is not None else Path(tempfile.mkstemp(prefix=SPOOL_PREFIX)[1])
    return open(path, "wb"), path


def copy_upload(source: Path, folder: Path | None) -> Path:
    """A copy of a job's uploaded audio in ``folder`` (or the system's temporary folder): what the store
    takes in for another job (a retry) while the first keeps its own."""
    f, path = new_copy(folder)
    try:
        with f, open(source, "rb") as src:
            shutil.copyfileobj(src, f, 1024 * 1024)
    except BaseException:
        remove(path)
        raise
    return path


def spool_file(folder: Path) -> Path:
    """A new empty file in ``folder`` (made if missing; the system's temporary folder when it cannot
    be), for an Upload's chunks."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=folder)
    except OSError:
        fd, name = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-")
    os.close(fd)
    return Path(name)


def sweep_spools(folder: Path) -> int:
    """Deletes the spools in ``folder`` that a process now gone was writing (a crash's leftovers; the
    processes sharing a data dir are on one machine, so their pids tell): how many."""
    swept = 0
    if not folder.is_dir():
        return swept
    for path in folder.iterdir():
        pid = path.name[len(SPOOL_PREFIX):].split("-", 1)[0]
        if not path.name.startswith(SPOOL_PREFIX) or not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            swept += 1
    return swept


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


class UploadFiles:
    """The uploaded audio of a single-machine store's jobs (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.incoming = folder / "incoming"
        self.held: set[str] = set()  # jobs with a file here

    def path(self, job_id: str) -> Path:
        return self.folder / job_id

    def put(self, job_id: str, source: Path) -> None:
        """Moves ``source`` in as the job's (copies it when it is on another file system), durably."""
        self.folder.mkdir(parents=True, exist_ok=True)
        dest = self.path(job_id)
        try:
            os.replace(source, dest)
        except OSError:
            shutil.move(source, dest)
        with open(dest, "rb") as f:
            os.fsync(f.fileno())
        sync_dir(self.folder)
        self.held.add(job_id)

    def drop(self, job_id: str) -> None:
        self.held.discard(job_id)
        with contextlib.suppress(OSError):
            self.path(job_id).unlink()

    def recover(self, active: Callable[[Iterable[str]], set[str]]) -> None:
        """At start: spools left by a crash go, and so do files whose job is not ``active`` (given the
        ids, answers those whose inputs are still kept)."""
        if self.incoming.is_dir():
            for leftover in self.incoming.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        if not self.folder.is_dir():
            return
        names = [p.name for p in self.folder.iterdir() if p.is_file()]
        keep = active(names)
        for name in names:
            if name in keep:
                self.held.add(name)
            else:
                with contextlib.suppress(OSError):
                    self.path(name).unlink()
