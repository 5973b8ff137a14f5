"""The ``octoai`` backend: an upstream endpoint speaking OctoAI's async protocol, polled once for all.

    POST endpoint (X-OctoAI-Async: 1, JSON inputs) -> {"response_id", "poll_url"}
    GET poll_url -> {"status": "pending" | "running" | "completed", "response_url"}
    GET response_url -> the output JSON: the job's result

One poll loop per job, however many watch it; the interval starts short and backs off with jitter to
a cap, and a Retry-After header is honoured. Every request (the POST, the polls, the result fetch) is
retried with backoff on 5xx, 429, timeouts and connection resets; all go through one aiohttp session
per route with a bounded number of requests in flight across its jobs. The protocol has no "failed"
status, so failure is detected: a 4xx, a result that keeps failing, or a job that does not complete
before the route's deadline ends FAILED with a reason.

The upstream is a trust boundary: poll and response URLs are followed only on the endpoint's origin
(or the route's ``allowed_origins``), the bearer token is attached per request and only there,
redirects are followed only within those origins, and every answer is read up to a bound
(``max_answer_bytes`` for submit and poll answers, ``max_result_bytes`` for results): a spoofed or
compromised upstream cannot point the gateway, token attached, at internal services, nor fill its
memory.

The response id and poll URL are checkpointed as soon as the POST answers, so a restarted gateway
resumes polling and never POSTs a job twice. (If it stopped during the POST itself, it cannot know
whether the upstream took the job; it fails the job with UPSTREAM_SUBMIT_INTERRUPTED rather than risk
running it twice.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from gateway import __version__, metrics
from gateway.backends.base import JobContext, ReadyState
from gateway.backends.upstream.http import UpstreamError, origin, refused, retry_after, short, too_large
from gateway.errors import Code, FieldViolation, InvalidArgument
from gateway.jobs import JobInput, JobOutput, Result
from gateway.settings import OctoAIRoute

__all__ = ["OctoAIBackend", "UpstreamError"]

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TASKS = {"": "transcribe", "transcribe": "transcribe", "translate": "translate"}


_MAX_REDIRECTS = 3


class OctoAIBackend:
    def __init__(self, settings: OctoAIRoute) -> None:
        self.settings = settings
        self.readiness = ReadyState()
        self.reports_start = True  # jobs stay QUEUED while the upstream says "pending"
        self.concurrency: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrent_requests)
        self._health_task: asyncio.Task[None] | None = None
        self.requests = 0  # upstream requests sent, for metrics and benchmarks
        self._upstream = urlsplit(settings.endpoint).netloc or settings.endpoint  # the metrics' label
        # Where URLs from the upstream may lead (and the token may go): the configured endpoint's
        # origin, the healthcheck's, and the route's allowed_origins.
        self._origins = {origin(u) for u in (settings.endpoint, settings.healthcheck, *settings.allowed_origins) if u}
        self._auth = {"Authorization": f"Bearer {settings.token.get_secret_value()}"} if settings.token is not None else {}

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(limit=s.max_concurrent_requests, limit_per_host=s.max_concurrent_requests)
        headers = {"User-Agent": f"inference-gateway/{__version__}", "Accept": "application/json"}
        # No Authorization here: it is added per request, to trusted origins only (_call).
        self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        if s.healthcheck:
            self._health_task = asyncio.create_task(self._watch_health(), name="octoai-health")
        else:
            self.readiness.set(True)

    async def close(self) -> None:
        self.readiness.set(False)
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _watch_health(self) -> None:
        """200 from the healthcheck URL: SERVING; 5xx (a cold start), errors: NOT_SERVING."""
        assert self._session is not None
        while True:
            try:
                async with self._session.get(
                    self.settings.healthcheck, headers=self._auth, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_seconds),
                ) as response:
                    await response.read()
                    ready = response.status == 200
                    if not ready and response.status < 500:
                        log.warning("octoai: healthcheck %s answered %d", self.settings.healthcheck, response.status)
            except (aiohttp.ClientError, TimeoutError):
                ready = False
            self.readiness.set(ready)
            await asyncio.sleep(self.settings.health_interval_seconds if ready else min(2.0, self.settings.health_interval_seconds))

    # -- Submit ----------------------------------------------------------------------------------

    async def validate(self, job_input: JobInput) -> JobInput:
        if job_input.transcription is not None:  # a typed request, sent as the Whisper template's inputs
            t = job_input.transcription
            inputs: dict[str, Any] = {"audio": base64.b64encode(t.audio).decode(), "task": _TASKS.get(t.task, t.task)}
            if t.language:
                inputs["language"] = t.language
            job_input = JobInput(inputs=inputs)
        size = len(json.dumps(job_input.inputs or {}, separators=(",", ":")))
        if size > self.settings.max_input_bytes:
            raise InvalidArgument.fields(
                FieldViolation("inputs", f"{size} bytes of JSON, over the upstream's limit of {self.settings.max_input_bytes}"),
                reason="INPUT_TOO_LARGE",
            )
        return job_input

    # -- running ---------------------------------------------------------------------------------

    async def run(self, ctx: JobContext) -> Result:
        s = self.settings
        checkpoint = dict(ctx.checkpoint or {})
        if not checkpoint.get("poll_url"):
            if checkpoint.get("posting"):
                raise UpstreamError(
                    "the gateway stopped while submitting the job upstream, so it cannot know whether the upstream "
                    "has it; it was not submitted again. Resubmit it if needed.",
                    "UPSTREAM_SUBMIT_INTERRUPTED", Code.ABORTED,
                )
            submitted_at = time.time()
            await ctx.save_checkpoint({"posting": True, "submitted_at": submitted_at})
            body = await self._call("POST", s.endpoint, "submit", json_body=ctx.input.inputs or {},
                                    headers={"X-OctoAI-Async": "1"})
            poll_url, response_id = body.get("poll_url"), body.get("response_id")
            if not isinstance(poll_url, str) or not poll_url:
                raise UpstreamError(f"the upstream's answer to the submission has no poll_url: {short(json.dumps(body).encode())}",
                                    "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
            checkpoint = {"poll_url": poll_url, "response_id": str(response_id or ""),
                          "submitted_at": submitted_at}
            await ctx.save_checkpoint(checkpoint)
        # Checked here, for a new job and for one resumed from a checkpoint alike (stored by an older
        # version, or by a route whose allowed_origins has changed since).
        checkpoint["poll_url"] = self._trusted(checkpoint["poll_url"], "poll")
        response_url = await self._poll(ctx, checkpoint)
        await ctx.started()
        output = await self._call("GET", response_url, "result")
        return JobOutput(output)

    async def _poll(self, ctx: JobContext, checkpoint: Mapping[str, Any]) -> str:
        s = self.settings
        deadline = float(checkpoint["submitted_at"]) + s.deadline_seconds
        interval = s.poll_initial_seconds
        status = "pending"
        while True:
            body, headers = await self._call("GET", checkpoint["poll_url"], "poll", with_headers=True)
            status = body.get("status")
            if status == "completed":
                response_url = body.get("response_url")
                if not isinstance(response_url, str) or not response_url:
                    raise UpstreamError("the upstream completed the job without a response_url",
                                        "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
                return self._trusted(response_url, "result")
            if status == "running":
                await ctx.started()
            elif status != "pending":
                raise UpstreamError(f"the upstream answered an unknown status: {short(json.dumps(body).encode())}",
                                    "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL, {"status": str(status)})
            remaining = deadline - time.time()
            if remaining <= 0:
                raise UpstreamError(
                    f"the upstream did not complete the job within {s.deadline_seconds:.0f} s (last status: {status})",
                    "UPSTREAM_DEADLINE_EXCEEDED", Code.DEADLINE_EXCEEDED, {"last_status": status},
                )
            wait = retry_after(headers.get("Retry-After"))
            if wait is None:
                wait = interval * (0.8 + 0.4 * random.random())
                interval = min(s.poll_max_seconds, interval * s.poll_backoff)
            await asyncio.sleep(min(wait, remaining, s.retry_max_seconds))

    def _trusted(self, url: str, what: str) -> str:
        """``url`` (resolved against the endpoint) if it is on a trusted origin; else the job fails."""
        resolved = urljoin(self.settings.endpoint, url)
        where = origin(resolved)
        if urlsplit(resolved).scheme not in ("http", "https") or where not in self._origins:
            raise UpstreamError(
                f"the upstream's {what} URL points at {where[:100]}, which is neither the endpoint's origin nor "
                "one of the route's allowed_origins: not followed (the token goes nowhere else)",
                "UPSTREAM_URL_NOT_ALLOWED", Code.FAILED_PRECONDITION, {"step": what, "origin": where},
            )
        return resolved

    async def _read(self, response: aiohttp.ClientResponse, what: str) -> bytes:
        """The body, up to the bound for this step; a larger one fails the job (read no further)."""
        limit = self.settings.max_result_bytes if what == "result" else self.settings.max_answer_bytes
        if response.content_length is not None and response.content_length > limit:
            raise too_large(what, limit, response.content_length)
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_large(what, limit, None)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _call(self, method: str, url: str, what: str, json_body: Any = None,
                    headers: Mapping[str, str] | None = None, with_headers: bool = False) -> Any:
        """One logical request with retries; answers the JSON body (and headers, if asked)."""
        s = self.settings
        assert self._session is not None
        delay = s.retry_initial_seconds
        last = ""
        for attempt in range(s.max_retries + 1):
            wait_hint: float | None = None
            try:
                async with self._slots:
                    target = url
                    for _redirect in range(_MAX_REDIRECTS + 1):
                        self.requests += 1
                        async with self._session.request(
                            method, target, json=json_body, headers={**self._auth, **(headers or {})},
                            allow_redirects=False, timeout=aiohttp.ClientTimeout(total=s.request_timeout_seconds),
                        ) as response:
                            status, response_headers = response.status, response.headers
                            metrics.UPSTREAM_REQUESTS.labels(self._upstream, f"{status // 100}xx").inc()
                            location = response_headers.get("Location", "")
                            if status in (301, 302, 303, 307, 308) and location and method == "GET":
                                target = self._trusted(urljoin(target, location), what)  # refused elsewhere
                                continue
                            raw = await self._read(response, what)
                            break
                    else:
                        raise UpstreamError(f"the upstream's {what} answer redirected more than {_MAX_REDIRECTS} times",
                                            "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL, {"step": what})
                if status < 400:
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        raise UpstreamError(f"the upstream's {what} answer is not JSON: {short(raw)}",
                                            "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL) from None
                    if what != "result" and not isinstance(body, dict):
                        raise UpstreamError(f"the upstream's {what} answer is not a JSON object",
                                            "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
                    return (body, response_headers) if with_headers else body
                request_id = response_headers.get("X-User-Request-ID", "")
                last = f"HTTP {status}" + (f" (request {request_id})" if request_id else "") + f": {short(raw)}"
                if status not in _RETRY_STATUSES:
                    raise refused(what, status, last)
                wait_hint = retry_after(response_headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                metrics.UPSTREAM_REQUESTS.labels(self._upstream, "error").inc()
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt == s.max_retries:
                break
            wait = wait_hint if wait_hint is not None else delay * (0.5 + random.random())
            log.info("octoai: %s %s failed (%s); retry %d in %.1f s", what, url, last, attempt + 1, wait)
            await asyncio.sleep(min(wait, s.retry_max_seconds))
            delay = min(s.retry_max_seconds, delay * 2)
        raise UpstreamError(
            f"the upstream {what} kept failing ({s.max_retries + 1} attempts); last: {last}",
            "UPSTREAM_UNAVAILABLE", Code.UNAVAILABLE, {"step": what},
        )
