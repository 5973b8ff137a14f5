"""Child processes: started so that they die with their parent, read line by line, and waited on
until they say they serve.

Every server the tests and the benchmarks start (the gateway, the bare grpc.aio baseline, the fake
upstreams) prints one JSON line ``{"event": "serving", ...}`` on stdout once it accepts connections;
:func:`start_serving` is the one place that starts such a process and waits for that line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "Lines", "cpu_seconds", "kill_all", "rss_mib", "spawn", "start_serving", "stop_process"]

ROOT = Path(__file__).resolve().parent.parent

_children: list[subprocess.Popen[Any]] = []
_lock = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: Sequence[str], *, die_with_parent: bool = True, **kwargs: Any) -> subprocess.Popen[Any]:
    """Popen with the repository on PYTHONPATH, registered for :func:`kill_all`; on Linux, with
    ``die_with_parent``, the child dies with this process, so nothing outlives a killed benchmark.

    The tests start theirs without it, for two reasons: the kernel ties the child to the *thread* that
    started it (a server restarted from a helper thread would die with that thread), and asking for it
    takes a hook that runs between fork and exec, where gRPC's fork handlers, in a process whose other
    threads are inside gRPC, can abort the child ("epoll_wait error: Bad file descriptor")."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **(kwargs.pop("env", None) or {})}
    preexec = _die_with_parent if die_with_parent and sys.platform.startswith("linux") else None
    proc = subprocess.Popen(list(cmd), cwd=kwargs.pop("cwd", ROOT), env=env, preexec_fn=preexec, **kwargs)
    with _lock:
        _children[:] = [child for child in _children if child.poll() is None]
        _children.append(proc)
    return proc


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace``, then SIGKILL; closes its pipes."""
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


class Lines:
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
        """The next JSON line; non-JSON lines are echoed to stderr and skipped. RuntimeError when the
        child exits first, TimeoutError after ``timeout`` seconds."""
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
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                raise RuntimeError(f"{what} exited with {proc.returncode} before answering")
            line = line.strip()
            if not line:
                continue
            try:
                return dict(json.loads(line))
            except ValueError:
                print(f"[{what}] {line}", file=sys.stderr)


def start_serving(cmd: Sequence[str], *, what: str, timeout: float, log_path: Path | None = None,
                  **kwargs: Any) -> tuple[subprocess.Popen[str], dict[str, Any], Lines]:
    """Starts ``cmd`` (stderr appended to ``log_path``, else kept in a pipe) and waits for its
    ``{"event": "serving"}`` line: (the process, that event, the rest of its stdout). The process is
    stopped if it does not get there; the error says why, with the log's end."""
    if log_path is not None:
        with log_path.open("a") as log:
            proc = spawn(cmd, stdout=subprocess.PIPE, stderr=log, text=True, **kwargs)
    else:
        proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    try:
        while True:
            event = lines.next_event(timeout, proc, what)
            if event.get("event") == "serving":
                return proc, event, lines
    except (RuntimeError, TimeoutError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if log_path is not None:
            tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
        else:
            tail = proc.stderr.read()[-4000:] if proc.stderr is not None else ""
        stop_process(proc)
        raise type(exc)(f"{exc}:\n{tail}") from None


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
