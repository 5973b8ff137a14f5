"""The client's own types: what callers get instead of raw protobufs."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway_client._proto.gateway.v1 import gateway_pb2 as pb

__all__ = [
    "ErrorDetails",
    "Heartbeat",
    "Job",
    "JobState",
    "Output",
    "Page",
    "Result",
    "Segment",
    "Transcript",
    "Word",
]

_CODES = {c.value[0]: c for c in grpc.StatusCode}


class JobState(enum.Enum):
    QUEUED = pb.JOB_STATE_QUEUED
    RUNNING = pb.JOB_STATE_RUNNING
    SUCCEEDED = pb.JOB_STATE_SUCCEEDED
    FAILED = pb.JOB_STATE_FAILED
    CANCELLED = pb.JOB_STATE_CANCELLED
    UNSPECIFIED = pb.JOB_STATE_UNSPECIFIED

    @property
    def done(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def parse(cls, text: str) -> JobState:
        """'succeeded', 'SUCCEEDED' or 'JOB_STATE_SUCCEEDED'."""
        name = text.strip().upper().removeprefix("JOB_STATE_")
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown state {text!r}; one of {', '.join(s.name for s in cls if s.value)}") from None


def _time(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    if not present:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()

    @classmethod
    def from_proto(cls, m: pb.Segment) -> Segment:
        return cls(
            m.start, m.end, m.text, m.avg_logprob, m.no_speech_prob,
            tuple(Word(w.start, w.end, w.word, w.probability) for w in m.words),
        )


@dataclass(frozen=True)
class ErrorDetails:
    """Why a job failed: a status code, a stable reason, a message."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, status: status_pb2.Status) -> ErrorDetails:
        reason, metadata = "", {}
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
        return cls(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message, reason, metadata)


@dataclass(frozen=True)
class Job:
    id: str
    route: str
    state: JobState
    revision: int
    progress: float
    create_time: datetime | None
    start_time: datetime | None
    finish_time: datetime | None
    expire_time: datetime | None
    labels: Mapping[str, str]
    error: ErrorDetails | None
    segments: tuple[Segment, ...]
    queue_position: int
    request_id: str
    raw: pb.Job = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.state.done

    @classmethod
    def from_proto(cls, m: pb.Job) -> Job:
        return cls(
            id=m.id,
            route=m.route,
            state=JobState(m.state) if m.state in JobState._value2member_map_ else JobState.UNSPECIFIED,
            revision=m.revision,
            progress=m.progress,
            create_time=_time(m.create_time, m.HasField("create_time")),
            start_time=_time(m.start_time, m.HasField("start_time")),
            finish_time=_time(m.finish_time, m.HasField("finish_time")),
            expire_time=_time(m.expire_time, m.HasField("expire_time")),
            labels=dict(m.labels),
            error=ErrorDetails.from_proto(m.error) if m.HasField("error") else None,
            segments=tuple(Segment.from_proto(s) for s in m.segments),
            queue_position=m.queue_position,
            request_id=m.request_id,
            raw=m,
        )

    def to_dict(self) -> dict[str, Any]:
        """The protobuf JSON mapping of the job."""
        return json_format.MessageToDict(self.raw)


@dataclass(frozen=True)
class Heartbeat:
    time: datetime | None
    revision: int


@dataclass(frozen=True)
class Transcript:
    """A whisper route's result."""

    text: str
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration: float

    @classmethod
    def from_proto(cls, m: pb.Transcript) -> Transcript:
        return cls(
            m.text, tuple(Segment.from_proto(s) for s in m.segments), m.language, m.language_probability, m.duration
        )


@dataclass(frozen=True)
class Output:
    """The JSON output of echo and upstream routes."""

    value: Any


Result = Transcript | Output


def json_value(value: Any) -> Any:
    """JSON from a protobuf Value/Struct, whole numbers as ints (Struct stores every number as a double)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value


def result_from_proto(m: pb.FetchResponse) -> Result | None:
    kind = m.WhichOneof("result")
    if kind == "transcript":
        return Transcript.from_proto(m.transcript)
    if kind == "output":
        return Output(json_value(json_format.MessageToDict(m.output)))
    return None


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_page_token: str
