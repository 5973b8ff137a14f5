"""The client's own types: what callers get instead of raw protobufs.

Units: positions in audio are seconds as floats (``Segment.start``, ``Word.end``,
``Transcript.duration``); times of day are timezone-aware ``datetime`` objects in UTC; languages
are BCP-47 codes (``en``, ``pt-BR``). Everything here is immutable.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client import _subtitles

__all__ = [
    "ErrorDetails",
    "Fetched",
    "Heartbeat",
    "Job",
    "JobState",
    "Output",
    "Page",
    "Result",
    "Segment",
    "Submitted",
    "Transcript",
    "Word",
]

_CODES = {c.value[0]: c for c in grpc.StatusCode}


class JobState(enum.Enum):
    """The state of a job. ``UNKNOWN`` stands for a value this client does not know (the server is
    newer): such a job is *not* done unless ``Job.done`` says so, so read ``Job.done``, not the
    state, to tell whether a job has ended."""

    UNSPECIFIED = pb.JOB_STATE_UNSPECIFIED
    QUEUED = pb.JOB_STATE_QUEUED
    RUNNING = pb.JOB_STATE_RUNNING
    SUCCEEDED = pb.JOB_STATE_SUCCEEDED
    FAILED = pb.JOB_STATE_FAILED
    CANCELLED = pb.JOB_STATE_CANCELLED
    UNKNOWN = -1

    @property
    def done(self) -> bool:
        """True for the terminal states this client knows (SUCCEEDED, FAILED, CANCELLED)."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        """The state of a wire value; UNKNOWN for a value added after this client was built."""
        try:
            state = cls(value)
        except ValueError:
            return cls.UNKNOWN
        return cls.UNKNOWN if state is cls.UNKNOWN else state

    @classmethod
    def parse(cls, text: str) -> JobState:
        """'succeeded', 'SUCCEEDED' or 'JOB_STATE_SUCCEEDED'."""
        name = text.strip().upper()
        if name.startswith("JOB_STATE_"):
            name = name[len("JOB_STATE_"):]
        state = cls.__members__.get(name)
        if state is None or state.value <= 0:
            choices = ", ".join(s.name for s in cls if s.value > 0)
            raise ValueError(f"unknown state {text!r}; one of {choices}")
        return state


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=timezone.utc)


def _optional_time(message: Any, name: str) -> datetime | None:
    return _time(getattr(message, name)) if message.HasField(name) else None


@dataclass(frozen=True)
class Word:
    """One word with its timing (when word timestamps were asked for)."""

    start: float
    """Seconds from the start of the audio."""
    end: float
    """Seconds from the start of the audio."""
    word: str
    probability: float
    """0 to 1."""

    @classmethod
    def from_proto(cls, m: pb.Word) -> Word:
        return cls(m.start_seconds, m.end_seconds, m.word, m.probability)


@dataclass(frozen=True)
class Segment:
    """One decoded stretch of speech."""

    start: float
    """Seconds from the start of the audio."""
    end: float
    """Seconds from the start of the audio."""
    text: str
    avg_logprob: float = 0.0
    """The mean log probability of the segment's tokens."""
    no_speech_prob: float = 0.0
    """The model's probability that the segment holds no speech, 0 to 1."""
    words: tuple[Word, ...] = ()
    """Only when word timestamps were asked for."""

    @classmethod
    def from_proto(cls, m: pb.Segment) -> Segment:
        return cls(
            m.start_seconds, m.end_seconds, m.text, m.avg_logprob, m.no_speech_prob,
            tuple(Word.from_proto(w) for w in m.words),
        )


@dataclass(frozen=True)
class ErrorDetails:
    """Why a job failed (or, with code CANCELLED, that it was cancelled): a status code, a stable
    machine-readable reason (ErrorInfo.reason), a message and the ErrorInfo metadata."""

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


