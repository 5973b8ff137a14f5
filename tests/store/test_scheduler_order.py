"""The scheduler's order, one algorithm in two places: ``FairOrder`` (the in-process queue) and the Redis
take script. Any mix of tenants, weights, priorities, cancels and takes between arrivals gives the same
order in both (hypothesis), and the worked example of docs/architecture.md holds."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.jobs import JobState
from gateway.redis import RedisStore
from gateway.redis.keys import GROUP, queue_key, sched_key
from gateway.redis.scripts import POSITION, TAKE
from gateway.settings import TenantSettings
from gateway.work.queue import FairOrder
from harness.redis import RedisProcess
from tests.helpers.jobs import T0, FakeClock, finish, make_job

WEIGHTS = {"a": 2.0, "b": 1.0, "c": 0.5}


def test_the_worked_example_of_the_architecture_doc() -> None:
    order = FairOrder(lambda tenant: WEIGHTS[tenant])
    for i in range(1, 7):
        order.add(f"a{i}", "a", 3)
    order.add("b1", "b", 3)
    order.add("b2", "b", 3)
    order.add("a7", "a", 1)
    assert list(order) == ["a7", "b1", "a1", "a2", "b2", "a3", "a4", "a5", "a6"]
    assert [order.pop() for _ in range(3)] == ["a7", "b1", "a1"]
    order.add("c1", "c", 5)  # joins at the pass of the last job taken: next, not after a's backlog
    assert list(order)[:2] == ["c1", "a2"] or list(order)[:2] == ["a2", "c1"]


def test_a_tenant_idle_for_a_while_banks_no_share() -> None:
    order = FairOrder()
    order.add("b1", "b", 3)
    assert order.pop() == "b1"
    for i in range(10):
        order.add(f"a{i}", "a", 3)
    for _ in range(8):
        order.pop()
    for i in range(4):
        order.add(f"b{i + 2}", "b", 3)
    # b was idle while a ran 8: it joins at a's pass, alternating, not taking 8 in a row.
    assert list(order)[:4] in (["a8", "b2", "a9", "b3"], ["b2", "a8", "b3", "a9"])


ADD = st.tuples(st.just("add"), st.sampled_from(sorted(WEIGHTS)), st.integers(1, 5))
STEP = st.one_of(ADD, ADD, ADD, st.tuples(st.just("take"), st.integers(1, 3)), st.tuples(st.just("cancel"), st.integers(0, 30)))
A_BACKLOG_THEN_OTHERS = [*[("add", "a", 3)] * 6, ("add", "b", 3), ("add", "b", 3), ("add", "c", 2), ("take", 3),
                         ("add", "a", 1), ("take", 3), ("cancel", 1), ("take", 3), ("take", 3)]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, max_size=40))
@example(steps=A_BACKLOG_THEN_OTHERS)
async def test_redis_takes_jobs_in_the_order_of_fair_order(redis_server: RedisProcess, steps: list[tuple]) -> None:
    redis_server.flush()
    expected = FairOrder(lambda tenant: WEIGHTS[tenant])
    taken_here: list[str] = []
    taken_there: list[str] = []
    async with RedisStore(redis_server.url, clock=FakeClock(T0), tenants=lambda t: TenantSettings(weight=WEIGHTS[t])) as store:
        raw = store._redis
        take = raw.register_script(TAKE)
        jobs = {}
        waiting: list[str] = []
        for step in steps:
            if step[0] == "add":
                job = replace(make_job(tenant=step[1]), priority=step[2])
                await store.create_job(job, "", b"{}")
                jobs[job.id] = job
                expected.add(job.id, job.tenant, job.priority)
                waiting.append(job.id)
            elif step[0] == "take":
                for _ in range(step[1]):
                    if len(expected):
                        taken_here.append(expected.pop())
                answer = await take(keys=[queue_key("gw:", "echo")],
                                    args=[sched_key("gw:", "echo"), GROUP, "tester", step[1], "gw:job:"])
                taken_there += [j.decode() for j in answer[::2]]
            elif waiting:  # cancel a job that may still be waiting
                job_id = waiting[step[1] % len(waiting)]
                if job_id in expected:
                    expected.remove(job_id)
                    job = jobs[job_id]
                    await store.save_revision(finish(job, JobState.CANCELLED, T0))
        position = raw.register_script(POSITION)
        for place, job_id in enumerate(expected, start=1):  # each waiting job's place, as Get reads it
            found = await position(args=[sched_key("gw:", "echo"), job_id, jobs[job_id].tenant])
            assert int(found) == place == expected.position(job_id), (job_id, place, found)
        for _ in range(len(expected)):  # what is left, in order
            taken_here.append(expected.pop())
        answer = await take(keys=[queue_key("gw:", "echo")], args=[sched_key("gw:", "echo"), GROUP, "tester", 100, "gw:job:"])
        taken_there += [j.decode() for j in answer[::2]]
        assert taken_there == taken_here
        assert int(await raw.llen(sched_key("gw:", "echo") + "waiting")) == 0


async def test_entries_queued_by_an_older_gateway_are_taken_first(redis_server: RedisProcess) -> None:
    """Before the scheduler, CREATE added a stream entry per job, unread: after an upgrade the workers'
    take script delivers those first, then the scheduler's."""
    redis_server.flush()
    async with RedisStore(redis_server.url, clock=FakeClock(T0)) as store:
        raw = store._redis
        stream = queue_key("gw:", "echo")
        await raw.xgroup_create(stream, GROUP, id="0", mkstream=True)
        old = make_job(tenant="a")
        await store.create_job(old, "", b"{}")
        # What the old create script left: the job out of the scheduler, an unread entry in the stream.
        await raw.eval("redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('LPOP', KEYS[2]); "
                       "redis.call('ZREM', KEYS[3], 'a'); redis.call('HDEL', KEYS[4], 'sq', 'ss')", 4,
                       sched_key("gw:", "echo") + "t:a", sched_key("gw:", "echo") + "waiting",
                       sched_key("gw:", "echo") + "tenants", f"gw:job:{old.id}", old.id)
        entry = await raw.xadd(stream, {"job": old.id})
        new = make_job(tenant="b")
        await store.create_job(new, "", b"{}")
        take = raw.register_script(TAKE)
        answer = await take(keys=[stream], args=[sched_key("gw:", "echo"), GROUP, "tester", 5, "gw:job:"])
        assert [a.decode() for a in answer] == [old.id, entry.decode(), new.id, answer[3].decode()]
        pending = await raw.xpending(stream, GROUP)
        assert pending["pending"] == 2  # both held by this consumer now: its leases


