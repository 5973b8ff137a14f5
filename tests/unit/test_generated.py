"""The generated code is current and the proto is lint-clean (tests/client/test_client_api.py checks that the
clients cover every RPC)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ROOT

BUF = ROOT / "tests" / "node" / "node_modules" / ".bin" / "buf"
RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["GatewayService"].methods]


def test_generated_stubs_are_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_lint() -> None:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run `make install` (npm ci in tests/node)")
    done = subprocess.run([str(BUF), "lint"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_generated_stub_has_every_rpc() -> None:
    stub_methods = {name for name, _ in inspect.getmembers(pb_grpc.GatewayServiceServicer, inspect.isfunction)}
    assert set(RPCS) <= stub_methods

