"""The fixtures every test folder shares: real gateway processes on free ports, a redis-server of the
module's own, every store, a webhook receiver and Node.js. The machinery itself is the harness package
(harness/), which the benchmarks and the fakes use too; the test-only builders are tests/helpers."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.redis import RedisStore
from gateway.store import SqliteStore, Store
from harness import ECHO_CONFIG, ROOT, WHISPER_CONFIG, ServerProcess, unavailable
from harness.certs import Authority
from harness.redis import RedisProcess
from harness.webhook_receiver import Receiver
from tests.helpers.jobs import T0, FakeClock
from tests.helpers.service import use_store

STORES = ["sqlite", "redis"]
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"


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
    """A webhook receiver on 127.0.0.1 (harness/webhook_receiver.py), verifying with the reference library."""
    server = Receiver().start()
    yield server
    server.stop()


# -- Redis and the stores --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A redis-server shared by a module's tests."""
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_transports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A redis-server that also listens on a Unix socket and, with TLS, on another port (its CA in
    ``tls / "ca.pem"``)."""
    folder = tmp_path_factory.mktemp("redis-tls")
    Authority(folder).issue("server")
    try:
        server = RedisProcess(tmp_path_factory.mktemp("redis"), unix_socket=True, tls=folder).start()
    except RuntimeError as exc:  # e.g. a redis-server built without TLS (Debian's has it)
        unavailable(f"redis-server could not listen on a Unix socket and with TLS: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=STORES)
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Every store, open: SQLite on a real file in tmp_path, Redis on the module's redis-server, emptied."""
    if request.param == "sqlite":
        async with SqliteStore(tmp_path / "gateway.sqlite3") as store:
            yield store
    elif request.param == "redis":
        server: RedisProcess = request.getfixturevalue("redis_process")
        server.flush()
        async with RedisStore(server.url, clock=FakeClock(T0)) as store:
            yield store
    else:  # pragma: no cover - a store kind listed without a fixture
        raise AssertionError(request.param)


@pytest.fixture(params=STORES)
def every_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The in-process service of tests/helpers/service.py on every store: SQLite in the test's data dir,
    or the module's redis-server, emptied before the test."""
    if request.param == "redis":
        server: RedisProcess = request.getfixturevalue("redis_process")
        server.flush()
        use_store(server.url)
    else:
        use_store("")
    yield request.param
    use_store("")


# -- other languages -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """Node.js with the cross-language client's modules (tests/node, installed by `make install`)."""
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is not installed: the cross-language test needs Node.js")
    if not (NODE_MODULES / "@grpc" / "grpc-js").is_dir() or not (NODE_MODULES / "@grpc" / "proto-loader").is_dir():
        pytest.fail(f"{NODE_MODULES} lacks @grpc/grpc-js or @grpc/proto-loader: run `make install`")
    return binary
