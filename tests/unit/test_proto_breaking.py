"""Proto evolution: the working tree's proto must not break clients built against the released API v1
(`buf breaking`, FILE rules, against tests/proto_baseline/api-v1.binpb, written by scripts/proto_baseline.sh
from the release commit). And the check does refuse a breaking change."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness import ROOT

BUF = ROOT / "tests" / "node" / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "tests" / "proto_baseline" / "api-v1.binpb"


def _breaking(workdir: Path) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run `make install` (npm ci --prefix tests/node)")
    return subprocess.run([str(BUF), "breaking", "--against", str(BASELINE)], cwd=workdir, capture_output=True,
                          text=True, timeout=120)


def test_the_proto_does_not_break_the_released_api() -> None:
    done = _breaking(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_breaking_change_is_caught(tmp_path: Path) -> None:
    for name in ("proto", "third_party"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    proto = tmp_path / "proto" / "inferencegateway" / "gateway" / "v1" / "gateway.proto"
    text = proto.read_text()
    renamed = text.replace("int64 after_revision = 2;", "int64 resume_after = 2;", 1)
    assert renamed != text
    proto.write_text(renamed)
    done = _breaking(tmp_path)
    assert done.returncode != 0 and "after_revision" in done.stdout, done.stdout + done.stderr
