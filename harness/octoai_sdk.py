"""The real `octoai-sdk==0.2.0` client, in a virtualenv of its own, for tests that prove OctoAI compatibility.

SDK 0.2.0 needs pydantic 1 and numpy 1 (the gateway's own venv has pydantic 2), so it lives in a separate venv,
``.venv-octoai`` at the repository root (override with ``OCTOAI_SDK_VENV``), created once and reused
(harness/tool_venv.py).

:func:`run_sdk_snippet` runs the seed's documented snippet in that venv's python, exactly as a user would write it
with only the endpoint URL changed, and returns what it printed (JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from harness.tool_venv import ToolVenv

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("OCTOAI_SDK_VENV", ROOT / ".venv-octoai"))

# octoai-sdk 0.2.0's Requires-Dist allows numpy<2, pydantic<2, httpx 0.24.x, Pillow<10, ...; these exact versions
# are what pip resolves within them on Python 3.11 and are known to import (Pillow 9.5.0 has no wheel past 3.11).
PINS = (
    "octoai-sdk==0.2.0",
    "numpy==1.26.4",
    "pydantic==1.10.27",
    "httpx==0.24.1",
    "httpcore==0.17.3",
    "Pillow==9.5.0",
    "PyYAML==6.0.4",
    "soundfile==0.12.1",
    "fastapi==0.95.2",
    "starlette==0.27.0",
    "uvicorn==0.22.0",
    "click>=8.1.3,<9",
)
_CHECK = "from octoai.client import Client; from octoai.types import Audio; import octoai; print(octoai.__version__)"
_SDK = ToolVenv("octoai-sdk", VENV, PINS, _CHECK, pythons=(os.environ.get("OCTOAI_SDK_PYTHON"), "python3.11", "python3"))


def sdk_python() -> Path:
    return _SDK.python


def ensure_sdk_venv(timeout: float = 600.0) -> Path:
    """Creates the SDK's venv if it is missing or its pins changed; returns its python. Quick once made."""
    return _SDK.ensure(timeout)


# The seed's snippet, word for word but for the endpoint URL (and the step selection and the error report around
# it, so that the tests can run one call at a time and see the SDK's own exception types).
SNIPPET = r'''
import json
import os
import sys
import time

from octoai.client import Client
from octoai.types import Audio

base_url = os.environ["FAKE_OCTOAI_BASE_URL"]
audio_path = os.environ["FAKE_OCTOAI_AUDIO"]
steps = os.environ.get("FAKE_OCTOAI_STEPS", "health,async,sync").split(",")
health_timeout = float(os.environ.get("FAKE_OCTOAI_HEALTH_TIMEOUT", "900"))
out = {"steps": steps}
step = None
try:
    client = Client()  # the token comes from OCTOAI_TOKEN, as in the seed
    out["user_agent"] = client._httpx_client.headers.get("user-agent")

    if "health" in steps:
        step = "health"
        started = time.monotonic()
        out["health_status"] = client.health_check(f"{base_url}/healthcheck", timeout=health_timeout)
        out["health_seconds"] = round(time.monotonic() - started, 3)

    step = "audio"
    audio_base64 = Audio.from_file(audio_path).audio_b64
    inputs = {"language": "en", "task": "transcribe", "audio": audio_base64}

    if "async" in steps:
        step = "infer_async"
        future = client.infer_async(f"{base_url}/predict", inputs)
        out["future"] = future.dict()
        step = "is_future_ready"
        polls = 0
        while not client.is_future_ready(future):
            polls += 1
            time.sleep(1)
        out["not_ready_polls"] = polls
        step = "get_future_result"
        result = client.get_future_result(future)
        out["result"] = result

    if "sync" in steps:
        step = "infer"
        out["infer"] = client.infer(f"{base_url}/predict", inputs)
except Exception as exc:
    out["error"] = {"step": step, "type": type(exc).__name__, "module": type(exc).__module__,
                    "message": getattr(exc, "message", None) or str(exc)}
print(json.dumps(out))
'''

DEFAULT_STEPS = ("health", "async", "sync")


def run_sdk_snippet(base_url: str, audio_path: str | os.PathLike[str], token: str | None = None,
                    extra_env: dict[str, str] | None = None, *, steps: Iterable[str] = DEFAULT_STEPS,
                    health_timeout: float = 900.0, timeout: float = 120.0) -> dict:
    """Runs the seed's snippet with octoai-sdk 0.2.0 against ``{base_url}/predict`` (and ``/healthcheck``).

    ``steps``: any of "health" (``client.health_check``), "async" (``infer_async``, the ``is_future_ready`` loop,
    ``get_future_result``) and "sync" (``client.infer``), run in that order. Returns the printed JSON: ``result``
    (the async result), ``infer`` (the sync one), ``health_status``, ``future`` (response_id, poll_url),
    ``not_ready_polls``, ``user_agent``, and ``error`` ({step, type, module, message}) if the SDK raised.
    """
    python = ensure_sdk_venv()
    with tempfile.TemporaryDirectory(prefix="octoai-home-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OCTOAI_", "PYTHON"))}
        env.update({
            "HOME": home,  # no ~/.octoai/config.yaml token sneaks in
            "FAKE_OCTOAI_BASE_URL": base_url.rstrip("/"),
            "FAKE_OCTOAI_AUDIO": str(Path(audio_path).resolve()),
            "FAKE_OCTOAI_STEPS": ",".join(steps),
            "FAKE_OCTOAI_HEALTH_TIMEOUT": str(health_timeout),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "*",
        })
        if token is not None:
            env["OCTOAI_TOKEN"] = token
        env.update(extra_env or {})
        proc = subprocess.run([str(python), "-c", SNIPPET], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=home)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the SDK snippet exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[-1])
    result["stderr"] = proc.stderr
    return result


if __name__ == "__main__":  # `python -m harness.octoai_sdk [BASE_URL AUDIO]`: build the venv (and run the snippet)
    print(ensure_sdk_venv())
    if len(sys.argv) == 3:
        print(json.dumps(run_sdk_snippet(sys.argv[1], sys.argv[2], os.environ.get("OCTOAI_TOKEN")), indent=1))
