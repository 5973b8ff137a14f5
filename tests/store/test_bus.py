"""The in-process event bus: every subscriber gets each event once, in publish order; filters by job
and tenant; unsubscribing stops delivery; one failing handler does not starve the others."""

from __future__ import annotations

from gateway.bus import MemoryBus
from gateway.hub import JobEvent
from gateway.jobs import Job, JobState


def _event(job_id: str, revision: int, tenant: str = "t") -> JobEvent:
    return JobEvent(Job(id=job_id, tenant=tenant, route="echo", state=JobState.RUNNING, revision=revision, created=0.0))


def test_subscribers_get_what_they_asked_for_in_order() -> None:
    bus = MemoryBus()
    everything: list[tuple[str, int]] = []
    one_job: list[tuple[str, int]] = []
    one_tenant: list[tuple[str, int]] = []
    bus.subscribe(lambda e: everything.append((e.job.id, e.job.revision)))
    bus.subscribe(lambda e: one_job.append((e.job.id, e.job.revision)), job_id="a")
    stop = bus.subscribe(lambda e: one_tenant.append((e.job.id, e.job.revision)), tenant="u")
    for event in (_event("a", 1), _event("b", 1, tenant="u"), _event("a", 2), _event("c", 1, tenant="u")):
        bus.publish(event)
    assert everything == [("a", 1), ("b", 1), ("a", 2), ("c", 1)]
    assert one_job == [("a", 1), ("a", 2)]
    assert one_tenant == [("b", 1), ("c", 1)]
    stop()
    bus.publish(_event("d", 1, tenant="u"))
    assert one_tenant == [("b", 1), ("c", 1)] and everything[-1] == ("d", 1)


def test_a_failing_handler_does_not_starve_the_others() -> None:
    bus = MemoryBus()
    seen: list[int] = []

    def broken(_: JobEvent) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(e.job.revision))
    bus.publish(_event("a", 1))
    bus.publish(_event("a", 2))
    assert seen == [1, 2]
