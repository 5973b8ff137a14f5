"""Python client for the inference gateway.

    from gateway_client import Client

    with Client("127.0.0.1:50051") as client:
        future = client.transcribe("speech.wav")        # returns at once
        future.add_update_callback(lambda job: print(job.progress))
        print(future.result(timeout=60).text)           # completed by the Watch stream

``AsyncClient`` is the same in asyncio (``await client.transcribe(...)`` gives a future to await).
Errors are ``GatewayError`` (``.code``, ``.reason``), with ``JobFailedError`` and
``JobCancelledError`` for jobs that ended so.
"""

from gateway_client._aio import DEFAULT_TARGET, AsyncClient, AsyncJobFuture
from gateway_client._errors import GatewayError, JobCancelledError, JobFailedError
from gateway_client._sync import Client, JobFuture
from gateway_client._types import (
    ErrorDetails,
    Heartbeat,
    Job,
    JobState,
    Output,
    Page,
    Result,
    Segment,
    Transcript,
    Word,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "AsyncJobFuture",
    "Client",
    "ErrorDetails",
    "GatewayError",
    "Heartbeat",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobFuture",
    "JobState",
    "Output",
    "Page",
    "Result",
    "Segment",
    "Transcript",
    "Word",
]
