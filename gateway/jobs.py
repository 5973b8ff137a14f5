"""The job model: states, the state machine, immutable job snapshots, inputs and results.

A :class:`Job` is one revision of a job, frozen: every change makes a new snapshot with the revision
plus one, so a snapshot can be shared by the store, the hub and every watcher without copying.
"""

from __future__ import annotations

import enum
import json
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import MAX_MESSAGE, Code, clip

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "Clock",
    "IllegalTransition",
    "Job",
    "JobFailure",
    "JobInput",
    "JobOutput",
    "JobState",
    "Result",
    "Segment",
    "SystemClock",
    "Transcript",
    "TranscriptionInput",
    "WebhookSpec",
    "Word",
    "check_transition",
    "compact_json",
    "new_job_id",
    "webhook_wanted",
]


def _json_encoder(sort_keys: bool) -> Callable[[Any], str]:
    """Compact JSON (as ``json.dumps(obj, separators=(",", ":"), sort_keys=...)`` writes it) by an encoder
    made once. ``JSONEncoder.encode`` makes CPython's C encoder anew at every call, which costs more than
    encoding a job's small dicts (three per echo job: 8% of the loop's thread in one process); this makes
    it once. No check for circular structures (a cycle is a RecursionError, not a ValueError): what is
    encoded here is the gateway's own dicts and JSON it parsed. Without the C encoder (another Python):
    ``JSONEncoder.encode``."""
    fallback = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":")).encode
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    try:
        encode = make(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ":", ",",
                      sort_keys, False, True)  # (markers, default, encoder, indent, separators, sort, skip, nan)
        sample = {"b": [1.5, None], "a": "\u00e9"}
        if "".join(encode(sample, 0)) != fallback(sample):
            return fallback
    except Exception:  # (no C encoder, or one that takes other arguments)
        return fallback
    join = "".join

    def dumps(obj: Any) -> str:
        return join(encode(obj, 0))

    return dumps


compact_json = _json_encoder(sort_keys=False)
_sorted_json = _json_encoder(sort_keys=True)


class JobState(enum.IntEnum):
    """The lifecycle; the numbers are the proto enum's."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})

# The only transitions there are. Staying in a state (a progress update) is not a transition.
_NEXT: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: something tried a transition the state machine forbids."""


def check_transition(current: JobState, new: JobState) -> None:
    if new is current:
        if current.terminal:
            raise IllegalTransition(f"a {current.name} job cannot change")
        return
    if new not in _NEXT[current]:
        raise IllegalTransition(f"{current.name} -> {new.name}")


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


_ids = random.Random(secrets.randbits(128))  # seeded from the OS once: no system call per job


def new_job_id(now: float) -> str:
    """32 hex characters: 12 of milliseconds since the epoch (so ids sort by creation), 20 random.

    Ids are unique, not secret: tenants are kept apart by checks, never by unguessable ids."""
    return f"{int(now * 1000):012x}{_ids.getrandbits(80):020x}"


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float = 0.0


