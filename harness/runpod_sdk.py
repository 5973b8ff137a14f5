"""The official ``runpod==1.12.0`` Python SDK, in a virtualenv of its own, for tests that prove RunPod compatibility.

The SDK pulls half of PyPI (boto3, fastapi[all], paramiko, ...) and pins aiohttp/urllib3 floors of its own, so it
lives apart from the gateway's venv: ``.venv-runpod`` at the repository root (override with ``RUNPOD_SDK_VENV``),
built once by harness/tool_venv.py and reused.

:func:`run_sdk` runs :data:`SNIPPET` in that venv's python: the endpoint client as a user writes it (the docs'
``runpod.api_key = ...; endpoint = runpod.Endpoint(ENDPOINT_ID)``), with only ``RUNPOD_ENDPOINT_BASE_URL`` pointed at
the fake (``runpod/__init__.py`` reads it at import into ``runpod.endpoint_url_base``). Which calls it makes is a list
of steps; it prints one JSON line with each step's results, or the exception the SDK raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.tool_venv import ToolVenv

__all__ = ["ENDPOINT_ID", "SNIPPET", "ensure_sdk_venv", "run_sdk", "sdk_python"]

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("RUNPOD_SDK_VENV", ROOT / ".venv-runpod"))

# runpod 1.12.0's own Requires-Dist resolves cleanly on Python 3.11; only the SDK itself is pinned.
PINS = ("runpod==1.12.0",)
_CHECK = "import runpod; from runpod import Endpoint, AsyncioEndpoint; assert runpod.__version__ == '1.12.0'"
_SDK = ToolVenv("runpod-sdk", VENV, PINS, _CHECK, pythons=(os.environ.get("RUNPOD_SDK_PYTHON"), "python3.11", "python3"))

ENDPOINT_ID = "fake-endpoint"


def sdk_python() -> Path:
    return _SDK.python


def ensure_sdk_venv(timeout: float = 900.0) -> Path:
    """Creates the SDK's venv if it is missing or its pins changed; returns its python. Quick once made."""
    return _SDK.ensure(timeout)


