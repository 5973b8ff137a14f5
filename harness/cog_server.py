"""A real Cog model server (cog 0.23's coglet, from PyPI, no Docker) running a predictor of tests/fixtures/cog.

The package lives in a venv of its own, ``.venv-cog`` at the repository root (override with ``COG_VENV``),
built once (harness/tool_venv.py). ``python -m cog.server.http`` runs the predictor named by
``COG_PREDICT_TYPE_STUB`` in the current directory, on ``PORT``; its worker is a child process found
on PATH, hence the venv's bin first. The predictors append one line per run to ``$COG_RUNS_FILE``, so
that a test can count how often a prediction ran.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness.process import spawn, stop_process
from harness.redis import _free_port
from harness.tool_venv import ToolVenv

__all__ = ["PREDICTORS", "CogServer", "ensure_cog_venv"]

ROOT = Path(__file__).resolve().parent.parent
PREDICTORS = ROOT / "tests" / "fixtures" / "cog"
VENV = Path(os.environ.get("COG_VENV", ROOT / ".venv-cog"))
_COG = ToolVenv("cog", VENV, ("cog==0.23.1",), "import cog, coglet; print(cog.__version__)",
                pythons=("python3.11", "python3"))


def ensure_cog_venv(timeout: float = 600.0) -> Path:
    return _COG.ensure(timeout)


class CogServer:
    """``CogServer("stream", workdir).start()``: the predictor tests/fixtures/cog/<name>.py as a Cog server."""

    def __init__(self, predictor: str, workdir: Path, env: dict[str, str] | None = None, port: int = 0) -> None:
        self.predictor = predictor
        self.workdir = workdir
        self.port = port or _free_port()
        self.runs_file = workdir / "runs.txt"
        self.log_path = workdir / f"cog-{predictor}.log"
        self.env = env or {}
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> CogServer:
        python = ensure_cog_venv()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "predict.py").write_text((PREDICTORS / f"{self.predictor}.py").read_text())
        env = {**os.environ, "PATH": f"{python.parent}:{os.environ.get('PATH', '')}", "PORT": str(self.port),
               "COG_PREDICT_TYPE_STUB": "predict.py:Predictor", "COG_RUNS_FILE": str(self.runs_file),
               "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("VIRTUAL_ENV", None)
        log = open(self.log_path, "a")  # the child writes to it for its whole life
        self.proc = spawn([str(python), "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=self.workdir, env=env,
                          stdout=log, stderr=log, die_with_parent=False)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Cog server exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
            if self.health().get("status") == "READY":
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the Cog server did not become READY in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/health-check", timeout=5) as resp:
                return json.load(resp)
        except (OSError, ValueError):
            return {}

    def runs(self) -> list[str]:
        """One line per prediction run: "<prediction id> <input JSON>"."""
        return self.runs_file.read_text().splitlines() if self.runs_file.exists() else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