async def test_tenants_at_their_max_running_do_not_hide_the_others_however_many(redis_server: RedisProcess) -> None:
    """Seventy tenants at their max_running, each with a job waiting, ahead in the round: the take
    script still finds the one tenant that may run."""
    redis_server.flush()
    capped = TenantSettings(max_running=1)
    async with RedisStore(redis_server.url, clock=FakeClock(T0),
                          tenants=lambda t: capped if t.startswith("c") else TenantSettings()) as store:
        take = store._redis.register_script(TAKE)

        async def taken(count: int) -> list[str]:
            answer = await take(keys=[queue_key("gw:", "echo")],
                                args=[sched_key("gw:", "echo"), GROUP, "tester", count, "gw:job:"])
            return [a.decode() for a in answer[::2]]

        for i in range(70):
            for _ in range(2):
                await store.create_job(make_job(tenant=f"c{i:02}"), "", b"{}")
        free = [make_job(tenant="z") for _ in range(5)]
        for job in free:
            await store.create_job(job, "", b"{}")
        got = await taken(200)
        # One of each capped tenant's (then all at their max_running, ahead of z in the round), and all of z's.
        assert len(got) == 75 and set(got) >= {j.id for j in free}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), takes=st.integers(0, 400), cancels=st.integers(0, 50))
def test_positions_follow_the_order_behind_a_long_backlog(seed: int, takes: int, cancels: int) -> None:
    """Positions are counted by bisection within a tenant's jobs of one priority (whose taken ones are
    cut off in blocks): after many takes and cancels, each job's position is still its place in the
    order, and the jobs are taken in that order."""
    rng = random.Random(seed)
    order = FairOrder(lambda tenant: WEIGHTS[tenant])
    ids = []
    for i in range(500):
        ids.append(f"j{i}")
        order.add(ids[-1], rng.choice(sorted(WEIGHTS)), rng.randint(1, 5))
    for _ in range(takes):
        order.pop()
    for job_id in rng.sample(ids, cancels):
        order.remove(job_id)
    listed = list(order)
    assert len(listed) == len(order)
    assert [order.position(job_id) for job_id in listed] == list(range(1, len(listed) + 1))
    assert sum(order.tenants().values()) == sum(order.by_priority().values()) == len(order)
    assert [order.pop() for _ in range(len(listed))] == listed
    assert len(order) == 0 and order.oldest_created() is None
