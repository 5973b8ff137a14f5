"""The README's pip installs, each in a fresh venv, as a user would run them: the client alone, and the
server without the whisper extra; then the installed client submits an echo job to the installed server.

The sources are copied to a temp dir first (pip builds in the source tree: the checkout gets no build/ or
egg-info from this test). Dependencies come from PyPI, through pip's cache.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ECHO_CONFIG, ROOT

pytestmark = pytest.mark.slow

# As written in the README's "Installing with pip" (the test checks that they still are).
CLIENT_INSTALL = "pip install ./protos/python './clients/python[cli]'"
SERVER_INSTALL = "pip install ./protos/python ."

SOURCES = ("pyproject.toml", "README.md", "gateway", "clients/python/pyproject.toml", "clients/python/gateway_client",
           "protos/python/pyproject.toml", "protos/python/inferencegateway")

# The venv's own interpreter, without the test run's PYTHON* variables (PYTHONPATH would find the checkout).
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}

SCRIPT = r"""
import sys
import gateway_client
from gateway_client import Client, Output

assert gateway_client.__file__.startswith(sys.prefix), gateway_client.__file__  # the venv's installed copy
with Client(sys.argv[1]) as client:
    future = client.submit("echo", {"delay_ms": 100, "steps": 2})
    assert future.result(timeout=30) == Output({"delay_ms": 100, "steps": 2})
print("ok")
"""


def _run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=ENV)
    assert proc.returncode == 0, f"$ {shlex.join(str(c) for c in cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _copy_sources(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for name in SOURCES:
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)
    return dest


def _venv(path: Path, install: str, source: Path) -> Path:
    """A fresh venv at ``path`` with ``install`` (a README line: ``pip install ...``) run in ``source``."""
    _run(sys.executable, "-m", "venv", path, cwd=source)
    pip, *args = shlex.split(install)
    assert pip == "pip", install
    _run(path / "bin" / "python", "-m", "pip", "-q", "--disable-pip-version-check", *args, cwd=source)
    return path / "bin"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """(the client venv's bin, the server venv's bin, the gRPC target of an echo gateway from the server venv)."""
    source = _copy_sources(tmp_path / "src")
    client_bin = _venv(tmp_path / "client-venv", CLIENT_INSTALL, source)
    server_bin = _venv(tmp_path / "server-venv", SERVER_INSTALL, source)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "gateway.toml").write_text(ECHO_CONFIG)
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen([str(server_bin / "python"), "-m", "gateway", "serve", "--listen", "127.0.0.1:0",
                             "--http-listen", "", "--data-dir", str(workdir / "data"), "--config", "gateway.toml"],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=workdir, env=ENV)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway exited with {proc.returncode}:\n{(workdir / 'server.log').read_text()}"
            assert time.monotonic() < deadline, f"gateway did not start:\n{(workdir / 'server.log').read_text()}"
            try:
                event = json.loads(lines.get(timeout=0.2))
            except queue.Empty:
                continue
            if event.get("event") == "serving":
                break
        yield client_bin, server_bin, event["grpc"]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_readme_names_the_installs_tested_here() -> None:
    commands = {line.partition("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()}
    assert CLIENT_INSTALL in commands and SERVER_INSTALL in commands


def test_the_pip_installs_of_the_readme_work_in_fresh_venvs(served: tuple[Path, Path, str], tmp_path: Path) -> None:
    client_bin, server_bin, target = served
    assert _run(server_bin / "python", "-m", "gateway", "--help", cwd=tmp_path).startswith("usage: gateway ")
    assert _run(server_bin / "gateway", "--help", cwd=tmp_path).startswith("usage: gateway ")
    assert _run(client_bin / "gateway-client", "--help", cwd=tmp_path).startswith("usage: gateway-client ")
    # The client's venv holds the client alone: no server code came with it.
    _run(client_bin / "python", "-c", "import importlib.util as u; assert u.find_spec('gateway') is None", cwd=tmp_path)

    assert _run(client_bin / "python", "-c", SCRIPT, target, cwd=tmp_path).strip() == "ok"
    submitted = json.loads(_run(client_bin / "gateway-client", "--target", target, "submit", "--route", "echo",
                                "--inputs", '{"n": 1}', cwd=tmp_path))
    fetched = json.loads(_run(client_bin / "gateway-client", "--target", target, "fetch", "--wait",
                              submitted["job"]["id"], cwd=tmp_path))
    assert fetched["job"]["state"] == "JOB_STATE_SUCCEEDED" and fetched["output"] == {"n": 1}
