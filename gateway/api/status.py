"""The one place where gateway errors become gRPC statuses with rich details.

Every error leaves as a google.rpc.Status in the ``grpc-status-details-bin`` trailer, holding an
ErrorInfo (domain ``gateway.inferencegateway.dev``, a stable reason, metadata with lowerCamelCase
keys as AIP-193 asks: the Python side writes snake_case keys, converted here), plus BadRequest field violations for
invalid requests and RetryInfo when a retry later can succeed (a full queue).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import DOMAIN, Code, GatewayError
from gateway.jobs import JobFailure

__all__ = ["abort", "camel_key", "failure_to_status", "to_status"]


def camel_key(key: str) -> str:
    """``job_id`` -> ``jobId`` (keys already in lowerCamelCase are left alone)."""
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _error_info(reason: str, metadata: Mapping[str, object]) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(
        reason=reason, domain=DOMAIN, metadata={camel_key(k): str(v) for k, v in metadata.items()}
    )


def to_status(error: GatewayError) -> status_pb2.Status:
    status = status_pb2.Status(code=int(error.code), message=error.message)
    status.details.add().Pack(_error_info(error.reason, error.metadata))
    if error.field_violations:
        bad = error_details_pb2.BadRequest()
        for violation in error.field_violations:
            bad.field_violations.add(field=violation.field, description=violation.description)
        status.details.add().Pack(bad)
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after * 1000))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def failure_to_status(failure: JobFailure) -> status_pb2.Status:
    """Why a job failed, as the Job.error field carries it."""
    status = status_pb2.Status(code=int(failure.code), message=failure.message)
    status.details.add().Pack(_error_info(failure.reason, failure.metadata))
    return status


assert {int(c.value[0]) for c in grpc.StatusCode} == {int(c) for c in Code}
assert code_pb2.UNAUTHENTICATED == Code.UNAUTHENTICATED


async def abort(context: grpc.aio.ServicerContext, error: GatewayError) -> None:
    """Ends the RPC with the error's status (grpcio-status puts it in grpc-status-details-bin); raises."""
    status = rpc_status.to_status(to_status(error))
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