# Each step is {"step": NAME, "input": ..., "timeout": seconds}; its result lands in out["results"] at the same index:
# {"step", "seconds", ...what the calls returned}, with "error": {type, module, message} when the SDK raised. Steps:
# run (run, status, output(timeout), status), run_sync, stream (run, list(stream()), status, output), cancel (run,
# status, cancel, status), submit (run, status), status (of the id given, else of the last run), health,
# purge_queue, wrong_key (a run with another api_key), async (AsyncioEndpoint: run/status/output, stream, cancel,
# health, purge_queue), async_errors (AsyncioEndpoint: a failed job's output, a wrong key) and control (not the
# SDK: POST /_control to the fake, to switch faults between steps).
SNIPPET = r'''
import asyncio
import json
import os
import time

import urllib.request

import aiohttp
import runpod

runpod.api_key = os.environ["RUNPOD_API_KEY"]
ENDPOINT_ID = os.environ["FAKE_RUNPOD_ENDPOINT"]
endpoint = runpod.Endpoint(ENDPOINT_ID)


last = {}


def sync_step(step, request, timeout, result):
    if step == "run":  # the docs' /run example
        job = endpoint.run(request)
        result["id"] = last["id"] = job.job_id
        result["status_first"] = job.status()
        result["output"] = job.output(timeout=timeout)
        result["status_after"] = job.status()
    elif step == "run_sync":
        result["output"] = endpoint.run_sync(request, timeout=timeout)
    elif step == "stream":
        job = endpoint.run(request)
        result["id"] = last["id"] = job.job_id
        result["chunks"] = [output for output in job.stream()]
        result["status_after"] = job.status()
        result["output"] = job.output()
    elif step == "cancel":
        job = endpoint.run(request)
        result["id"] = last["id"] = job.job_id
        result["status_first"] = job.status()
        result["cancel"] = job.cancel()
        result["status_after"] = job.status()
    elif step == "submit":
        job = endpoint.run(request)
        result["id"] = last["id"] = job.job_id
        result["status"] = job.status()
    elif step == "status":  # a job's status by id (default: the last one run), as the SDK's Job asks for it
        job = runpod.endpoint.Job(ENDPOINT_ID, request or last["id"], endpoint.rp_client)
        result["status"] = job.status()
    elif step == "health":
        result["health"] = endpoint.health()
    elif step == "purge_queue":
        result["purge"] = endpoint.purge_queue()
    elif step == "control":  # not the SDK: the fake's test-only switches, between steps
        control = urllib.request.Request(f"{runpod.endpoint_url_base}/_control", data=json.dumps(request).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(control, timeout=10) as resp:
            resp.read()
    elif step == "wrong_key":
        runpod.Endpoint(ENDPOINT_ID, api_key=os.environ["FAKE_RUNPOD_WRONG_KEY"]).run(request)
    else:
        raise ValueError(f"no such step {step}")


async def async_step(request, timeout, result):
    async with aiohttp.ClientSession() as session:
        aendpoint = runpod.AsyncioEndpoint(ENDPOINT_ID, session)
        job = await aendpoint.run(request)
        result["id"] = job.job_id
        result["status_first"] = await job.status()
        result["output"] = await job.output(timeout=timeout)
        result["status_after"] = await job.status()
        streamed = await aendpoint.run(request)
        result["chunks"] = [output async for output in streamed.stream()]
        doomed = await aendpoint.run({**request, "steps": 100})
        result["cancel"] = await doomed.cancel()
        result["cancelled_status"] = await doomed.status()
        result["health"] = await aendpoint.health()
        result["purge"] = await aendpoint.purge_queue()


async def async_errors(request, timeout, result):
    """What AsyncioEndpoint gives for a failed job and for a wrong key (it checks no HTTP status)."""
    async with aiohttp.ClientSession() as session:
        job = await runpod.AsyncioEndpoint(ENDPOINT_ID, session).run({**request, "fail": "boom"})
        result["failed_output"] = await job.output(timeout=timeout)
        result["failed_status"] = await job.status()
        try:
            await runpod.AsyncioEndpoint(ENDPOINT_ID, session, api_key=os.environ["FAKE_RUNPOD_WRONG_KEY"]).run(request)
        except Exception as exc:
            result["wrong_key"] = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}


results = []
for spec in json.loads(os.environ["FAKE_RUNPOD_STEPS"]):
    step, request, timeout = spec["step"], spec.get("input"), spec.get("timeout", 20)
    result = {"step": step}
    started = time.monotonic()
    try:
        if step == "async":
            asyncio.run(async_step(request, timeout, result))
        elif step == "async_errors":
            asyncio.run(async_errors(request, timeout, result))
        else:
            sync_step(step, request, timeout, result)
    except Exception as exc:
        result["error"] = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
    result["seconds"] = round(time.monotonic() - started, 3)
    results.append(result)
print(json.dumps({"version": runpod.__version__, "base": runpod.endpoint_url_base, "results": results}))
'''


def run_sdk(base_url: str, api_key: str, steps: Sequence[dict[str, Any]], *, endpoint_id: str = ENDPOINT_ID,
            wrong_key: str = "not-the-key", timeout: float = 120.0) -> dict[str, Any]:
    """Runs :data:`SNIPPET`'s ``steps`` with runpod 1.12.0 against ``base_url`` (the fake's root, standing in for
    https://api.runpod.ai/v2). Returns the printed JSON: ``version``, ``base`` and ``results`` (one per step)."""
    python = ensure_sdk_venv()
    with tempfile.TemporaryDirectory(prefix="runpod-home-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "PYTHON"))}
        env.update({
            "HOME": home,  # no ~/.runpod/config.toml key sneaks in
            "RUNPOD_ENDPOINT_BASE_URL": base_url.rstrip("/"),
            "RUNPOD_API_KEY": api_key,
            "FAKE_RUNPOD_ENDPOINT": endpoint_id,
            "FAKE_RUNPOD_WRONG_KEY": wrong_key,
            "FAKE_RUNPOD_STEPS": json.dumps(list(steps)),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "*",
        })
        proc = subprocess.run([str(python), "-c", SNIPPET], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=home)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the SDK snippet exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(lines[-1])
    out["stderr"] = proc.stderr
    return out


if __name__ == "__main__":  # `python -m harness.runpod_sdk`: build the venv
    print(ensure_sdk_venv())
    sys.exit(0)
