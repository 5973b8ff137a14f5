"""Virtualenvs of their own for tools whose dependencies clash with the gateway's (the octoai SDK needs
pydantic 1; checkov pins half of PyPI), at the repository root, created once and reused.

A venv is rebuilt when its pins change (a stamp file holds their hash). A file lock in the temp dir,
named after the venv's path, keeps parallel test runs from building one twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["ToolVenv", "venv_lock"]


@contextlib.contextmanager
def venv_lock(path: Path, name: str) -> Iterator[None]:
    """Holds the lock of the venv at ``path`` while it is built (parallel test runs wait). The lock
    lives in the temp dir, keyed by the venv's path, so that the checkout gets no stray file."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"{name}-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ToolVenv:
    def __init__(self, name: str, path: Path, pins: Sequence[str], check: str,
                 pythons: Sequence[str | None] = ("python3",)) -> None:
        """``check``: Python code that must run in the venv once it is built (an import, a version)."""
        self.name = name
        self.path = path
        self.pins = tuple(pins)
        self.check = check
        self.pythons = tuple(pythons)
        self._stamp = path / f".{name}-installed"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def _stamp_text(self) -> str:
        return hashlib.sha256("\n".join(self.pins).encode()).hexdigest()

    def _ready(self) -> bool:
        return self._stamp.is_file() and self._stamp.read_text().strip() == self._stamp_text() and self.python.is_file()

    def _base_python(self) -> str:
        for candidate in self.pythons:
            if candidate and (found := shutil.which(candidate)):
                return found
        return sys.executable

    def ensure(self, timeout: float = 900.0) -> Path:
        """Creates the venv if it is missing or its pins changed; returns its python. Quick once made."""
        if self._ready():
            return self.python
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with venv_lock(self.path, self.name):
            if self._ready():  # another process built it while this one waited for the lock
                return self.python
            if self.path.exists():
                shutil.rmtree(self.path)
            log: list[str] = []

            def run(*cmd: str) -> None:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                log.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
                if proc.returncode != 0:
                    raise RuntimeError(f"building {self.path} failed:\n" + "\n".join(log))

            run(self._base_python(), "-m", "venv", str(self.path))
            run(str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *self.pins)
            run(str(self.python), "-c", self.check)
            self._stamp.write_text(self._stamp_text() + "\n")
        return self.python
