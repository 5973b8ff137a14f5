"""What the sections share: result rows, the servers under test, load processes.

Every child (gateway, bare server, load generator) is started through harness.process (``spawn``,
``start_serving``), so that :func:`kill_all` can end all of them, and on Linux each one is also asked to
die with the bench (``PR_SET_PDEATHSIG``), so nothing outlives a killed ``python -m bench``.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.process import ROOT, Lines, cpu_seconds, kill_all, rss_mib, spawn, start_serving, stop_process

__all__ = [
    "ECHO_CONFIG",
    "ROOT",
    "BareServer",
    "GatewayServer",
    "LoadProcess",
    "Row",
    "Server",
    "abba",
    "cpu_seconds",
    "kill_all",
    "median",
    "rss_mib",
    "source_tree",
    "spawn",
    "stop_process",
    "wait_route_serving",
]

ECHO_CONFIG = '[routes.echo]\nbackend = "echo"\n'


# -- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a section's table: the gateway's figure against the baseline's."""

    name: str
    unit: str
    gateway: float | None
    baseline: float | None = None
    goal: str = ""  # human-readable, e.g. ">= 0.5x bare"; empty: reported only
    met: bool | None = None  # None: no goal, or not checked
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)  # per-round figures etc., for the JSON

    @property
    def ratio(self) -> float | None:
        if self.gateway is None or not self.baseline:
            return None
        return self.gateway / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "unit": self.unit, "gateway": self.gateway, "baseline": self.baseline,
            "ratio": self.ratio, "goal": self.goal, "met": self.met, "note": self.note, "raw": self.raw,
        }


T = TypeVar("T")


def abba(items: Sequence[T], round_index: int) -> list[T]:
    """The order of the compared variants in round ``round_index``: A B, then B A, B A, A B, ... (ABBA
    counterbalancing), so that no variant always runs first, on a cold or a warm machine."""
    return list(items) if round_index % 4 in (0, 3) else list(reversed(items))


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# -- servers under test --------------------------------------------------------------------------


class Server:
    """A gRPC server in a child process that prints ``{"event":"serving","grpc":"HOST:PORT"}``."""

    label = "server"

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"bench-{self.label}-")
        self.workdir = Path(self._tmp.name)
        self.log_path = self.workdir / "server.log"
        self.cwd = self.workdir  # where it runs (python -m imports from there first)
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""
        self.http = ""  # HOST:PORT of its HTTP face, when it has one

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Server:
        try:
            self.proc, event, _ = start_serving(self.command(), what=self.label, timeout=timeout,
                                                log_path=self.log_path, cwd=self.cwd)
        except (RuntimeError, TimeoutError) as exc:
            self._tmp.cleanup()
            raise RuntimeError(f"{self.label} did not start: {exc}") from exc
        self.target = str(event["grpc"])
        self.http = str(event.get("http", ""))
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_mib(self) -> float | None:
        return rss_mib(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=20.0)
        self._tmp.cleanup()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayServer(Server):
    """``gateway serve`` on a free port, a temp data dir and an echo-only config; with ``tree`` (a
    :func:`source_tree` of another commit), that commit's gateway, on this checkout's environment."""

    label = "gateway"

    def __init__(self, config: str = ECHO_CONFIG, extra_args: Sequence[str] = (), tree: Path | None = None) -> None:
        super().__init__()
        self.config_path = self.workdir / "gateway.toml"
        self.config_path.write_text(config)
        self.extra_args = list(extra_args)
        self.tree = tree

    def command(self) -> list[str]:
        args = ["serve", "--listen", "127.0.0.1:0", "--http-listen", "", "--data-dir", str(self.workdir / "data"),
                "--config", str(self.config_path), *self.extra_args]
        if self.tree is None:
            return [sys.executable, "-m", "gateway.cli", *args]
        # The other tree goes first on sys.path, ahead of this checkout (which spawn puts on PYTHONPATH):
        # PYTHONPATH alone would import this checkout's gateway, and the comparison would be with itself.
        first = [str(self.tree), str(self.tree / "protos" / "python")]
        code = (f"import runpy, sys; sys.path[:0] = {first!r}; sys.argv[0] = 'gateway'; "
                "runpy.run_module('gateway.cli', run_name='__main__', alter_sys=True)")
        return [sys.executable, "-c", code, *args]


def source_tree(rev: str, into: Path) -> tuple[Path, str]:
    """The files of commit ``rev`` of this repository, written under ``into`` (``git archive``: no
    worktree, nothing of the checkout touched); (the tree's path, the commit's short id and subject).
    Raises RuntimeError when git cannot give it (no git, not a clone, an unknown revision)."""
    try:
        described = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", rev, "--"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        tree = into / "tree"
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        raise RuntimeError(f"cannot check out {rev!r}: {detail.strip() or exc}") from exc
    return tree, described


class BareServer(Server):
    """The bare grpc.aio baseline of bench/bare.py."""

    label = "bare"

    def __init__(self, uvloop: bool = False) -> None:
        super().__init__()
        self.uvloop = uvloop

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.bare", "--listen", "127.0.0.1:0", *(["--uvloop"] if self.uvloop else [])]


# -- load generators -----------------------------------------------------------------------------


class LoadProcess:
    """``python -m bench.load SPEC``: a load generator in its own process (its own event loop).

    It prints JSON lines: progress events, then ``{"event": "result", ...}``; it may read lines on
    stdin (``send``) when the spec asks it to wait for a go-ahead.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.proc = spawn(
            [sys.executable, "-m", "bench.load", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self._lines = Lines(self.proc.stdout)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Waits for the next event of that name (a ``result`` or an ``error`` ends the wait early)."""
        while True:
            got = self._lines.next_event(timeout, self.proc, f"load {self.spec.get('mode')}")
            if got.get("event") == event:
                return got
            if got.get("event") == "error":
                raise RuntimeError(f"load generator failed: {got.get('message')}")
            if got.get("event") == "result":
                return got

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        return self.expect("result", timeout)

    def close(self) -> None:
        stop_process(self.proc, grace=5.0)

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def started(*servers: Server) -> Iterator[tuple[Server, ...]]:
    """Starts the servers, stops them all at the end (whatever happens)."""
    running: list[Server] = []
    try:
        for server in servers:
            running.append(server.start())
        yield tuple(running)
    finally:
        for server in running:
            try:
                server.stop()
            except Exception as exc:
                print(f"stopping {server.label} failed: {exc}", file=sys.stderr)


def wait_route_serving(target: str, route: str, timeout: float = 120.0) -> None:
    """Waits until the gateway's health service says ``route/<route>`` is SERVING (a model loaded)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while stub.Check(health_pb2.HealthCheckRequest(service=f"route/{route}"), timeout=5).status != 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {route} route never became SERVING")
            time.sleep(0.1)
