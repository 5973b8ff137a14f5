"""The official `fal-client==1.0.3` Python package, in a virtualenv of its own, for the tests that prove the fake
fal queue (harness/fakes/fal.py) faithful.

The venv is ``.venv-fal`` at the repository root (override with ``FAL_SDK_VENV``), created once and reused
(harness/tool_venv.py). :func:`run_fal_script` runs a snippet in that venv's python the way a user runs the client,
with nothing changed but the host environment the client reads at import (fal_client/auth.py:84-85):

- ``FAL_RUN_HOST`` and ``FAL_QUEUE_RUN_HOST`` = ``127.0.0.1:PORT`` of the fake (the client always speaks https:
  ``QUEUE_URL_FORMAT = f"https://{FAL_QUEUE_RUN_HOST}/"``, client.py:84), so the fake serves TLS;
- ``SSL_CERT_FILE`` = the test CA (httpx's default SSL context honours it, ``trust_env`` being on);
- ``FAL_KEY`` = the key (sent as ``Authorization: Key <FAL_KEY>``, auth.py:107-108); ``HOME``/``FAL_HOME_DIR`` a
  temporary folder, so no ``fal auth login`` token sneaks in.

The snippet prints one JSON line per event (``emit(...)``); the caller gets them as a list of dicts. It may also call
``control(**settings)`` and ``stats()`` (the fake's test-only routes, at ``FAL_FAKE_URL``, a variable of this harness
that the client does not read), ``status_of(status)`` (a Queued/InProgress/Completed as a dict, log lines as their
messages) and ``error_of(exc)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.tool_venv import ToolVenv

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("FAL_SDK_VENV", ROOT / ".venv-fal"))

# fal-client 1.0.3 and what pip resolves for it on Python 3.11 (its Requires-Dist: aiofiles, asyncstdlib, httpx<1,
# httpx-sse<0.5, msgpack, websockets), pinned so that the venv is the same everywhere.
PINS = (
    "fal-client==1.0.3",
    "aiofiles==25.1.0",
    "asyncstdlib==3.14.0",
    "httpx==0.29.0",
    "httpcore==1.0.9",
    "httpx-sse==0.4.3",
    "msgpack==1.2.4",
    "h11==0.16.0",
    "websockets==17.4",
    "anyio==4.16.0",
    "idna==3.21",
    "typing_extensions==4.16.0",
    "certifi==2026.10.19.post1",
)
_CHECK = "import fal_client; assert fal_client.__version__ == '1.0.3', fal_client.__version__; print(fal_client.__version__)"
_SDK = ToolVenv("fal-client", VENV, PINS, _CHECK, pythons=(os.environ.get("FAL_SDK_PYTHON"), "python3.11", "python3"))

# Prepended to every script: the event printer, a uniform report of what the client raised, a summary of a Status,
# and the fake's test-only routes (``control(**settings)``, ``stats()``), reached with the same CA as the client.
PRELUDE = r'''
import json, os, ssl, sys, urllib.request
def emit(**event):
    print(json.dumps(event, default=repr), flush=True)
def error_of(exc):
    out = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
    for name in ("status_code", "error_type"):
        if hasattr(exc, name):
            out[name] = getattr(exc, name)
    return out
def status_of(status):
    out = {"type": type(status).__name__}
    for name in ("position", "logs", "metrics", "error", "error_type"):
        if hasattr(status, name):
            value = getattr(status, name)
            out[name] = [line["message"] for line in value] if name == "logs" and value is not None else value
    return out
def _fake(path, changes=None):
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE")) if os.environ.get("SSL_CERT_FILE") else None
    data = json.dumps(changes).encode() if changes is not None else None
    request = urllib.request.Request(os.environ["FAL_FAKE_URL"] + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10, context=context) as resp:
        return json.load(resp)
def control(**changes):
    return _fake("/_control", changes)
def stats():
    return _fake("/_stats")
'''


def sdk_python() -> Path:
    return _SDK.python


def ensure_sdk_venv(timeout: float = 600.0) -> Path:
    """Creates the client's venv if it is missing or its pins changed; returns its python. Quick once made."""
    return _SDK.ensure(timeout)


def fal_env(url: str, key: str | None, ca_file: Path | str | None, home: str) -> dict[str, str]:
    """The environment a user's process would have, pointed at the fake at ``url`` (https://127.0.0.1:PORT)."""
    host = url.split("://", 1)[1].rstrip("/")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAL_", "PYTHON", "SSL_CERT_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"HOME": home, "FAL_HOME_DIR": str(Path(home) / ".fal"), "FAL_RUN_HOST": host,
                "FAL_QUEUE_RUN_HOST": host, "FAL_FAKE_URL": url.rstrip("/"), "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "*", "no_proxy": "*"})
    if ca_file is not None:
        env["SSL_CERT_FILE"] = str(ca_file)
    if key is not None:
        env["FAL_KEY"] = key
    return env


def run_fal_script(script: str, url: str, *, key: str | None, ca_file: Path | str | None,
                   extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Runs ``script`` (Python using ``fal_client`` and ``emit(**event)``) in the client's venv against the fake at
    ``url``; returns the events it emitted. Raises RuntimeError, with its output, if it exits non-zero."""
    python = ensure_sdk_venv()
    with tempfile.TemporaryDirectory(prefix="fal-home-") as home:
        env = {**fal_env(url, key, ca_file, home), **(extra_env or {})}
        proc = subprocess.run([str(python), "-c", PRELUDE + script], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=home)
    if proc.returncode != 0:
        raise RuntimeError(f"the fal-client script exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":  # `python -m harness.fal_sdk`: build the venv
    print(ensure_sdk_venv())
    sys.exit(0)
