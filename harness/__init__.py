"""What the tests, the benchmarks and the fakes share: real processes on free ports and ways to drive them.

- :mod:`harness.process`: child processes that die with their parent, waited on until they serve.
- :mod:`harness.gateway`: `gateway serve` / `gateway worker` (:class:`ServerProcess`), `gateway-client`.
- :mod:`harness.redis`: a ``redis-server`` of one's own. :mod:`harness.certs`: a throwaway CA.
- :mod:`harness.fakes`: faithful fakes of hosted upstreams (``python -m harness.fakes.octoai``).
- :mod:`harness.webhook_receiver`, :mod:`harness.browser` (headless Chromium), :mod:`harness.audio`,
  :mod:`harness.tool_venv` and :mod:`harness.octoai_sdk` (a provider's official client in a venv of its own).

Not part of the gateway's distribution: it lives beside it, for the repository's own checks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from harness.process import ROOT

FIXTURES = ROOT / "tests" / "fixtures"

# Imported when first asked for, so that a module of its own (harness.stats, harness.audio) loads
# without grpc: the GPU check (bench/gpu_whisper.py) runs on a machine with only the engine's packages.
_LAZY = {
    "ECHO_CONFIG": "harness.gateway", "WHISPER_CONFIG": "harness.gateway", "ServerProcess": "harness.gateway",
    "cli": "harness.gateway", "ToolMissing": "harness.checks", "error_info": "harness.checks",
    "unavailable": "harness.checks", "wait_until": "harness.checks",
}

__all__ = ["ECHO_CONFIG", "FIXTURES", "ROOT", "WHISPER_CONFIG", "ServerProcess", "ToolMissing", "cli", "error_info",
           "unavailable", "wait_until"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and readers: what the names are
    from harness.checks import ToolMissing, error_info, unavailable, wait_until
    from harness.gateway import ECHO_CONFIG, WHISPER_CONFIG, ServerProcess, cli