class Segments(Sequence["Segment"]):
    """A job's segments as of one revision, read-only and tuple-like (indexing, slicing to a tuple, ==, +, hash).
    The jobs ``watch()`` yields share the transcript the client rebuilds from the stream, each seeing its own
    revision's length, so an update costs the segments it adds, not the whole transcript again."""

    __slots__ = ("_items", "_length")

    def __init__(self, items: list[Segment], length: int) -> None:
        self._items = items  # never changed below _length by the owner (a rewritten tail gets a new list)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self._items[:self._length][index])
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("segment index out of range")
        return self._items[index]

    def __iter__(self) -> Any:
        return itertools.islice(self._items, self._length)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Segments, tuple, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __add__(self, other: Sequence[Segment]) -> tuple[Segment, ...]:
        return (*self, *other)

    def __radd__(self, other: Sequence[Segment]) -> tuple[Segment, ...]:
        return (*other, *self)

    def __repr__(self) -> str:
        return repr(tuple(self))


@dataclass(frozen=True)
class Job:
    """A job as of one revision.

    ``segments`` is the whole transcript decoded so far (whisper routes), also on the jobs that
    ``watch()`` yields: the client rebuilds it from the stream's increments. It is empty on the jobs
    of ``list()``, ``fetch()`` and ``watch_jobs()``, which the server sends without segments.
    ``done`` is the server's word that the job has ended (whatever its state, even one this client
    does not know).
    """

    id: str
    route: str
    state: JobState
    done: bool
    revision: int
    progress: float
    """0 to 1."""
    create_time: datetime | None
    start_time: datetime | None
    finish_time: datetime | None
    expire_time: datetime | None
    labels: Mapping[str, str]
    error: ErrorDetails | None
    segments: Sequence[Segment]
    """A tuple, or (on the jobs of ``watch()``) a tuple-like ``Segments`` view of the transcript so far."""
    queue_position: int
    """1 for the next job to run; 0 when not queued or unknown."""
    request_id: str
    _raw: Any = field(repr=False, compare=False)  # the message, or a function that makes it (watch: on demand)
    logs: str = ""
    """Upstream routes: the tail of the provider's log, as of this revision."""
    queue_timeout: float | None = None
    """Seconds the job may wait queued (past them it fails, QUEUE_TIMEOUT); None: no limit."""
    run_timeout: float | None = None
    """Seconds the job may run (past them it is stopped and fails, RUN_TIMEOUT); None: no limit."""
    priority: int = 3
    """1 (most urgent) to 5: its order among its tenant's jobs waiting on the route."""
    estimated_start_time: datetime | None = None
    """A queued job, in get() and fetch(): when it is likely to start (a guess from the route's run times)."""
    retry_of: str = ""
    """A job made by retry(): the job it runs again."""
    retried_by: str = ""
    """A FAILED or CANCELLED job that retry() ran again, in get(), fetch() and cancel(): the new job."""
    attempt: int = 1
    """Which run this is: 1, then one more each time the route's retry policy ran it again after a transient failure."""

    @property
    def raw(self) -> pb.Job:
        """The protobuf message (with every segment of ``segments``)."""
        raw = self._raw
        if callable(raw):  # made once, when first asked for
            raw = raw()
            object.__setattr__(self, "_raw", raw)
        return raw  # type: ignore[no-any-return]

    @classmethod
    def from_proto(cls, m: pb.Job, segments: Sequence[Segment] | None = None,
                   raw: Callable[[], pb.Job] | None = None) -> Job:
        """The job of a message; ``segments``, when given, are its already converted segments; ``raw``, a
        function making the whole message (when ``m`` carries only some of the segments)."""
        return cls(
            id=m.id,
            route=m.route,
            state=JobState.from_proto(m.state),
            done=m.done,
            revision=m.revision,
            progress=m.progress,
            create_time=_optional_time(m, "create_time"),
            start_time=_optional_time(m, "start_time"),
            finish_time=_optional_time(m, "finish_time"),
            expire_time=_optional_time(m, "expire_time"),
            labels=dict(m.labels),
            error=ErrorDetails.from_proto(m.error) if m.HasField("error") else None,
            segments=segments if segments is not None else tuple(Segment.from_proto(s) for s in m.segments),
            queue_position=m.queue_position,
            request_id=m.request_id,
            _raw=raw if raw is not None else m,
            logs=m.logs,
            queue_timeout=m.queue_timeout.ToTimedelta().total_seconds() if m.HasField("queue_timeout") else None,
            run_timeout=m.run_timeout.ToTimedelta().total_seconds() if m.HasField("run_timeout") else None,
            priority=m.priority or 3,
            estimated_start_time=_optional_time(m, "estimated_start_time"),
            retry_of=m.retry_of,
            retried_by=m.retried_by,
            attempt=m.attempt or 1,
        )

    def to_dict(self) -> dict[str, Any]:
        """The protobuf JSON mapping of the job."""
        return json_format.MessageToDict(self.raw)


