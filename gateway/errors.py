"""The one error root of the gateway.

Every error the gateway raises on purpose is a :class:`GatewayError`: a canonical status code (the
google.rpc.Code numbering, shared by gRPC and the HTTP faces), a stable machine-readable reason
(ErrorInfo.reason), a human message, and optional details. The faces map it to the wire in exactly
one place each, both from the one status table below (:data:`HTTP_STATUS`): gRPC in
``gateway.api.status`` (the code is the gRPC status), HTTP in ``gateway.http`` (every sub-app, the
OctoAI facade and the dashboard alike, answers :func:`http_status`).

    GatewayError
    ├── InvalidArgument        INVALID_ARGUMENT   bad request fields (field violations)
    ├── NotFound               NOT_FOUND          unknown, expired or foreign job; unknown route
    ├── AlreadyExists          ALREADY_EXISTS     request_id reused with a different request
    ├── FailedPrecondition     FAILED_PRECONDITION  e.g. Fetch before the job is done
    ├── PermissionDenied       PERMISSION_DENIED  authenticated, but not allowed (another tenant's dashboard)
    ├── ResourceExhausted      RESOURCE_EXHAUSTED queue full (with retry_after), payload too large
    ├── Unauthenticated        UNAUTHENTICATED    missing or unknown bearer token
    ├── Unavailable            UNAVAILABLE        shutting down, backend not ready: a retry can fix it
    └── JobError               (any code)         why a job FAILED: raised by backends
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DOMAIN",
    "HTTP_STATUS",
    "REASON_HTTP_STATUS",
    "AlreadyExists",
    "Code",
    "FailedPrecondition",
    "FieldViolation",
    "GatewayError",
    "InvalidArgument",
    "JobError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StartupError",
    "Unauthenticated",
    "Unavailable",
    "clip",
    "http_status",
]

# ErrorInfo.domain: globally unique, the service's DNS-style name (AIP-193).
DOMAIN = "gateway.inferencegateway.dev"


class Code(enum.IntEnum):
    """Canonical status codes (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# The one status table. A code's gRPC status is the code itself (the same numbering, checked in
# gateway.api.status); its HTTP status is this. CANCELLED and FAILED_PRECONDITION answer 409 (the
# request conflicts with the job's state: cancelled, not done yet), as the OctoAI facade always has.
# A few reasons need an HTTP status that no code has (a body too large, a body too slow, a Host that
# is not the gateway's); the code still says what kind of error it is, on gRPC as on HTTP.
HTTP_STATUS: Mapping[Code, int] = {
    Code.OK: 500,  # an error that says OK is a bug
    Code.CANCELLED: 409,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 409,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
REASON_HTTP_STATUS: Mapping[str, int] = {
    "REQUEST_TOO_LARGE": 413,  # RESOURCE_EXHAUSTED
    "AUDIO_TOO_LARGE": 413,  # RESOURCE_EXHAUSTED
    "INPUT_TOO_LARGE": 413,  # RESOURCE_EXHAUSTED
    "REQUEST_TIMEOUT": 408,  # DEADLINE_EXCEEDED: the client's body did not arrive
    "HOST_NOT_ALLOWED": 421,  # PERMISSION_DENIED: misdirected (gateway.http)
}
assert set(HTTP_STATUS) == set(Code)


def http_status(code: Code, reason: str = "") -> int:
    """The HTTP status of an error with this code and reason (the HTTP side of the one table)."""
    return REASON_HTTP_STATUS.get(reason) or HTTP_STATUS[code]


# Error text is bounded wherever it comes from: messages and details quote user input (ids, label
# keys, routes), and gRPC refuses trailers over its metadata limit with an error of its own that
# carries no reason. So every message, metadata value and field violation is cut here, once.
MAX_MESSAGE = 1024
MAX_DETAIL = 256


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` at most ``limit`` characters long: a prefix, then how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[: max(0, limit - 32)]}... ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", clip(self.field, 128))
        object.__setattr__(self, "description", clip(self.description))


@dataclass(eq=False)
class GatewayError(Exception):
    """An error with a status code and a stable reason."""

    message: str
    reason: str = "ERROR"
    code: Code = Code.UNKNOWN
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: Sequence[FieldViolation] = ()
    retry_after: float | None = None

    def __post_init__(self) -> None:
        self.message = clip(self.message, MAX_MESSAGE)
        self.metadata = {clip(str(k), 64): clip(str(v)) for k, v in self.metadata.items()}
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"


def _kind(code: Code, default_reason: str) -> type[GatewayError]:
    class _Error(GatewayError):
        def __init__(self, message: str, reason: str = default_reason, **kwargs: object) -> None:
            super().__init__(message, reason, code, **kwargs)  # type: ignore[arg-type]

    return _Error


class InvalidArgument(_kind(Code.INVALID_ARGUMENT, "INVALID_REQUEST")):  # type: ignore[misc]
    """The request is malformed; ``field_violations`` says where."""

    @classmethod
    def fields(cls, *violations: FieldViolation, reason: str = "INVALID_REQUEST") -> InvalidArgument:
        text = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(text or "invalid request", reason, field_violations=tuple(violations))


class NotFound(_kind(Code.NOT_FOUND, "JOB_NOT_FOUND")):  # type: ignore[misc]
    pass


class AlreadyExists(_kind(Code.ALREADY_EXISTS, "REQUEST_ID_CONFLICT")):  # type: ignore[misc]
    pass


class FailedPrecondition(_kind(Code.FAILED_PRECONDITION, "FAILED_PRECONDITION")):  # type: ignore[misc]
    pass


class PermissionDenied(_kind(Code.PERMISSION_DENIED, "PERMISSION_DENIED")):  # type: ignore[misc]
    """The caller is known, and not allowed this (HTTP 403)."""


class ResourceExhausted(_kind(Code.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED")):  # type: ignore[misc]
    pass


class Unauthenticated(_kind(Code.UNAUTHENTICATED, "INVALID_TOKEN")):  # type: ignore[misc]
    pass


class Unavailable(_kind(Code.UNAVAILABLE, "UNAVAILABLE")):  # type: ignore[misc]
    pass


class JobError(GatewayError):
    """Raised by a backend: the job ends FAILED with this code, reason and message. ``transient``: the
    same run may well succeed later and running it again does no harm (nothing reached an upstream, a
    URL's server was briefly down): the route's retry policy may run the job again first."""

    def __init__(
        self,
        message: str,
        reason: str = "JOB_FAILED",
        code: Code = Code.UNKNOWN,
        metadata: Mapping[str, str] | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message, reason, code, dict(metadata or {}))
        self.transient = transient


class StartupError(Exception):
    """The gateway cannot start: one line naming the cause and the setting to change, and the exit
    code of ``gateway serve`` / ``gateway worker`` for it (the command line's docstring lists them)."""

    CONFIGURATION = 2  # the settings ask for what cannot be had (as for an invalid configuration)
    DATA_DIR = 3  # the data dir cannot be used (a file, not writable)
    DATA_DIR_IN_USE = 4  # another process owns the data dir
    GRPC_ADDRESS = 5  # the gRPC address cannot be listened on
    HTTP_ADDRESS = 6  # the HTTP address cannot be listened on
    TLS_FILES = 7  # the TLS certificate, key or client CA cannot be read or do not match

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
