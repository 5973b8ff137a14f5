"""A real Gateway in the test's own process (its store, event hub and echo routes) with a fake clock.

Which store it runs on is the ``every_store`` fixture's choice (tests/conftest.py): SQLite in the
test's tmp_path, or a real redis-server emptied before each test: the service must behave the same on
every store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.jobs import Job, JobInput, JobState
from gateway.server import Gateway
from gateway.service import JobService
from gateway.settings import EchoRoute, Settings
from tests.helpers.jobs import FakeClock

__all__ = ["TENANT", "inputs", "make_settings", "on_shared_store", "running", "state_of", "submit", "until", "use_store"]

TENANT = "t"
_store_url = ""  # empty: SQLite in the data dir


def use_store(url: str) -> None:
    """The store of the settings made from now on (a redis:// URL, or empty for SQLite)."""
    global _store_url
    _store_url = url


def on_shared_store() -> bool:
    return bool(_store_url)


def make_settings(data_dir: Path, route: EchoRoute | None = None, **kw: Any) -> Settings:
    return Settings(
        listen="127.0.0.1:0", http_listen="", data_dir=data_dir, store=_store_url, lease_seconds=1.0,
        routes={"echo": route or EchoRoute(workers=2)}, shutdown_grace_seconds=0, **kw,
    )


@asynccontextmanager
async def running(settings: Settings, clock: FakeClock) -> AsyncIterator[Gateway]:
    gw = Gateway(settings, clock=clock)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def inputs(**values: Any) -> JobInput:
    return JobInput(inputs=values)


async def submit(service: JobService, labels: dict[str, str] | None = None, request_id: str = "",
                 **values: Any) -> Job:
    job, existing = await service.submit(TENANT, "echo", inputs(**values), labels or {}, request_id)
    assert not existing
    return job


async def until(predicate: Callable[[], Any]) -> None:
    """Polls a condition of the running service (no event to wait on from outside), for up to 10 s."""
    async with asyncio.timeout(10):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def state_of(service: JobService, job_id: str) -> JobState:
    return (await service.get(TENANT, job_id)).state