@dataclass(frozen=True)
class Heartbeat:
    """Sent while nothing changes. On a Watch stream, ``revision`` is the last revision sent."""

    time: datetime | None
    revision: int

    @classmethod
    def from_proto(cls, m: pb.Heartbeat) -> Heartbeat:
        return cls(_optional_time(m, "time"), m.revision)


@dataclass(frozen=True)
class Transcript:
    """A whisper route's result."""

    text: str
    segments: tuple[Segment, ...]
    language: str
    """The BCP-47 code of the language spoken (given or detected)."""
    language_probability: float
    """The detector's confidence in ``language``, 0 to 1 (1 when it was given)."""
    duration: float
    """Seconds of audio."""

    @classmethod
    def from_proto(cls, m: pb.Transcript) -> Transcript:
        return cls(
            m.text, tuple(Segment.from_proto(s) for s in m.segments), m.language_code, m.language_probability,
            m.duration_seconds,
        )

    def _cues(self) -> list[_subtitles.Cue]:
        return [(s.start, s.end, s.text) for s in self.segments]

    def to_srt(self) -> str:
        """The transcript as SubRip (SRT): one numbered cue per segment that has text, times as
        ``HH:MM:SS,mmm``. The cue's text is the segment's, its whitespace (newlines too) collapsed to
        single spaces; a negative time is taken as 0 and a cue never ends before it starts. The same
        writer as the gateway's (``gateway_client._subtitles``)."""
        return _subtitles.srt(self._cues())

    def to_vtt(self) -> str:
        """The transcript as WebVTT: ``WEBVTT``, then the cues of ``to_srt()`` without numbers, times
        as ``HH:MM:SS.mmm``, and ``&``, ``<`` and ``-->`` in the text escaped (``&amp;``, ``&lt;``,
        ``--&gt;``)."""
        return _subtitles.vtt(self._cues())

    def to_text(self) -> str:
        """The segments' text on one line, joined by single spaces (as OpenAI's
        ``response_format=text``). It can differ from ``text``, the server's, in whitespace only."""
        return _subtitles.text(self._cues())


@dataclass(frozen=True)
class Output:
    """The JSON output of echo and upstream routes."""

    value: Any


Result = Transcript | Output


class Submitted(NamedTuple):
    """What ``submit_job()`` answers: the job (QUEUED, revision 1, unless ``existing``) and whether
    the request_id matched a job submitted before. Unpacks as ``job, existing = ...``."""

    job: Job
    existing: bool


class Fetched(NamedTuple):
    """What ``fetch()`` answers: the job (without segments) and, once it SUCCEEDED, its result.
    Unpacks as ``job, result = client.fetch(job_id)``."""

    job: Job
    result: Result | None

    @property
    def done(self) -> bool:
        return self.job.done


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
    """One page of ``list()``: jobs newest first (without segments); ``next_page_token`` is empty on
    the last page."""

    jobs: list[Job]
    next_page_token: str


def state_values(states: Sequence[JobState | str]) -> list[Any]:
    """Wire values of states given as JobState or as names ('FAILED', 'failed')."""
    values = []
    for s in states:
        state = s if isinstance(s, JobState) else JobState.parse(s)
        if state.value <= 0:
            raise ValueError(f"cannot filter on {state.name}")
        values.append(state.value)
    return values