@dataclass(frozen=True, slots=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        words = tuple(Word(**w) for w in data.get("words") or ())
        return cls(
            start=data["start"],
            end=data["end"],
            text=data["text"],
            avg_logprob=data.get("avg_logprob", 0.0),
            no_speech_prob=data.get("no_speech_prob", 0.0),
            words=words,
        )


@dataclass(frozen=True, slots=True)
class JobFailure:
    """Why a job ended FAILED (or, with code CANCELLED, that it was cancelled)."""

    code: Code
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:  # bounded, as every error text is (gateway.errors.clip)
        object.__setattr__(self, "message", clip(self.message, MAX_MESSAGE))
        object.__setattr__(self, "metadata", {clip(str(k), 64): clip(str(v)) for k, v in self.metadata.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"code": int(self.code), "reason": self.reason, "message": self.message, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobFailure:
        return cls(Code(data["code"]), data["reason"], data["message"], dict(data.get("metadata") or {}))


WEBHOOK_EVENTS = ("start", "progress", "completed")  # the proto's WebhookEvent values 1, 2, 3, in order


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    """Where a job's changes are POSTed (checked against the tenant's allowlist at Submit), and which."""

    url: str
    events: frozenset[str] = frozenset({"completed"})

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "events": sorted(self.events, key=WEBHOOK_EVENTS.index)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> WebhookSpec | None:
        return None if not data else cls(data["url"], frozenset(data["events"]))


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    tenant: str
    route: str
    state: JobState
    revision: int
    created: float
    progress: float = 0.0
    started: float | None = None
    finished: float | None = None
    expires: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    error: JobFailure | None = None
    segments: tuple[Segment, ...] = ()
    queue_position: int = 0
    request_id: str = ""
    webhook: WebhookSpec | None = None
    logs: str = ""  # an upstream job's log, its tail
    queue_timeout: float = 0.0  # seconds it may wait QUEUED (from created); 0: no limit
    run_timeout: float = 0.0  # seconds it may run (from started); 0: no limit
    priority: int = 3  # 1 (most urgent) to 5 (DEFAULT_PRIORITY 3): its order among its tenant's waiting jobs
    estimated_start: float | None = None  # a queued job, as read (Get): when it is likely to start; not stored
    retry_of: str = ""  # made by Retry: the job it runs again
    attempt: int = 1  # its run: one more for each automatic retry of a transient failure (the route's policy)
    retried_by: str = ""  # a job Retry ran again, as read (Get): the new job; not stored

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def evolve(self, **changes: Any) -> Job:
        """A copy with these fields changed, as ``dataclasses.replace`` makes it (an unknown field is a
        TypeError), without running ``__init__``: it is on every change of every job."""
        return _evolve(self, changes)


_JOB_FIELDS = tuple(f.name for f in fields(Job))


def _straight_copy() -> Callable[[Job, dict[str, Any]], Job]:
    """``Job.evolve``'s copy as straight-line code, made once from the fields: each field copied through its
    slot's own setter, then the changed ones set over. It was a tenth of the event loop's time in one process
    (four per echo job); a loop over the fields with ``object.__setattr__`` costs twice as much,
    ``dataclasses.replace`` (which runs ``__init__``) five times."""
    setters = {name: getattr(Job, name).__set__ for name in _JOB_FIELDS}
    lines = ["def evolve(job, changes):", "    new = _new(Job)"]
    lines += [f"    _set_{name}(new, job.{name})" for name in _JOB_FIELDS]
    lines += ["    for name, value in changes.items():",
              "        setter = _setters.get(name)",
              "        if setter is None:",
              "            raise TypeError(f'Job has no field {name!r}')",
              "        setter(new, value)",
              "    return new"]
    scope: dict[str, Any] = {"_new": object.__new__, "Job": Job, "_setters": setters,
                             **{f"_set_{name}": setter for name, setter in setters.items()}}
    exec("\n".join(lines), scope)  # (the source is made of the field names above, nothing from outside)
    copy: Callable[[Job, dict[str, Any]], Job] = scope["evolve"]
    return copy


_evolve = _straight_copy()


def webhook_wanted(job: Job) -> bool:
    """Whether this revision of the job may hold an event its webhook asked for: the store then marks
    the webhook due in the same write (gateway.webhooks works out which event)."""
    hook = job.webhook
    if hook is None:
        return False
    if job.state in TERMINAL_STATES:
        return "completed" in hook.events
    return job.state is JobState.RUNNING and not hook.events.isdisjoint(("start", "progress"))


DEFAULT_PRIORITY = 3  # a job's priority when Submit gives none: 1 (most urgent) to 5, the convention Temporal uses
PRIORITIES = range(1, 6)


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The timeouts asked for at Submit, in seconds; None: the route's default."""

    queue: float | None = None
    run: float | None = None


@dataclass(frozen=True, slots=True)
class TranscriptionInput:
    """The typed request of a whisper route."""

    audio: bytes
    language: str = ""
    task: str = "transcribe"
    beam_size: int = 0
    word_timestamps: bool = False
    vad_filter: bool | None = None
    prompt: str = ""  # the engine's initial prompt (OpenAI's prompt): vocabulary, spelling, style
    audio_url: str = ""  # instead of audio: fetched by the process that runs the job (gateway.fetch)
    temperature: float | None = None  # None: the engine's own fallback schedule
    # Audio that came in an Upload: the sha256 of its bytes (so a retried upload is the same request),
    # kept by the store beside the job (Store.put_upload); the runner gets it with JobContext.upload().
    audio_upload: str = ""
    # The upload's file on this machine while it is being submitted (never stored in the payload).
    audio_file: Path | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class JobInput:
    """What a job runs on: free JSON inputs, or a typed transcription request."""

    inputs: Mapping[str, Any] | None = None
    transcription: TranscriptionInput | None = None

    def encode(self) -> bytes:
        """A stable byte form: a JSON header line, then the raw audio (kept to resume the job)."""
        header: dict[str, Any] = {"inputs": self.inputs}
        audio = b""
        if self.transcription is not None:
            options = asdict(self.transcription)
            audio = options.pop("audio")
            options.pop("audio_file")
            if not options["audio_upload"]:
                del options["audio_upload"]  # as stored before uploads existed: request hashes unchanged
            header["transcription"] = options
        return _sorted_json(header).encode() + b"\n" + audio

    @classmethod
    def decode(cls, data: bytes) -> JobInput:
        header_bytes, _, audio = data.partition(b"\n")
        header = json.loads(header_bytes)
        transcription = None
        if header.get("transcription") is not None:
            transcription = TranscriptionInput(audio=audio, **header["transcription"])
        return cls(inputs=header.get("inputs"), transcription=transcription)


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]
    language: str
    duration: float
    language_probability: float = 0.0


@dataclass(frozen=True, slots=True)
class JobOutput:
    """The JSON output of echo and upstream routes."""

    value: Any


Result = Transcript | JobOutput


def encode_result(result: Result) -> str:
    if isinstance(result, Transcript):
        body: dict[str, Any] = {
            "kind": "transcript",
            "text": result.text,
            "segments": [s.to_dict() for s in result.segments],
            "language": result.language,
            "language_probability": result.language_probability,
            "duration": result.duration,
        }
    else:
        body = {"kind": "output", "value": result.value}
    return compact_json(body)


def decode_result(text: str) -> Result:
    body = json.loads(text)
    if body["kind"] == "transcript":
        return Transcript(
            text=body["text"],
            segments=tuple(Segment.from_dict(s) for s in body["segments"]),
            language=body["language"],
            duration=body["duration"],
            language_probability=body.get("language_probability", 0.0),
        )
    return JobOutput(body["value"])

