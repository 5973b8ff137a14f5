"""The Node.js client package (clients/node): its node:test suite, run against real gateway processes.

Installs clients/node's pinned dependencies (`npm ci`) when node_modules is missing, then runs
`node --test clients/node/test/` from the repository root. Skipped when node or npm is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT, unavailable

PACKAGE = ROOT / "clients" / "node"


def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


def test_node_package() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for the Node.js client package (Debian: apt-get install nodejs npm)")
    if _node_major(node) < 18:
        pytest.skip("the Node.js client needs node 18 or later")
    if not (PACKAGE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--prefix", str(PACKAGE), "--no-audit", "--no-fund"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}\n{installed.stderr}"
    env = dict(os.environ)
    # The gateway (and the reference Python CLI) of this interpreter's environment, when it has one;
    # else the tests' default, <repo>/.venv.
    if (Path(sys.executable).parent / "gateway").exists():
        env.setdefault("GATEWAY_VENV", str(Path(sys.executable).parent.parent))
    result = subprocess.run(
        [node, "--test", "clients/node/test/"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"node --test failed:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
