"""The Redis inbox of upstream webhooks, on a real redis-server: a delivery taken by another replica
reaches the job's runner whatever the runners' subscriptions do meanwhile, and is refused (503) when
no runner has the job."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from gateway.backends.upstream.inbox import Delivery, RedisInbox
from harness.redis import RedisProcess


def test_deliveries_through_another_replica_reach_jobs_attaching_and_leaving_at_once(redis_process: RedisProcess) -> None:
    async def go() -> tuple[list[Any], list[int]]:
        async def active(job_id: str) -> bool:
            return True

        runner = RedisInbox(active, redis_process.url, "http://gw")
        api = RedisInbox(active, redis_process.url, "http://gw")
        rng = random.Random(3)
        lost: list[Any] = []

        async def one(i: int) -> None:
            await asyncio.sleep(rng.random())
            queue: asyncio.Queue[Any] = asyncio.Queue()
            mailbox = await runner.attach(f"job{i}", "secret", queue)
            await asyncio.sleep(rng.random() * 0.2)
            status = await api.deliver(f"job{i}", "secret", Delivery(b'{"n": %d}' % i, {}))
            try:
                delivery = await asyncio.wait_for(queue.get(), 5)
                assert delivery.body == b'{"n": %d}' % i
            except TimeoutError:
                lost.append((i, status))
            await asyncio.sleep(rng.random() * 0.05)
            await mailbox.close()

        try:
            await asyncio.gather(*(one(i) for i in range(150)))
            after = [await api.deliver("job0", "secret", Delivery(b"{}", {})),
                     await api.deliver("job1", "wrong", Delivery(b"{}", {}))]
        finally:
            await runner.close()
            await api.close()
        return lost, after

    lost, after = asyncio.run(go())
    assert lost == []
    assert after == [503, 503]  # nobody runs them any more (and they are still active): the provider retries
