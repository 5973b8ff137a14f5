"""A real ``redis-server`` of a test's or a benchmark's own, on a free port, in a folder of its own.

Nothing here uses a Redis a machine may already run (kill and restart tests need their own). Where no
``redis-server`` is installed the Redis tests skip with a message saying how to get it, except in
CI (``CI`` set), where they fail: CI must run them (harness.checks.unavailable).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from harness.checks import unavailable
from harness.process import spawn, stop_process

__all__ = ["RedisProcess", "require_redis_server"]


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        unavailable("redis-server is not installed (Debian: apt-get install redis-server); the Redis tests need it")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """``redis-server`` with append-only persistence in ``workdir``; restartable on the same port.

    ``unix_socket``: it also listens on ``workdir/redis.sock`` (``unix_url``). ``tls``: a folder
    holding a CA's ``ca.pem`` and a server certificate for 127.0.0.1 and localhost (``server.pem``,
    ``server.key``), from tests.certs; it also listens with TLS on another port (``tls_url``). The
    plain port stays open for the fixtures' own checks."""

    def __init__(self, workdir: Path, appendonly: bool = True, unix_socket: bool = False,
                 tls: Path | None = None, appendfsync: str = "always",
                 die_with_parent: bool = False, password: str | None = None) -> None:
        self.binary = require_redis_server()
        self.workdir = workdir
        self.port = _free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync  # "always" for the fault tests; the benchmarks use "everysec"
        self.die_with_parent = die_with_parent  # the benchmarks' choice (harness.process.spawn)
        self.socket = workdir / "redis.sock" if unix_socket else None
        self.tls = tls
        self.tls_port = _free_port() if tls is not None else 0
        self.password = password  # requirepass, and protected mode on
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket is not None
        return f"unix://{self.socket}?db=0"

    @property
    def tls_url(self) -> str:
        assert self.tls is not None
        return f"rediss://localhost:{self.tls_port}/0?ssl_ca_certs={self.tls / 'ca.pem'}"

    def _transports(self) -> list[str]:
        args = []
        if self.socket is not None:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.tls is not None:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls / "server.pem"),
                     "--tls-key-file", str(self.tls / "server.key"), "--tls-ca-cert-file", str(self.tls / "ca.pem"),
                     "--tls-auth-clients", "no"]
        return args

    def start(self, timeout: float = 20.0) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
               "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
               "--logfile", str(self.workdir / "redis.log"), *self._transports(),
               *(["--requirepass", self.password, "--protected-mode", "yes"] if self.password else
                 ["--protected-mode", "no"])]
        self.proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, die_with_parent=self.die_with_parent)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer: {self.log()}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(self._auth() + b"PING\r\n")
                return b"+PONG" in sock.recv(64)
        except OSError:
            return False

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10.0)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(self._auth() + b"FLUSHALL\r\n")
            sock.recv(64)

    def _auth(self) -> bytes:
        return f"AUTH {self.password}\r\n".encode() if self.password else b""

    def command_without_auth(self, *args: str) -> str:
        """A command sent with no password (what a stranger on the network gets)."""
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip()

    def command(self, *args: str) -> str:
        """A command through redis-cli (its answer as text; empty when Redis does not answer)."""
        try:
            auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
            done = subprocess.run(["redis-cli", "-p", str(self.port), *auth, *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    def used_memory(self) -> int:
        for line in self.command("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise RuntimeError("no used_memory in INFO")
