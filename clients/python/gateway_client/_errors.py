"""The client's one error root, and the one place gRPC errors are translated.

    GatewayError            any failed call: .code (grpc.StatusCode), .reason (ErrorInfo.reason),
    │                       .message, .metadata, .field_violations, .retry_delay
    ├── JobFailedError      the job ended FAILED: .job, and the job's own code and reason
    └── JobCancelledError   the job ended CANCELLED: .job
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from gateway_client._types import Job

__all__ = ["GatewayError", "JobCancelledError", "JobFailedError", "translate_errors"]

_CODES = {c.value[0]: c for c in grpc.StatusCode}


class GatewayError(Exception):
    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name} {reason}: {message}" if reason else f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.retry_delay = retry_delay

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> GatewayError:
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
                info_retry = error_details_pb2.RetryInfo()
                detail.Unpack(info_retry)
                retry = info_retry.retry_delay.ToMilliseconds() / 1000.0
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(code, status.message, reason, metadata, violations, retry)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> GatewayError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                found = cls.from_status(status)
                found.code = code or found.code
                return found
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")


class JobFailedError(GatewayError):
    """The job ended FAILED; code, reason and message are the job's error."""

    def __init__(self, job: Job) -> None:
        error = job.error
        assert error is not None
        super().__init__(error.code, error.message, error.reason, error.metadata)
        self.job = job


class JobCancelledError(GatewayError):
    def __init__(self, job: Job) -> None:
        super().__init__(grpc.StatusCode.CANCELLED, "the job was cancelled", "CANCELLED")
        self.job = job


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turns gRPC's errors into GatewayError (the one boundary where that happens)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise GatewayError.from_rpc_error(exc) from exc
