"""When and how the client tries a call again (AIP-194), and how long streams keep resuming.

What is retried, and why it is safe:
- UNAVAILABLE (the one code AIP-194 calls retryable: the server restarting or draining, a
  connection reset) on Submit, Get, Fetch, List, Cancel and Retry. Get, Fetch and List only read;
  Cancel is idempotent (cancelling twice is cancelling once), and so is Retry (a job is retried once:
  a second Retry answers the job the first made); Submit is retried only because the client always
  sends a request_id, so a retried Submit answers the job the first one created.
- RESOURCE_EXHAUSTED with reason QUEUE_FULL, QUEUE_BYTES_FULL, SUBMIT_BYTES_IN_FLIGHT, TENANT_QUEUE_FULL or
  TENANT_RATE_LIMITED on Submit, no sooner than the server's RetryInfo delay (nothing was created: the route's
  queue, the server's intake, or the tenant's own queue or rate was full).
- Never Delete (a second try would answer NOT_FOUND for a job the first one deleted), and no
  other code: DEADLINE_EXCEEDED and CANCELLED are the caller's own limits, the rest cannot succeed
  by trying again.

Watch and WatchJobs are not retried but resumed: a stream cut with UNAVAILABLE (or reset under it:
INTERNAL with RST_STREAM, as a proxy or a recycled connection does) is opened again
after the last revision (or resume token) seen, with the same backoff, for as long as
``resume_timeout`` seconds pass without a successful reconnection. Job futures use the same
patience for the calls they make on their own (the Fetch of a finished job's result).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from gateway_client._errors import GatewayError, RpcError

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "RetryPolicy", "stream_resumable"]

# The RPCs that may be sent again after UNAVAILABLE (see the module docstring).
RETRYABLE_METHODS = frozenset({"Submit", "Upload", "Get", "Fetch", "List", "Cancel", "Retry"})


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries (``AsyncClient(..., retry=RetryPolicy(max_attempts=10))``).

    The n-th retry waits ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` seconds,
    times a random factor between ``1 - jitter`` and ``1 + jitter``, and never less than a
    RetryInfo delay the server gave. A retry that could not start before the call's deadline is
    not made: the last error is raised instead.
    """

    max_attempts: int = 5
    """Tries of one call, the first included; 1 turns retrying off (streams still resume)."""
    initial_backoff: float = 0.1
    """Seconds before the first retry."""
    max_backoff: float = 5.0
    """The longest wait between two tries, in seconds (before jitter)."""
    multiplier: float = 2.0
    """Each wait is this many times the previous one."""
    jitter: float = 0.2
    """0 to 1: how far, as a fraction, each wait is randomly stretched or shrunk."""
    resume_timeout: float = 300.0
    """Seconds a cut Watch or WatchJobs stream (and a job future) keeps trying to reconnect
    without success before it gives up with the last error; 0 turns resuming off."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.resume_timeout < 0:
            raise ValueError("backoffs and resume_timeout must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first), jitter included."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, retry - 1))
        return max(0.0, base * (1 + self.jitter * (2 * random.random() - 1)))


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


# Submit refusals that created nothing and pass with time: the route's queue or the server's intake full,
# or the tenant's own queue or rate (its RetryInfo says when the next Submit is allowed).
SUBMIT_RETRY_REASONS = frozenset({"QUEUE_FULL", "QUEUE_BYTES_FULL", "SUBMIT_BYTES_IN_FLIGHT", "TENANT_QUEUE_FULL",
                                  "TENANT_RATE_LIMITED"})


def retry_floor(method: str, error: RpcError) -> float | None:
    """None when ``error`` must not be retried for ``method``; otherwise the least wait in seconds
    (the server's RetryInfo delay, or 0)."""
    if method not in RETRYABLE_METHODS:
        return None
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return error.retry_delay or 0.0
    if (method in ("Submit", "Upload", "Retry") and error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            and error.reason in SUBMIT_RETRY_REASONS):
        return error.retry_delay or 0.0
    return None


def stream_resumable(error: GatewayError) -> bool:
    """Whether a cut read-only stream (Watch, WatchJobs) may be opened again where it stopped."""
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code is grpc.StatusCode.INTERNAL and "RST_STREAM" in error.message
