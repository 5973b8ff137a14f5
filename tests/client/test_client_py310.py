"""The client on the oldest Python it declares (3.10), installed as a user would, against a live gateway.

The venv is ``.venv-py310`` at the repository root (override with ``CLIENT_PY310_VENV``), built once from
a CPython 3.10 (``CLIENT_PY310`` names one; else pyenv's, else ``python3.10`` on the PATH), with the
client's dependencies from PyPI; the client itself is reinstalled from ``clients/python`` whenever its
files change. Skipped, saying so, where no Python 3.10 is found.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import ROOT, ServerProcess
from harness.tool_venv import venv_lock

CLIENT_DIR = ROOT / "clients" / "python"
PROTOS_DIR = ROOT / "protos" / "python"  # the generated code, a distribution the client depends on
VENV = Path(os.environ.get("CLIENT_PY310_VENV", ROOT / ".venv-py310"))
PYTHON = VENV / "bin" / "python"


def _python310() -> str | None:
    """A working CPython 3.10 (a pyenv shim on the PATH may not be one: each candidate is asked)."""
    candidates = [os.environ.get("CLIENT_PY310")]
    for root in (os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv"), "/root/.pyenv"):
        if root:
            candidates += sorted(glob.glob(f"{root}/versions/3.10*/bin/python3.10"), reverse=True)
    candidates.append(shutil.which("python3.10"))
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True, timeout=30)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _run(*cmd: str, timeout: float = 600) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


def ensure_venv(python310: str) -> Path:
    """The venv with the client installed from the working tree; quick when nothing changed."""
    deps_stamp, client_stamp = VENV / ".deps-installed", VENV / ".client-installed"
    deps = _digest(CLIENT_DIR / "pyproject.toml", PROTOS_DIR / "pyproject.toml")
    client = _digest(CLIENT_DIR / "pyproject.toml", CLIENT_DIR / "gateway_client", PROTOS_DIR)
    with venv_lock(VENV, "client-py310"):
        if not (PYTHON.is_file() and deps_stamp.is_file() and deps_stamp.read_text() == deps):
            if VENV.exists():
                shutil.rmtree(VENV)
            _run(python310, "-m", "venv", str(VENV))
            _run(str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(PROTOS_DIR),
                 str(CLIENT_DIR))
            deps_stamp.write_text(deps)
            client_stamp.write_text(client)
        elif not (client_stamp.is_file() and client_stamp.read_text() == client):
            _run(str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                 "--force-reinstall", str(PROTOS_DIR), str(CLIENT_DIR))
            client_stamp.write_text(client)
    return PYTHON


SCRIPT = r'''
import asyncio
import sys
from datetime import timezone

import gateway_client
from gateway_client import (
    FIRST_COMPLETED, AsyncClient, Client, JobCancelledError, JobFailedError, JobState, NotFoundError,
    Output, as_completed, async_as_completed, async_wait, wait,
)

assert sys.version_info[:2] == (3, 10), sys.version
assert "site-packages" in gateway_client.__file__, gateway_client.__file__  # the installed copy
target = sys.argv[1]

with Client(target) as client:
    future = client.submit("echo", {"delay_ms": 300, "steps": 3})
    assert future.cancelled() is False
    updates = list(client.watch(future.job_id))
    assert updates[-1].done and updates[-1].state is JobState.SUCCEEDED
    assert future.result(timeout=30) == Output({"delay_ms": 300, "steps": 3})
    job, result = client.fetch(future.job_id)
    assert job.done and result == Output({"delay_ms": 300, "steps": 3})
    assert job.create_time.tzinfo is timezone.utc
    futures = [client.submit("echo", {"i": i, "delay_ms": 100 * i}) for i in range(3)]
    assert sorted(f.result().value["i"] for f in as_completed(futures, timeout=30)) == [0, 1, 2]
    slow = client.submit("echo", {"delay_ms": 60000})
    done, not_done = wait([slow, *futures], timeout=30, return_when=FIRST_COMPLETED)
    assert done and slow in not_done
    try:
        slow.result(timeout=0.1)
        raise AssertionError("no timeout")
    except TimeoutError:  # the builtin one, also on 3.10
        pass
    assert slow.cancel() and isinstance(slow.exception(timeout=10), JobCancelledError) and slow.cancelled()
    failed = client.submit("echo", {"fail_with": "boom"})
    assert isinstance(failed.exception(timeout=10), JobFailedError)
    try:
        client.get("0" * 32)
        raise AssertionError("no error")
    except NotFoundError as exc:
        assert exc.reason == "JOB_NOT_FOUND"

async def main():
    async with AsyncClient(target) as client:
        futures = [await client.submit("echo", {"i": i}) for i in range(3)]
        done, pending = await async_wait(futures, timeout=30)
        assert len(done) == 3 and not pending
        assert sorted([(await f).value["i"] async for f in async_as_completed(futures)]) == [0, 1, 2]
        job = await client.get(futures[0].job_id)
        assert job.done and job.finish_time.tzinfo is timezone.utc

asyncio.run(main())
print("ok", sys.version.split()[0])
'''


def test_the_client_on_python_310(echo_server: ServerProcess, tmp_path: Path) -> None:
    python310 = _python310()
    if python310 is None:
        pytest.skip("no CPython 3.10 found (set CLIENT_PY310, or put python3.10 on the PATH): "
                    "the client's oldest declared Python is untested here")
    python = ensure_venv(python310)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([str(python), "-c", SCRIPT, echo_server.target], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok 3.10"), done.stdout
