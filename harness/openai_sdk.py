"""The official `openai==3.63.0` Python SDK, in a virtualenv of its own, for the tests that prove the gateway's
OpenAI-compatible speech API (gateway/openai.py, docs/openai.md) works with OpenAI's own client.

The SDK is kept out of the gateway's venv (it brings httpx2, jiter, truststore and its own pydantic pins), in
``.venv-openai`` at the repository root (override with ``OPENAI_SDK_VENV``), created once and reused
(harness/tool_venv.py). :func:`run_sdk` runs a snippet in that venv's python with a client made as a user makes
it, only ``base_url`` changed — ``OpenAI(base_url=f"{gateway}/v1", api_key=...)`` — and returns what the snippet
put in ``out`` (JSON), with ``out["error"]`` describing any exception it let through (the SDK's own types:
``NotFoundError``, ``BadRequestError``, ``AuthenticationError``, ``APIStatusError``...).
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
VENV = Path(os.environ.get("OPENAI_SDK_VENV", ROOT / ".venv-openai"))
VERSION = "3.63.0"

# openai 3.63.0's Requires-Dist and what pip resolved for it on Python 3.11, pinned (the SDK's 3.x line speaks
# HTTP through httpx2/httpcore2 and verifies TLS with truststore).
PINS = (
    f"openai=={VERSION}",
    "httpx2==2.17.0",
    "httpcore2==2.17.0",
    "h11==0.16.0",
    "anyio==4.16.0",
    "idna==3.21",
    "sniffio==1.3.1",
    "truststore==0.10.5",
    "jiter==0.19.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
)
_CHECK = f"import openai; from openai import OpenAI; assert openai.__version__ == {VERSION!r}, openai.__version__"
_SDK = ToolVenv("openai-sdk", VENV, PINS, _CHECK, pythons=(os.environ.get("OPENAI_SDK_PYTHON"), "python3.11", "python3"))

# What every snippet runs in: the client, the module, helpers to report a model object and an exception.
PRELUDE = r'''
import json, os, sys, time
import openai
from openai import OpenAI

def err(exc):
    body = getattr(exc, "body", None)
    response = getattr(exc, "response", None)
    return {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc),
            "status_code": getattr(exc, "status_code", None), "code": getattr(exc, "code", None),
            "param": getattr(exc, "param", None), "error_type": getattr(exc, "type", None),
            "body": body if isinstance(body, (dict, list, str, type(None))) else str(body),
            "headers": dict(response.headers) if response is not None else None,
            "bases": [c.__name__ for c in type(exc).__mro__]}

def dump(value):
    """A model object as JSON-able data (a str stays a str)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value

args = json.loads(os.environ["OPENAI_SDK_TEST_ARGS"])
client = OpenAI(base_url=os.environ["OPENAI_SDK_TEST_BASE_URL"], api_key=os.environ["OPENAI_SDK_TEST_KEY"],
                **json.loads(os.environ["OPENAI_SDK_TEST_CLIENT"]))
out = {}
try:
    exec(compile(os.environ["OPENAI_SDK_TEST_SNIPPET"], "<snippet>", "exec"))
except Exception as exc:
    out["error"] = err(exc)
print(json.dumps(out, default=str))
'''


def sdk_python() -> Path:
    return _SDK.python


def ensure_sdk_venv(timeout: float = 600.0) -> Path:
    """Creates the SDK's venv if it is missing or its pins changed; returns its python. Quick once made."""
    return _SDK.ensure(timeout)


def run_sdk(http_url: str, snippet: str, api_key: str = "sk-unused", *, args: Any = None,
            client: dict[str, Any] | None = None, env: dict[str, str] | None = None,
            cwd: str | os.PathLike[str] | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Runs ``snippet`` with openai 3.63.0 against the gateway whose HTTP face is ``http_url``
    (``harness.gateway.ServerProcess.http_url``): the client is ``OpenAI(base_url=f"{http_url}/v1",
    api_key=api_key, **client)``. In the snippet: ``client``, ``openai``, ``OpenAI``, ``args`` (``args`` here,
    through JSON), ``out`` (a dict to fill, printed as JSON), and the helpers ``dump(obj)`` (a model object's
    JSON) and ``err(exc)`` ({type, module, message, status_code, code, param, error_type, body, headers, bases}).
    An exception the snippet lets through lands in ``out["error"]``. Relative paths in it are from ``cwd``
    (default: the repository root). Returns ``out``, plus ``stderr``."""
    python = ensure_sdk_venv()
    with tempfile.TemporaryDirectory(prefix="openai-home-") as home:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHON"))}
        child_env.update({
            "HOME": home,  # no user config sneaks in; OPENAI_API_KEY and OPENAI_BASE_URL are dropped above
            "OPENAI_SDK_TEST_BASE_URL": http_url.rstrip("/") + "/v1",
            "OPENAI_SDK_TEST_KEY": api_key,
            "OPENAI_SDK_TEST_CLIENT": json.dumps(client or {}),
            "OPENAI_SDK_TEST_SNIPPET": snippet,
            "OPENAI_SDK_TEST_ARGS": json.dumps(args),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "*",
        })
        child_env.update(env or {})
        proc = subprocess.run([str(python), "-c", PRELUDE], capture_output=True, text=True, env=child_env,
                              timeout=timeout, cwd=str(cwd or ROOT))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the openai snippet exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    result = dict(json.loads(lines[-1]))
    result["stderr"] = proc.stderr
    return result


if __name__ == "__main__":  # `python -m harness.openai_sdk`: build the venv
    print(ensure_sdk_venv())
    sys.exit(0)
