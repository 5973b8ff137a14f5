"""What the Redis engine stores and publishes, as JSON: jobs (without their segments, which are kept
apart, each once), segments, and the events of committed revisions.

A job's fixed fields (id, tenant, route, creation, labels, request id, webhook) are encoded once per
job and reused for its every revision; only the fields that change are encoded again.

An event, as the store's scripts publish it on ``keys.events`` (scripts.CREATE and scripts.SAVE):
``<job id>|<revision>|<ended 0/1>|<position>|<segments offset>|<tenant bytes>|<tenant>{"j": job, "s": [new segments]}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.hub import JobEvent
from gateway.jobs import Job, JobFailure, JobState, Segment, WebhookSpec, compact_json

__all__ = ["RemoteEvent", "decode_event", "decode_segments", "dumps", "fixed_length", "job_delta", "job_from_delta",
           "job_from_dict", "job_from_json", "job_json"]


dumps = compact_json


# job id -> (the fixed fields, the labels mapping, their JSON): revisions of one job share the labels
# object, so a hit costs a few comparisons; anything else (another job under the same id) is made afresh.
_STATIC_JSON: dict[str, tuple[tuple[Any, ...], Any, str]] = {}
_STATIC_JSON_MAX = 100_000


def _number(value: float | None) -> str:
    return "null" if value is None else repr(value)  # (finite: times and progress)


def job_json(job: Job) -> str:
    """The job as stored and published: its fixed fields' JSON (made once per job), then the others."""
    static = _static_json(job)
    if job.terminal:
        _STATIC_JSON.pop(job.id, None)
    error = "null" if job.error is None else dumps(job.error.to_dict())
    return (f'{static},"state":{int(job.state)},"revision":{job.revision},"progress":{_number(job.progress)},'
            f'"started":{_number(job.started)},"finished":{_number(job.finished)},"expires":{_number(job.expires)},'
            f'"error":{error},"queue_position":{job.queue_position}'
            + (f',"attempt":{job.attempt}' if job.attempt != 1 else '')
            + (f',"logs":{dumps(job.logs)}}}' if job.logs else '}'))


# What changes from one revision of a job to the next, in this order: a revision's entry in the job's
# revisions (scripts.SAVE) holds these values alone, a JSON array, the fixed fields being the job's own.
DELTA = ("state", "revision", "progress", "started", "finished", "expires", "error", "queue_position", "attempt", "logs")


def job_delta(job: Job) -> str:
    """The revision's changing fields as a JSON array (DELTA's order; attempt and logs left off at their defaults)."""
    values: list[Any] = [int(job.state), job.revision, job.progress, job.started, job.finished, job.expires,
                         None if job.error is None else job.error.to_dict(), job.queue_position]
    if job.attempt != 1 or job.logs:
        values.append(job.attempt)
    if job.logs:
        values.append(job.logs)
    return dumps(values)


def job_from_delta(fixed: Mapping[str, Any], delta: str | bytes, segments: tuple[Segment, ...] = ()) -> Job:
    """A revision from its delta (job_delta) and any revision's decoded JSON (for the fixed fields)."""
    data = {**fixed, "attempt": 1, "logs": ""}
    data.update(zip(DELTA, json.loads(delta), strict=False))
    return job_from_dict(data, segments)


def fixed_length(job: Job) -> int:
    """How long the part of ``job_json(job)`` made of the job's fixed fields is: the same in every revision."""
    return len(_static_json(job))


def _static_json(job: Job) -> str:
    fixed = (job.tenant, job.route, job.created, job.request_id, job.webhook)
    cached = _STATIC_JSON.get(job.id)
    if cached is not None and cached[1] is job.labels and cached[0] == fixed:
        static = cached[2]
    else:
        if len(_STATIC_JSON) >= _STATIC_JSON_MAX:
            _STATIC_JSON.clear()
        static = dumps({
            "id": job.id, "tenant": job.tenant, "route": job.route, "created": job.created, "labels": dict(job.labels),
            "request_id": job.request_id, **({} if job.webhook is None else {"webhook": job.webhook.to_dict()}),
            **({"timeouts": [job.queue_timeout, job.run_timeout]} if job.queue_timeout or job.run_timeout else {}),
            **({"priority": job.priority} if job.priority != 3 else {}),
            **({"retry_of": job.retry_of} if job.retry_of else {}),
        })[:-1]
        _STATIC_JSON[job.id] = (fixed, job.labels, static)
    return static


def job_from_json(text: str | bytes, segments: tuple[Segment, ...] = ()) -> Job:
    return job_from_dict(json.loads(text), segments)


def job_from_dict(data: Mapping[str, Any], segments: tuple[Segment, ...] = ()) -> Job:
    return Job(
        id=data["id"], tenant=data["tenant"], route=data["route"], state=JobState(data["state"]),
        revision=data["revision"], created=data["created"], progress=data["progress"], started=data["started"],
        finished=data["finished"], expires=data["expires"], labels=data["labels"],
        error=JobFailure.from_dict(data["error"]) if data["error"] else None, segments=segments,
        queue_position=data["queue_position"], request_id=data["request_id"],
        webhook=WebhookSpec.from_dict(data.get("webhook")), logs=data.get("logs", ""),
        **_timeouts(data.get("timeouts")), priority=data.get("priority", 3), retry_of=data.get("retry_of", ""),
        attempt=data.get("attempt", 1),
    )


def _timeouts(value: Any) -> dict[str, Any]:
    return {} if not value else {"queue_timeout": value[0], "run_timeout": value[1]}


def decode_segments(raw: Sequence[bytes]) -> tuple[Segment, ...]:
    return tuple(Segment.from_dict(json.loads(r)) for r in raw)


class RemoteEvent(JobEvent):
    """An event from the channel. Its header (job id, revision, whether it ended, position, segment
    offset, tenant) is read at once; the job itself is decoded the first time ``job`` is read, so an
    event that concerns nobody in this process costs a split, not a JSON decode."""

    __slots__ = ("_body", "_decoded", "_job_id", "_revision", "_tenant", "_terminal")

    def __init__(self, raw: bytes) -> None:
        job_id, revision, terminal, position, offset, size, rest = raw.split(b"|", 6)
        n = int(size)
        self._job_id = job_id.decode()
        self._revision = int(revision)
        self._terminal = terminal == b"1"
        self._tenant = rest[:n].decode()
        self._body = rest[n:]
        self._decoded: Job | None = None
        self.segments_offset = int(offset)
        self.position = int(position)
        self.partial = True
        self._encoded = {}

    @property
    def job(self) -> Job:  # type: ignore[override]
        if self._decoded is None:
            data = json.loads(self._body)
            segments = tuple(Segment.from_dict(s) for s in data["s"])
            self._decoded = job_from_dict(data["j"], segments)
            self._body = b""
        return self._decoded

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def tenant(self) -> str:
        return self._tenant

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def terminal(self) -> bool:
        return self._terminal


def decode_event(raw: bytes | str) -> JobEvent:
    """An event as the store's scripts publish it (the format is in the module's docstring)."""
    return RemoteEvent(raw.encode() if isinstance(raw, str) else raw)
