"""Shared test machinery: real gateway processes on free ports, and clients for them."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

ECHO_CONFIG = """
[routes.echo]
backend = "echo"
"""
WHISPER_CONFIG = ECHO_CONFIG + """
[routes.whisper]
backend = "whisper"
"""


def unavailable(message: str) -> NoReturn:
    """A tool or permission a test needs is missing: in CI (``CI`` set) the test fails, since CI must run
    it; elsewhere it is skipped with ``message``, which says how to get what is missing."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def wait_until(condition: Callable[[], object], what: str = "the condition", timeout: float = 20.0,
               interval: float = 0.05) -> None:
    """Polls ``condition`` until it holds; fails after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def error_info(error: grpc.RpcError) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    """A refusal's google.rpc.Status (from the grpc-status-details-bin trailer) and its ErrorInfo."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, (error.code(), error.details())
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status, info


class ServerProcess:
    """`gateway serve` in a child process, on free ports (or the ports of its previous run)."""

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
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, cwd=self.workdir)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway did not start:\n{self.log()}") from None
                continue
            event = json.loads(line)
            if event.get("event") == "serving":
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


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory of gateway processes, each in a folder of its own, all stopped at the end."""
    servers: list[ServerProcess] = []

    def make(config: str | None = ECHO_CONFIG, start: bool = True, **kwargs: object) -> ServerProcess:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = ServerProcess(workdir, config, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        try:
            server.stop(timeout=20)
        except Exception:
            server.kill()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One echo-only gateway shared by a module's tests."""
    server = ServerProcess(tmp_path_factory.mktemp("echo"), ECHO_CONFIG).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One gateway with the echo and whisper routes (the default set), warm, shared by a module's tests."""
    server = ServerProcess(tmp_path_factory.mktemp("whisper"), WHISPER_CONFIG).start()
    server.wait_serving("route/whisper")
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (tests/webhook_receiver.py), verifying with the reference library."""
    server = Receiver().start()
    yield server
    server.stop()


def cli(target: str, *args: str, token: str | None = None, timeout: float = 120.0,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `gateway-client` as a user would."""
    cmd = [sys.executable, "-m", "gateway_client.cli", "--target", target]
    if token:
        cmd += ["--token", token]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, input=input_text)
