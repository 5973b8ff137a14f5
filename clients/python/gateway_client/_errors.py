"""The client's errors: one root, and the one place where gRPC's errors are translated.

    GatewayError                    every error of this client: .code (grpc.StatusCode), .reason
    │                               (the stable ErrorInfo reason), .message, .metadata (ErrorInfo's,
    │                               lowerCamelCase keys), .field_violations, .retry_delay (seconds,
    │                               from RetryInfo, or None)
    ├── RpcError                    a call failed: one subclass per status code
    │   ├── CallCancelledError          CANCELLED (the call, not the job)
    │   ├── UnknownError                UNKNOWN
    │   ├── InvalidArgumentError        INVALID_ARGUMENT
    │   ├── DeadlineExceededError       DEADLINE_EXCEEDED
    │   ├── NotFoundError               NOT_FOUND (JOB_NOT_FOUND, JOB_EXPIRED, ROUTE_NOT_FOUND)
    │   ├── AlreadyExistsError          ALREADY_EXISTS (REQUEST_ID_CONFLICT)
    │   ├── PermissionDeniedError       PERMISSION_DENIED
    │   ├── ResourceExhaustedError      RESOURCE_EXHAUSTED (QUEUE_FULL, with .retry_delay)
    │   ├── FailedPreconditionError     FAILED_PRECONDITION (JOB_NOT_DONE)
    │   ├── AbortedError                ABORTED
    │   ├── OutOfRangeError             OUT_OF_RANGE (REVISION_AHEAD)
    │   ├── UnimplementedError          UNIMPLEMENTED
    │   ├── InternalError               INTERNAL
    │   ├── UnavailableError            UNAVAILABLE (retried by the client's RetryPolicy)
    │   ├── DataLossError               DATA_LOSS
    │   └── UnauthenticatedError        UNAUTHENTICATED (MISSING_TOKEN, INVALID_TOKEN)
    └── JobError                    the job ended without a result: .job (its terminal revision)
        ├── JobFailedError              it FAILED: .code, .reason, .message are the job's error
        └── JobCancelledError           it was CANCELLED

``except RpcError`` catches failed calls; ``except JobError`` catches jobs that ended badly.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from gateway_client._types import Job

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CallCancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "GatewayError",
    "InternalError",
    "InvalidArgumentError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RpcError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "translate_errors",
]

_CODES = {c.value[0]: c for c in grpc.StatusCode}


class GatewayError(Exception):
    """The root of every error this client raises (see the module docstring for the tree)."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_delay: float | None = None,
    ) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.grpc_code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.retry_delay = retry_delay
        name = self.code.name
        super().__init__(f"{name} {reason}: {message}" if reason else f"{name}: {message}")


# What gRPC says when a message is past a receive or send limit ("Received message larger than max
# (41943069 vs. 37748736)"): the server's, for requests far past the gateway's own limit, or this channel's.
_GRPC_TOO_LARGE = re.compile(r"(?:Received|Sent) message larger than max \((\d+) vs\. (\d+)\)")


class RpcError(GatewayError):
    """A call failed with a status; ``RpcError.from_status`` picks the subclass of the code."""

    @staticmethod
    def for_code(
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_delay: float | None = None,
    ) -> RpcError:
        """An error of the subclass of ``code`` (RpcError itself for a code without one)."""
        cls = _BY_CODE.get(code, RpcError)
        return cls(message, code=code, reason=reason, metadata=metadata, field_violations=field_violations,
                   retry_delay=retry_delay)

    @staticmethod
    def from_status(status: status_pb2.Status, code: grpc.StatusCode | None = None) -> RpcError:
        """The error of a google.rpc.Status, with its ErrorInfo, BadRequest and RetryInfo details."""
        reason, metadata, violations, retry = "", {}, [], None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                detail.Unpack(retry_info)
                retry = retry_info.retry_delay.ToMilliseconds() / 1000.0
        if code is None:
            code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return RpcError.for_code(code, status.message, reason=reason, metadata=metadata,
                                 field_violations=violations, retry_delay=retry)

    @staticmethod
    def from_grpc(error: grpc.RpcError) -> RpcError:
        """The error of a failed gRPC call (its ``grpc-status-details-bin`` trailer when present)."""
        code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details: str = error.details() if hasattr(error, "details") else str(error)
        trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                try:
                    status = status_pb2.Status.FromString(value)
                except Exception:  # a malformed trailer: fall back on the plain status
                    break
                return RpcError.from_status(status, code or None)
        too_large = _GRPC_TOO_LARGE.search(details or "") if code is grpc.StatusCode.RESOURCE_EXHAUSTED else None
        if too_large:  # gRPC's own refusal, from a length prefix past its limit: the gateway's reason
            size, limit = too_large.groups()
            return RpcError.for_code(code, details, reason="REQUEST_TOO_LARGE",
                                     metadata={"sizeBytes": size, "limitBytes": limit})
        return RpcError.for_code(code or grpc.StatusCode.UNKNOWN, details or "")


class CallCancelledError(RpcError):
    grpc_code = grpc.StatusCode.CANCELLED


class UnknownError(RpcError):
    grpc_code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(RpcError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(RpcError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(RpcError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(RpcError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(RpcError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(RpcError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(RpcError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(RpcError):
    grpc_code = grpc.StatusCode.ABORTED


class OutOfRangeError(RpcError):
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(RpcError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(RpcError):
    grpc_code = grpc.StatusCode.INTERNAL


class UnavailableError(RpcError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DataLossError(RpcError):
    grpc_code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(RpcError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    cls.grpc_code: cls
    for cls in (
        CallCancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError, NotFoundError,
        AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError, FailedPreconditionError, AbortedError,
        OutOfRangeError, UnimplementedError, InternalError, UnavailableError, DataLossError, UnauthenticatedError,
    )
}


class JobError(GatewayError):
    """The job ended without a result; ``.job`` is its terminal revision. The code, reason and
    message are the job's error when it has one."""

    def __init__(self, job: Job, message: str | None = None) -> None:
        error = job.error
        if error is not None:
            super().__init__(message or error.message, code=error.code, reason=error.reason, metadata=error.metadata)
        else:
            super().__init__(message or f"the job ended {job.state.name} without a result")
        self.job = job


class JobFailedError(JobError):
    """The job ended FAILED; code, reason and message are the job's error."""


class JobCancelledError(JobError):
    """The job ended CANCELLED."""

    grpc_code = grpc.StatusCode.CANCELLED

    def __init__(self, job: Job) -> None:
        if job.error is not None:
            super().__init__(job)
        else:
            GatewayError.__init__(self, "the job was cancelled", reason="CANCELLED")
            self.job = job


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turns gRPC's errors into RpcError subclasses (the one boundary where that happens)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise RpcError.from_grpc(exc) from exc
