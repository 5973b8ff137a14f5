"""Shared machinery for sections: result rows, child processes, servers under test, load processes.

Every child (gateway, bare server, load generator) is started through :func:`spawn`, so that
:func:`kill_all` can end all of them, and on Linux each one is also asked to die with the bench
(``PR_SET_PDEATHSIG``), so nothing outlives a killed ``python -m bench``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

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
    "spawn",
]

ROOT = Path(__file__).resolve().parent.parent
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


# -- processes -----------------------------------------------------------------------------------

_children: list[subprocess.Popen[Any]] = []
_lock = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Popen, registered for :func:`kill_all`; the child dies with this process (Linux)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **kwargs.pop("env", {})}
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(list(cmd), cwd=kwargs.pop("cwd", ROOT), env=env, preexec_fn=preexec, **kwargs)
    with _lock:
        _children.append(proc)
    return proc


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace``, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


def kill_all(grace: float = 5.0) -> None:
    """Ends every child still running (SIGTERM, then SIGKILL)."""
    with _lock:
        children = list(_children)
        _children.clear()
    for proc in children:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in children:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def _proc_status(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # kB
    except (OSError, ValueError):
        return None
    return None


def rss_mib(pid: int, key: str = "VmRSS") -> float | None:
    """Resident memory of a process in MiB (VmRSS; or VmHWM, the peak)."""
    kib = _proc_status(pid, key)
    return None if kib is None else kib / 1024.0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return None


class _Lines:
    """A child's stdout, line by line, read by a thread so that reads can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(None)

    def next_event(self, timeout: float, proc: subprocess.Popen[Any], what: str) -> dict[str, Any]:
        """The next JSON line; non-JSON lines are echoed to stderr and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: no answer within {timeout:.0f} s")
            try:
                line = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                proc.wait(5)
                raise RuntimeError(f"{what} exited with {proc.returncode} before answering")
            line = line.strip()
            if not line:
                continue
            try:
                return dict(json.loads(line))
            except ValueError:
                print(f"[{what}] {line}", file=sys.stderr)


# -- servers under test --------------------------------------------------------------------------


class Server:
    """A gRPC server in a child process that prints ``{"event":"serving","grpc":"HOST:PORT"}``."""

    label = "server"

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"bench-{self.label}-")
        self.workdir = Path(self._tmp.name)
        self.log_path = self.workdir / "server.log"
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
        with self.log_path.open("a") as log:
            self.proc = spawn(self.command(), stdout=subprocess.PIPE, stderr=log, text=True, cwd=self.workdir)
        assert self.proc.stdout is not None
        lines = _Lines(self.proc.stdout)
        try:
            while True:
                event = lines.next_event(timeout, self.proc, self.label)
                if event.get("event") == "serving":
                    self.target = str(event["grpc"])
                    self.http = str(event.get("http", ""))
                    return self
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{self.label} did not start: {exc}\n{self.log_tail()}") from exc

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
    """``gateway serve`` on a free port, a temp data dir and an echo-only config."""

    label = "gateway"

    def __init__(self, config: str = ECHO_CONFIG, extra_args: Sequence[str] = ()) -> None:
        super().__init__()
        self.config_path = self.workdir / "gateway.toml"
        self.config_path.write_text(config)
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gateway.cli", "serve", "--listen", "127.0.0.1:0", "--http-listen", "",
            "--data-dir", str(self.workdir / "data"), "--config", str(self.config_path), *self.extra_args,
        ]


class BareServer(Server):
    """The bare grpc.aio baseline of bench/bare.py."""

    label = "bare"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.bare", "--listen", "127.0.0.1:0"]


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
        self._lines = _Lines(self.proc.stdout)

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
