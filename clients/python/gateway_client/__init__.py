"""Python client for the inference gateway (API v1). Python 3.10 and later.

    from gateway_client import Client, as_completed

    with Client("127.0.0.1:50051") as client:
        future = client.transcribe("speech.wav")          # JobFuture[Transcript], at once
        future.add_update_callback(lambda job: print(job.progress, len(job.segments)))
        print(future.result(timeout=60).text)             # completed by the Watch stream
        echoes = [client.submit("echo", {"n": i}) for i in range(3)]   # JobFuture[Output]
        for done in as_completed(echoes, timeout=60):
            print(done.result().value)

``AsyncClient`` is the same in asyncio: ``fut = await client.transcribe(...)``, then ``await fut``;
``async_wait`` and ``async_as_completed`` wait on many. Every RPC has its method (``submit``,
``get``, ``watch``, ``fetch``, ``cancel``, ``delete``, ``list``, ``watch_jobs``), each with
``timeout`` and ``metadata`` keywords; ``RetryPolicy`` says what is retried. Errors are
``GatewayError``: ``RpcError`` subclasses for failed calls, ``JobFailedError`` and
``JobCancelledError`` for jobs that ended so (the tree is in ``gateway_client._errors``).
"""

from gateway_client._aio import DEFAULT_TARGET, DEFAULT_TIMEOUT, AsyncClient, Audio, AudioUrl, Metadata, tls_credentials
from gateway_client._errors import (
    AbortedError,
    AlreadyExistsError,
    CallCancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    GatewayError,
    InternalError,
    InvalidArgumentError,
    JobCancelledError,
    JobError,
    JobFailedError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RpcError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from gateway_client._futures import AsyncJobFuture, JobFuture
from gateway_client._retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from gateway_client._streams import AsyncJobChanges
from gateway_client._sync import Client, JobChanges
from gateway_client._types import (
    ErrorDetails,
    Fetched,
    Heartbeat,
    Job,
    JobState,
    Output,
    Page,
    Result,
    Segment,
    Submitted,
    Transcript,
    Word,
)
from gateway_client._wait import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    as_completed,
    async_as_completed,
    async_wait,
    wait,
)

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "DEFAULT_RETRY",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "NO_RETRY",
    "AbortedError",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncJobChanges",
    "AsyncJobFuture",
    "Audio",
    "AudioUrl",
    "CallCancelledError",
    "Client",
    "DataLossError",
    "DeadlineExceededError",
    "ErrorDetails",
    "FailedPreconditionError",
    "Fetched",
    "GatewayError",
    "Heartbeat",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobCancelledError",
    "JobChanges",
    "JobError",
    "JobFailedError",
    "JobFuture",
    "JobState",
    "Metadata",
    "NotFoundError",
    "OutOfRangeError",
    "Output",
    "Page",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Result",
    "RetryPolicy",
    "RpcError",
    "Segment",
    "Submitted",
    "Transcript",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "Word",
    "as_completed",
    "async_as_completed",
    "async_wait",
    "tls_credentials",
    "wait",
]
