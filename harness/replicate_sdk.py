"""The official `replicate==1.0.7` Python client, in a virtualenv of its own, for the tests that prove the fake
Replicate (harness/fakes/replicate.py) faithful.

The venv is ``.venv-replicate`` at the repository root (override with ``REPLICATE_SDK_VENV``), created once and
reused (harness/tool_venv.py). :func:`run_sdk` runs a snippet in that venv's python with a client made the way a
user would make it, only ``base_url`` changed — ``replicate.Client(api_token=..., base_url=...)`` — and returns
what the snippet put in ``out`` (JSON), with ``out["error"]`` describing any exception it let through.
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
VENV = Path(os.environ.get("REPLICATE_SDK_VENV", ROOT / ".venv-replicate"))

# replicate 1.0.7 asks for httpx>=0.21,<1, pydantic>1.10.7 (it uses pydantic.v1 when pydantic 2 is there),
# packaging and typing_extensions; these are what pip resolved for it on Python 3.11, pinned.
PINS = (
    "replicate==1.0.7",
    "httpx==0.29.0",
    "httpcore==1.0.9",
    "h11==0.16.0",
    "anyio==4.16.0",
    "idna==3.21",
    "certifi==2026.10.19.post1",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "packaging==26.4",
)
_CHECK = "import replicate, replicate.__about__ as a; assert a.__version__ == '1.0.7', a.__version__"
_SDK = ToolVenv("replicate-sdk", VENV, PINS, _CHECK,
                pythons=(os.environ.get("REPLICATE_SDK_PYTHON"), "python3.11", "python3"))

# What every snippet runs in: the client, the exception types, helpers to report a prediction and an exception.
PRELUDE = r'''
import json, os, sys, time
import replicate
from replicate.exceptions import ModelError, ReplicateError
from replicate.webhook import Webhooks, WebhookSigningSecret

def err(exc):
    return {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc),
            "status": getattr(exc, "status", None), "title": getattr(exc, "title", None),
            "detail": getattr(exc, "detail", None)}

def pred(p):
    return {k: getattr(p, k) for k in ("id", "model", "version", "status", "input", "output", "logs", "error",
                                       "metrics", "created_at", "started_at", "completed_at", "urls")}

def event(e):
    return {"event": e.event.value, "data": str(e.data) if not isinstance(e.data, str) else e.data, "id": e.id}

args = json.loads(os.environ["FAKE_REPLICATE_ARGS"])
client = replicate.Client(api_token=os.environ.get("FAKE_REPLICATE_TOKEN") or None,
                          base_url=os.environ["FAKE_REPLICATE_BASE_URL"])
out = {}
try:
    exec(compile(os.environ["FAKE_REPLICATE_SNIPPET"], "<snippet>", "exec"))
except Exception as exc:
    out["error"] = err(exc)
print(json.dumps(out, default=str))
'''


def sdk_python() -> Path:
    return _SDK.python


def ensure_sdk_venv(timeout: float = 600.0) -> Path:
    """Creates the client's venv if it is missing or its pins changed; returns its python. Quick once made."""
    return _SDK.ensure(timeout)


def run_sdk(base_url: str, snippet: str, token: str | None = None, *, args: Any = None,
            env: dict[str, str] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Runs ``snippet`` with replicate 1.0.7 against the fake at ``base_url``. In it: ``client`` (the
    ``replicate.Client``), ``replicate``, ``ModelError``, ``ReplicateError``, ``Webhooks``,
    ``WebhookSigningSecret``, ``args`` (``args`` here, through JSON), ``out`` (a dict to fill, printed as JSON),
    and the helpers ``pred(p)``, ``event(e)``, ``err(exc)``. Returns ``out``, plus ``stderr``."""
    python = ensure_sdk_venv()
    with tempfile.TemporaryDirectory(prefix="replicate-home-") as home:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("REPLICATE_", "PYTHON"))}
        child_env.update({
            "HOME": home,
            "FAKE_REPLICATE_BASE_URL": base_url.rstrip("/"),
            "FAKE_REPLICATE_TOKEN": token or "",
            "FAKE_REPLICATE_SNIPPET": snippet,
            "FAKE_REPLICATE_ARGS": json.dumps(args),
            "REPLICATE_POLL_INTERVAL": "0.1",  # the client's own knob (default 0.5 s between polls)
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "*",
        })
        child_env.update(env or {})
        proc = subprocess.run([str(python), "-c", PRELUDE], capture_output=True, text=True, env=child_env,
                              timeout=timeout, cwd=home)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the replicate snippet exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    result = dict(json.loads(lines[-1]))
    result["stderr"] = proc.stderr
    return result


if __name__ == "__main__":  # `python -m harness.replicate_sdk`: build the venv
    print(ensure_sdk_venv())
    sys.exit(0)
