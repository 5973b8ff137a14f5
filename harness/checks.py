"""Small checks the tests share: waiting on a condition, reading a refusal's ErrorInfo, and what to do
when a tool a test needs is missing."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import grpc
    from google.rpc import error_details_pb2, status_pb2

__all__ = ["ToolMissing", "error_info", "unavailable", "wait_until"]


class ToolMissing(RuntimeError):
    """A tool (redis-server, Chromium, node) this machine lacks; the message says how to get it."""


def unavailable(message: str) -> NoReturn:
    """A tool or permission is missing. Under pytest: in CI (``CI`` set) the test fails, since CI must
    run it; elsewhere it is skipped with ``message``. Elsewhere (the benchmarks): ToolMissing."""
    if "pytest" in sys.modules:
        import pytest

        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    raise ToolMissing(message)


def wait_until(condition: Callable[[], object], what: str = "the condition", timeout: float = 20.0,
               interval: float = 0.05) -> None:
    """Polls ``condition`` until it holds; fails after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def error_info(error: grpc.RpcError) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    """A refusal's google.rpc.Status (from the grpc-status-details-bin trailer) and its ErrorInfo."""
    from google.rpc import error_details_pb2, status_pb2

    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")  # type: ignore[attr-defined]
    assert raw is not None, (error.code(), error.details())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status, info
