"""The job service tests again, on the Redis store (a real redis-server of this module's own, emptied
before each test): the service must behave the same on every store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import test_service
from tests.redis_server import RedisProcess, redis_process  # noqa: F401 (a fixture)
from tests.test_service import *  # noqa: F403 (collected again here)
from tests.test_service_v1 import *  # noqa: F403

# On a shared store a job waits for a worker of its route, wherever one may run: a process without
# the route does not fail it (tests/test_workers.py runs jobs through workers of other processes).
del test_resume_fails_jobs_of_a_route_no_longer_configured  # noqa: F821


@pytest.fixture(autouse=True)
def _on_redis(redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:  # noqa: F811
    redis_process.flush()
    monkeypatch.setattr(test_service, "STORE_URL", redis_process.url)
    yield
