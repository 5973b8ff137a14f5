"""Jobs and revisions built by hand, and a clock the tests move, for the store and service tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.jobs import Job, JobInput, JobState, new_job_id

__all__ = ["PAYLOAD", "T0", "FakeClock", "finish", "make_job", "step"]

T0 = 1_700_000_000.0
_seq = iter(range(1, 10**9))


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self._now = now

    def now(self) -> float:
        return self._now

    def set(self, now: float) -> None:
        self._now = now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def make_job(tenant: str = "t", route: str = "echo", *, labels: dict[str, str] | None = None,
             request_id: str = "", created: float | None = None) -> Job:
    # Distinct creation times 10 ms apart, so ids sort in creation order whatever the random tail.
    now = created if created is not None else T0 + next(_seq) / 100
    return Job(id=new_job_id(now), tenant=tenant, route=route, state=JobState.QUEUED, revision=1, created=now,
               labels=dict(labels or {}), queue_position=1, request_id=request_id)


def step(job: Job, **changes: Any) -> Job:
    return replace(job, revision=job.revision + 1, **changes)


def finish(job: Job, state: JobState, now: float, retention: float = 100.0, **changes: Any) -> Job:
    return step(job, state=state, finished=now, expires=now + retention, queue_position=0, **changes)


PAYLOAD = JobInput(inputs={"x": 1}).encode()
