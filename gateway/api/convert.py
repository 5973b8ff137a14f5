"""Proto <-> domain conversion for the gRPC face; structural checks of requests."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway.api.status import failure_to_status
from gateway.errors import FieldViolation, InvalidArgument
from gateway.hub import JobEvent
from gateway.jobs import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    WEBHOOK_EVENTS,
    Deadlines,
    Job,
    JobInput,
    JobOutput,
    JobState,
    Result,
    Segment,
    Transcript,
    TranscriptionInput,
    WebhookSpec,
)
from gateway.settings import MAX_TIMEOUT_SECONDS
from gateway.store.base import JobFilter

__all__ = [
    "delivery_to_proto",
    "encode_watch_jobs_job",
    "encode_watch_update",
    "filter_from_proto",
    "heartbeat_bytes",
    "job_to_proto",
    "jobs_heartbeat_bytes",
    "result_into",
    "submit_from_proto",
    "webhook_body",
    "with_resume_token",
]

_TASKS = {
    pb.TRANSCRIPTION_TASK_UNSPECIFIED: "",
    pb.TRANSCRIPTION_TASK_TRANSCRIBE: "transcribe",
    pb.TRANSCRIPTION_TASK_TRANSLATE: "translate",
}


def _set_time(field: timestamp_pb2.Timestamp, value: float) -> None:
    """``field`` (a message's Timestamp field, or a new Timestamp) set to ``value`` (seconds) in place: no
    Timestamp made and copied in (every job sent has two to four)."""
    seconds = int(value)
    field.seconds = seconds
    field.nanos = round((value - seconds) * 1e9) % 1_000_000_000


def _timestamp(value: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    _set_time(stamp, value)
    return stamp


def _segment(segment: Segment) -> pb.Segment:
    return pb.Segment(
        start_seconds=segment.start,
        end_seconds=segment.end,
        text=segment.text,
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        words=[
            pb.Word(start_seconds=w.start, end_seconds=w.end, word=w.word, probability=w.probability)
            for w in segment.words
        ],
    )


def job_to_proto(job: Job, with_segments: bool = True) -> pb.Job:
    """The job as of its revision (with every segment it holds, unless not ``with_segments``)."""
    message = pb.Job(
        id=job.id,
        route=job.route,
        state=int(job.state),  # type: ignore[arg-type]
        done=job.terminal,
        revision=job.revision,
        progress=job.progress,
        queue_position=job.queue_position,
        request_id=job.request_id,
        logs=job.logs,
        priority=job.priority,
        attempt=job.attempt,
    )
    _set_time(message.create_time, job.created)
    if job.labels:
        message.labels.update(job.labels)
    if job.started is not None:
        _set_time(message.start_time, job.started)
    if job.estimated_start is not None:
        _set_time(message.estimated_start_time, job.estimated_start)
    if job.finished is not None:
        _set_time(message.finish_time, job.finished)
    if job.expires is not None:
        _set_time(message.expire_time, job.expires)
    if job.error is not None:
        message.error.CopyFrom(failure_to_status(job.error))
    if with_segments and job.segments:
        message.segments.extend(_segment(s) for s in job.segments)
    if job.queue_timeout:
        message.queue_timeout.FromNanoseconds(round(job.queue_timeout * 1e9))
    if job.run_timeout:
        message.run_timeout.FromNanoseconds(round(job.run_timeout * 1e9))
    if job.retry_of:
        message.retry_of = job.retry_of
    if job.retried_by:
        message.retried_by = job.retried_by
    if job.webhook is not None:
        message.webhook.url = job.webhook.url
        message.webhook.events.extend(WEBHOOK_EVENTS.index(e) + 1 for e in sorted(job.webhook.events, key=WEBHOOK_EVENTS.index))
    return message


def webhook_body(job: Job) -> bytes:
    """A webhook delivery's body: the job (every segment so far) in the protobuf JSON mapping, fields
    at their zero value included (``"done": false``), as the CLIs print it."""
    return json_format.MessageToJson(job_to_proto(job), indent=None, always_print_fields_with_no_presence=True).encode()


def delivery_to_proto(state: Mapping[str, Any]) -> pb.WebhookDelivery:
    """A job's webhook delivery state (gateway.webhooks) as the API shows it."""
    message = pb.WebhookDelivery(
        state=pb.WebhookDelivery.State.Value("STATE_" + state.get("status", "PENDING")),
        attempts=state.get("attempts", 0),
        message_id=state.get("last_id", ""),
        last_status_code=state.get("last_status", 0),
        last_error=state.get("last_error", ""),
        delivered_count=state.get("delivered", 0),
    )
    if state.get("last_event"):
        message.event = WEBHOOK_EVENTS.index(state["last_event"]) + 1  # type: ignore[assignment]
    if state.get("last_attempt") is not None:
        _set_time(message.last_attempt_time, state["last_attempt"])
    if state.get("next_attempt") is not None:
        _set_time(message.next_attempt_time, state["next_attempt"])
    return message


def encode_watch_update(event: JobEvent, whole: bool = False) -> bytes:
    """A Watch message: the job as of the event's revision with the segments it added (offset and
    all), or, ``whole``, with every segment (offset 0; the event must hold them all)."""
    job = event.job
    if whole:
        assert not event.partial, "a partial event cannot be sent whole"
        offset, segments = 0, job.segments
    else:
        offset, segments = event.segments_offset, event.new_segments
    message = job_to_proto(job, with_segments=False)
    message.segments.extend(_segment(s) for s in segments)
    return pb.WatchResponse(update=pb.JobUpdate(job=message, segments_offset=offset)).SerializeToString()


def encode_watch_jobs_job(event: JobEvent) -> bytes:
    """A WatchJobs message without its resume token (the stream appends it: see with_resume_token)."""
    return pb.WatchJobsResponse(job=job_to_proto(event.job, with_segments=False)).SerializeToString()


def with_resume_token(encoded: bytes, token: str) -> bytes:
    """Adds the resume_token field to an encoded WatchJobsResponse: protobuf merges concatenated
    messages, so the job's bytes, encoded once for every dashboard, are reused as they are."""
    return encoded + pb.WatchJobsResponse(resume_token=token).SerializeToString()


def heartbeat_bytes(revision: int, now: float) -> bytes:
    return pb.WatchResponse(heartbeat=pb.Heartbeat(time=_timestamp(now), revision=revision)).SerializeToString()


def jobs_heartbeat_bytes(now: float, token: str) -> bytes:
    return pb.WatchJobsResponse(heartbeat=pb.Heartbeat(time=_timestamp(now)), resume_token=token).SerializeToString()


def submit_from_proto(
    request: pb.SubmitRequest,
) -> tuple[str, JobInput, dict[str, str], str, WebhookSpec | None, Deadlines, int]:
    """(route, input, labels, request_id, webhook, deadlines, priority); structural problems raise
    InvalidArgument (the webhook URL's policy is the service's to check)."""
    kind = request.WhichOneof("input")
    violations = []
    if not request.route:
        violations.append(FieldViolation("route", "required: the route that runs the job"))
    job_input = JobInput()
    if kind is None:
        violations.append(FieldViolation("input", "set inputs (JSON) or transcription"))
    elif kind == "inputs":
        try:
            inputs = _struct(request.inputs)
        except ValueError:  # NaN or Infinity: JSON has no such numbers
            violations.append(FieldViolation("inputs", "numbers must be finite (no NaN or Infinity)"))
        else:
            job_input = JobInput(inputs=inputs)
    else:
        t = request.transcription
        if t.task not in _TASKS:
            violations.append(FieldViolation("transcription.task", f"unknown task {t.task}"))
        job_input = JobInput(
            transcription=TranscriptionInput(
                audio=t.audio,
                language=t.language_code,
                task=_TASKS.get(t.task, ""),
                beam_size=t.beam_size,
                word_timestamps=t.word_timestamps,
                vad_filter=t.vad_filter if t.HasField("vad_filter") else None,
                audio_url=t.audio_url,
            )
        )
    webhook = None
    if request.HasField("webhook"):
        events = set()
        for value in request.webhook.events:
            if 1 <= value <= len(WEBHOOK_EVENTS):
                events.add(WEBHOOK_EVENTS[value - 1])
            else:
                violations.append(FieldViolation("webhook.events", f"unknown event {value}: start, progress or completed"))
        webhook = WebhookSpec(request.webhook.url, frozenset(events or {"completed"}))
    deadlines = Deadlines(*(_timeout(request, name, violations) for name in ("queue_timeout", "run_timeout")))
    priority = request.priority or DEFAULT_PRIORITY
    if priority not in PRIORITIES:
        violations.append(FieldViolation("priority", f"1 (most urgent) to 5, or 0 (unset) for {DEFAULT_PRIORITY}; "
                                                     f"got {request.priority}"))
    if violations:
        raise InvalidArgument.fields(*violations)
    return request.route, job_input, dict(request.labels), request.request_id, webhook, deadlines, priority


def _timeout(request: pb.SubmitRequest, name: str, violations: list[FieldViolation]) -> float | None:
    if not request.HasField(name):
        return None
    value = getattr(request, name)
    seconds = value.seconds + value.nanos / 1e9
    if value.seconds < 0 or value.nanos < 0 or not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        violations.append(FieldViolation(name, f"more than 0 and at most {MAX_TIMEOUT_SECONDS:.0f} seconds (30 days)"))
        return None
    return seconds


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _plain(value) for key, value in struct.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    """A Struct value as plain JSON (faster than json_format, which shows on the Submit profile);
    whole numbers come back as ints, as the caller most likely wrote them (Struct keeps doubles)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    return None


def filter_from_proto(states: Iterable[int], route: str, labels: Mapping[str, str]) -> JobFilter:
    parsed = set()
    for value in states:
        try:
            parsed.add(JobState(value))
        except ValueError:
            raise InvalidArgument.fields(FieldViolation("states", f"unknown state {value}")) from None
    return JobFilter(frozenset(parsed), route, dict(labels))


def _value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def result_into(response: pb.FetchResponse, result: Result | None) -> None:
    if isinstance(result, Transcript):
        response.transcript.CopyFrom(
            pb.Transcript(
                text=result.text,
                segments=[_segment(s) for s in result.segments],
                language_code=result.language,
                language_probability=result.language_probability,
                duration_seconds=result.duration,
            )
        )
    elif isinstance(result, JobOutput):
        response.output.CopyFrom(_value(result.value))
