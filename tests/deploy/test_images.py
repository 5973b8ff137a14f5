"""The images, as far as this machine can build them (no registry is reachable): their install step
(docker/install.sh, which the Dockerfiles run as is) in a fresh venv, then their ENTRYPOINT and CMD as
the Dockerfiles write them. The API image has no whisper engine and starts; the worker image has it and
its bundled model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ECHO_CONFIG, ROOT

DOCKER = ROOT / "docker"


def _instruction(dockerfile: Path, name: str) -> list[str]:
    """The exec form of an instruction (its last occurrence, as Docker uses it)."""
    lines = re.findall(rf"^{name} (\[.*\])$", dockerfile.read_text(), re.MULTILINE)
    assert lines, f"no {name} in {dockerfile}"
    return list(json.loads(lines[-1]))


def _fresh_venv(tmp_path: Path, kind: str) -> Path:
    venv = tmp_path / f"venv-{kind}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(["sh", str(DOCKER / "install.sh"), kind, str(venv / "bin" / "pip"), str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv


def _serves(venv: Path, dockerfile: Path, tmp_path: Path, extra: list[str]) -> dict[str, str]:
    """Runs the image's ENTRYPOINT + CMD from the venv, on free ports, until it says it serves."""
    entrypoint, cmd = _instruction(dockerfile, "ENTRYPOINT"), _instruction(dockerfile, "CMD")
    assert entrypoint == ["gateway"]
    config = tmp_path / "gateway.toml"
    config.write_text(ECHO_CONFIG)
    # Later flags win: the image's own, then this test's free ports and folders.
    args = [str(venv / "bin" / entrypoint[0]), *cmd, "--config", str(config), "--listen", "127.0.0.1:0", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        return dict(json.loads(line))
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_the_api_image_installs_without_whisper_and_serves(tmp_path: Path) -> None:
    venv = _fresh_venv(tmp_path, "api")
    python = str(venv / "bin" / "python")
    missing = subprocess.run([python, "-c", "import faster_whisper"], capture_output=True, text=True)
    assert missing.returncode != 0  # the slim image: no engine, no model
    event = _serves(venv, DOCKER / "Dockerfile.api", tmp_path,
                    ["--http-listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")])
    assert event["event"] == "serving" and event["grpc"].startswith("127.0.0.1:")


@pytest.mark.slow
def test_the_worker_image_installs_whisper_and_its_model(tmp_path: Path) -> None:
    venv = _fresh_venv(tmp_path, "worker")
    check = ("import faster_whisper, os; from gateway.backends.whisper import default_model_path; "
             "path = default_model_path(); assert os.path.isfile(os.path.join(path, 'model.bin')), path; print(path)")
    found = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    # Its CMD is `gateway worker`, which needs a shared store: that it parses and refuses plainly is
    # what can be run here (tests/e2e/test_workers.py runs workers on a real Redis).
    cmd = _instruction(DOCKER / "Dockerfile.worker", "CMD")
    assert cmd[0] == "worker"
    done = subprocess.run([str(venv / "bin" / "gateway"), *cmd], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "store" in done.stderr and "Traceback" not in done.stderr
