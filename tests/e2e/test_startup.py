"""Start-up failures: one line naming the cause and the setting to change, a distinct exit code, and
nothing left half-started; one gateway process owns a data dir."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import ECHO_CONFIG, ROOT, ServerProcess


def _gateway(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.toml"
    config.write_text(ECHO_CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: its only line on stderr besides log lines, and no traceback."""
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("gateway: ")]
    assert len(lines) == 1, done.stderr
    assert done.stdout == ""  # never reported serving
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    done = _gateway(tmp_path, "--listen", "127.0.0.1:0", "--http-listen", "", "--data-dir", str(tmp_path / "data"))
    line = _one_line(done)
    assert done.returncode == 3 and "is a file" in line and "--data-dir" in line


def test_a_second_gateway_on_a_data_dir_exits_naming_the_owner(
        tmp_path: Path, make_server: Callable[..., ServerProcess]) -> None:
    owner = make_server(ECHO_CONFIG)
    assert owner.proc is not None
    done = _gateway(tmp_path, "--listen", "127.0.0.1:0", "--http-listen", "", "--data-dir", str(owner.data_dir))
    line = _one_line(done)
    assert done.returncode == 4 and f"pid {owner.proc.pid}" in line and "--data-dir" in line
    # The owner is untouched, and once it stops the data dir is free again (also after a kill -9).
    owner.kill()
    owner.start()


def test_a_busy_grpc_port(tmp_path: Path, busy_port: int) -> None:
    done = _gateway(tmp_path, "--listen", f"127.0.0.1:{busy_port}", "--http-listen", "", "--data-dir",
                    str(tmp_path / "data"))
    line = _one_line(done)
    assert done.returncode == 5 and f"127.0.0.1:{busy_port}" in line and "--listen" in line


def test_a_busy_http_port(tmp_path: Path, busy_port: int) -> None:
    done = _gateway(tmp_path, "--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{busy_port}", "--data-dir",
                    str(tmp_path / "data"))
    line = _one_line(done)
    assert done.returncode == 6 and f"127.0.0.1:{busy_port}" in line and "--http-listen" in line
    # It let go of what it had started: the data dir is free for the next start.
    again = _gateway(tmp_path, "--listen", f"127.0.0.1:{busy_port}", "--http-listen", "", "--data-dir",
                     str(tmp_path / "data"))
    assert again.returncode == 5


def test_serve_with_no_workers_on_the_default_settings_serves_and_says_its_jobs_wait(
        make_server: Callable[..., ServerProcess]) -> None:
    """`gateway serve --workers 0` with the default routes (whisper and echo) and the SQLite store: it serves
    without a traceback, its routes are up at once (no model to load), and its log says that with a store of
    its own nothing will run the jobs."""
    server = make_server(None, args=("--workers", "0"))
    for route in ("echo", "whisper"):
        server.wait_serving(f"route/{route}", timeout=30)
    with urllib.request.urlopen(f"{server.http_url}/whisper/healthcheck", timeout=10) as answer:
        assert answer.status == 200 and json.loads(answer.read())["status"] == "ok"
    log = server.log()
    assert "Traceback" not in log and "runs no jobs (--workers 0)" in log and "Redis store" in log


def test_a_documented_placeholder_token_stops_the_start(tmp_path: Path) -> None:
    """The token the old manifests shipped (and the docs' example) would let anyone in: the gateway exits 2."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"replace-this-token": "team-a"}')
    config = tmp_path / "placeholder.toml"
    config.write_text(ECHO_CONFIG + f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n')
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    line = _one_line(done)
    assert "placeholder" in line and "team-a" in line and "replace-this-token" in line


@pytest.mark.parametrize(("choice", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_the_event_loop_setting_picks_the_loop_the_gateway_serves_on(
        make_server: Callable[..., ServerProcess], choice: str, expected: str) -> None:
    """uvloop is a dependency where it builds: `auto` serves on it; `asyncio` on asyncio's own loop. Either
    way jobs run and stream to the end."""
    from gateway_client import Client, Output

    server = make_server(ECHO_CONFIG, env={"GATEWAY_EVENT_LOOP": choice})
    with Client(server.target) as client:
        future = client.submit("echo", {"steps": 2, "delay_ms": 20, "note": choice})
        assert future.result(timeout=30) == Output({"steps": 2, "delay_ms": 20, "note": choice})
    assert f"event loop: {expected}" in server.log()


def test_a_stopped_gateway_leaves_its_store_checkpointed(make_server: Callable[..., ServerProcess]) -> None:
    """SIGTERM after serving (and reading: Get, List): the SQLite store's every connection is closed, so
    the last one checkpoints the WAL and removes it and the shared-memory file. Left behind, they let a
    start on a disk that has filled meanwhile open a store it cannot write (test_disk_full)."""
    from gateway_client import Client, Output

    server = make_server(ECHO_CONFIG)
    with Client(server.target) as client:
        future = client.submit("echo", {"n": 1})
        assert future.result(timeout=30) == Output({"n": 1})
        assert client.get(future.job_id).done and client.list().jobs
    assert server.stop() == 0
    assert sorted(p.name for p in server.data_dir.iterdir()) == ["gateway.lock", "gateway.sqlite3"]
