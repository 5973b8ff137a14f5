"""The gateway as its users run it: `gateway serve` (or `gateway worker`) in a child process on free
ports, and `gateway-client` as a command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.process import Lines, start_serving

__all__ = ["ECHO_CONFIG", "WHISPER_CONFIG", "ServerProcess", "cli"]

ECHO_CONFIG = """
[routes.echo]
backend = "echo"
"""
WHISPER_CONFIG = ECHO_CONFIG + """
[routes.whisper]
backend = "whisper"
"""


class ServerProcess:
    """`gateway serve` in a child process, on free ports (or the ports of its previous run), its
    stderr in ``workdir/server.log``."""

    def __init__(self, workdir: Path, config: str | None = None, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), command: str = "serve") -> None:
        self.command = command  # "worker": `gateway worker` (workers and health only)
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "gateway.toml"
            self.config_path.write_text(config)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.lines: Lines | None = None  # the rest of its stdout
        self.grpc_address = "127.0.0.1:0"
        self.http_address = "127.0.0.1:0"
        self.log_path = workdir / "server.log"
        self.runs = 0

    @property
    def target(self) -> str:
        return self.grpc_address

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "gateway.cli", self.command, "--listen", self.grpc_address, *self.args]
        if self.command == "serve":
            cmd += ["--http-listen", self.http_address, "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        self.proc, event, self.lines = start_serving(cmd, what="gateway", timeout=timeout, log_path=self.log_path,
                                                     env=self.env, cwd=self.workdir,
                                                     die_with_parent=False)
        self.grpc_address = event["grpc"]
        self.http_address = event.get("http", self.http_address)
        self.runs += 1
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait: the graceful path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill(self) -> None:
        """kill -9: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 90.0) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def wait_serving(self, service: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.health(service) != health_pb2.HealthCheckResponse.SERVING:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} not SERVING:\n{self.log()}")
            time.sleep(0.1)


def cli(target: str, *args: str, token: str | None = None, timeout: float = 120.0,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `gateway-client` as a user would."""
    cmd = [sys.executable, "-m", "gateway_client.cli", "--target", target]
    if token:
        cmd += ["--token", token]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, input=input_text)


def redis_replicas(make_server: Callable[..., ServerProcess], redis_url: str, config: str, ready_route: str, apis: int = 2,
                   workers: int = 2, lease_seconds: float = 2.0) -> list[ServerProcess]:
    """A scaled deployment on one Redis: ``apis`` API replicas that run no jobs, and ``workers`` worker
    processes, each serving ``ready_route`` before this returns; answers the API replicas (``make_server``:
    the tests' factory, which stops them all)."""
    shared = f'store = "{redis_url}"\nshutdown_grace_seconds = 0\nlease_seconds = {lease_seconds:g}\n' + config
    replicas = [make_server(shared, args=("--workers", "0")) for _ in range(apis)]
    for _ in range(workers):
        make_server(shared, command="worker").wait_serving(f"route/{ready_route}")
    return replicas
