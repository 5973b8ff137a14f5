"""The one HTTP client of every upstream profile: trusted origins, per-request auth, bounded answers,
checked redirects, retries with backoff, and Server-Sent Events.

The upstream is a trust boundary. URLs an upstream hands back (poll, result, stream, cancel URLs) are
followed only on the configured base's origin or the route's ``allowed_origins``; the token is
attached per request and only there; a redirect is followed only within those origins; every answer
is read up to a bound (``max_answer_bytes`` for submit, status and events, ``max_result_bytes`` for
results). A spoofed or compromised upstream cannot point the gateway, token attached, at internal
services, nor fill its memory.

Every request is retried with jittered backoff on 408, 429 (and the profile's own busy statuses),
5xx, timeouts and connection resets, a Retry-After header honoured; other 4xx fail the job at once
with a reason (:func:`refused`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from gateway import __version__, metrics
from gateway.errors import Code, JobError

__all__ = ["Answer", "Event", "Limits", "UpstreamError", "UpstreamHttp", "origin", "retry_after", "short"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 3


class UpstreamError(JobError):
    pass


def origin(url: str) -> str:
    """scheme://host:port, the port made explicit, the host lowercased (RFC 6454)."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:  # a port that is not a number
        port = -1
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def short(body: bytes | str) -> str:
    text = (body.decode("utf-8", "replace") if isinstance(body, bytes) else body).strip()
    return text[:300] + ("…" if len(text) > 300 else "")


@dataclass(frozen=True, slots=True)
class Limits:
    request_timeout_seconds: float = 60.0
    max_retries: int = 8
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    max_concurrent_requests: int = 32
    max_answer_bytes: int = 1024 * 1024
    max_result_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event."""

    event: str
    data: str
    id: str = ""


class UpstreamHttp:
    """One per route: an aiohttp session, the trusted origins, the auth header, the limits."""

    def __init__(self, name: str, base: str, auth: Mapping[str, str], limits: Limits,
                 allowed_origins: Collection[str] = ()) -> None:
        self.name = name  # the backend's name, in logs
        self.base = base
        self.auth = dict(auth)
        self.limits = limits
        self.origins = {origin(u) for u in (base, *allowed_origins) if u}
        self.label = urlsplit(base).netloc or base  # the metrics' label
        self.requests = 0  # requests sent, for metrics and benchmarks
        self._slots = asyncio.Semaphore(limits.max_concurrent_requests)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        n = self.limits.max_concurrent_requests
        connector = aiohttp.TCPConnector(limit=n + 16, limit_per_host=n + 16)  # + room for event streams
        headers = {"User-Agent": f"inference-gateway/{__version__}", "Accept": "application/json"}
        # No Authorization here: it is added per request, to trusted origins only (request()).
        self._session = aiohttp.ClientSession(connector=connector, headers=headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "open() first"
        return self._session

    def trusted(self, url: str, what: str) -> str:
        """``url`` (resolved against the base) if it is on a trusted origin; else the job fails."""
        resolved = urljoin(self.base, url)
        where = origin(resolved)
        if urlsplit(resolved).scheme not in ("http", "https") or where not in self.origins:
            raise UpstreamError(
                f"the upstream's {what} URL points at {where[:100]}, which is neither the configured origin nor "
                "one of the route's allowed_origins: not followed (the token goes nowhere else)",
                "UPSTREAM_URL_NOT_ALLOWED", Code.FAILED_PRECONDITION, {"step": what, "origin": where},
            )
        return resolved

    def _limit(self, what: str) -> int:
        return self.limits.max_result_bytes if what == "result" else self.limits.max_answer_bytes

    async def _read(self, response: aiohttp.ClientResponse, what: str) -> bytes:
        """The body, up to the bound for this step; a larger one fails the job (read no further)."""
        limit = self._limit(what)
        if response.content_length is not None and response.content_length > limit:
            raise too_large(what, limit, response.content_length)
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_large(what, limit, None)
            chunks.append(chunk)
        return b"".join(chunks)

    def _count(self, status: int | str) -> None:
        self.requests += 1
        metrics.UPSTREAM_REQUESTS.labels(self.label, status if isinstance(status, str) else f"{status // 100}xx").inc()

    async def request(self, method: str, url: str, what: str, *, json_body: Any = None,
                      headers: Mapping[str, str] | None = None, ok: Collection[int] = (),
                      retry: Collection[int] = (), retries: int | None = None,
                      timeout: float | None = None, creates: bool = False) -> Answer:
        """One logical request with retries. Answers a status below 400 (or one in ``ok``) with its JSON
        body; ``retry`` adds statuses to retry (a busy upstream); others raise :func:`refused`.

        ``creates``: the request makes a job upstream and is not idempotent. It is sent again only where
        the upstream surely did not take it: after an error answer, or a connection that never opened. A
        connection lost or timed out once the request was sent leaves it unknown: UPSTREAM_SUBMIT_INTERRUPTED,
        rather than a second job."""
        lim = self.limits
        max_retries = lim.max_retries if retries is None else retries
        url = self.trusted(url, what)
        delay = lim.retry_initial_seconds
        last = ""
        for attempt in range(max_retries + 1):
            wait_hint: float | None = None
            try:
                async with self._slots:
                    status, response_headers, raw = await self._send(method, url, what, json_body, headers, timeout)
                if status < 400 or status in ok:
                    return Answer(status, self.parse(raw, what), response_headers)
                last = f"HTTP {status}: {short(raw)}"
                if status not in RETRY_STATUSES and status not in retry:
                    raise refused(what, status, last)
                wait_hint = retry_after(response_headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                self._count("error")
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if creates and not isinstance(exc, aiohttp.ClientConnectorError):
                    raise UpstreamError(
                        f"the connection to the upstream was lost after the job was sent ({last}), so it cannot "
                        "know whether the upstream has it; it was not sent again. Resubmit it if needed.",
                        "UPSTREAM_SUBMIT_INTERRUPTED", Code.ABORTED, {"step": what},
                    ) from None
            if attempt == max_retries:
                break
            wait = wait_hint if wait_hint is not None else delay * (0.5 + random.random())
            log.info("%s: %s %s failed (%s); retry %d in %.1f s", self.name, what, url, last, attempt + 1, wait)
            await asyncio.sleep(min(wait, lim.retry_max_seconds))
            delay = min(lim.retry_max_seconds, delay * 2)
        raise UpstreamError(
            f"the upstream's {what} kept failing ({max_retries + 1} attempts); last: {last}",
            "UPSTREAM_UNAVAILABLE", Code.UNAVAILABLE, {"step": what},
            transient=creates,  # the upstream never took the job: running it again makes no second one
        )

    async def _send(self, method: str, url: str, what: str, json_body: Any, headers: Mapping[str, str] | None,
                    timeout: float | None) -> tuple[int, Mapping[str, str], bytes]:
        target = url
        for _redirect in range(MAX_REDIRECTS + 1):
            async with self.session.request(
                method, target, json=json_body, headers={**self.auth, **(headers or {})}, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout or self.limits.request_timeout_seconds),
            ) as response:
                self._count(response.status)
                location = response.headers.get("Location", "")
                if response.status in (301, 302, 303, 307, 308) and location and method == "GET":
                    target = self.trusted(urljoin(target, location), what)  # refused elsewhere
                    continue
                return response.status, response.headers, await self._read(response, what)
        raise UpstreamError(f"the upstream's {what} answer redirected more than {MAX_REDIRECTS} times",
                            "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL, {"step": what})

    @staticmethod
    def parse(raw: bytes, what: str) -> Any:
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise UpstreamError(f"the upstream's {what} answer is not JSON: {short(raw)}",
                                "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL, {"step": what}) from None
        if what != "result" and not isinstance(body, dict):
            raise UpstreamError(f"the upstream's {what} answer is not a JSON object",
                                "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL, {"step": what})
        return body

    async def events(self, url: str, what: str, idle_seconds: float,
                     headers: Mapping[str, str] | None = None) -> AsyncIterator[Event]:
        """The events of a Server-Sent Events stream until it ends. Raises UpstreamError for a refusal
        (4xx), and aiohttp's or TimeoutError when the connection fails or is silent ``idle_seconds``:
        the caller then falls back to polling, or reconnects. Each event is bounded by max_answer_bytes."""
        url = self.trusted(url, what)
        limit = self.limits.max_answer_bytes
        async with self.session.get(
            url, headers={**self.auth, "Accept": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})},
            allow_redirects=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.limits.request_timeout_seconds,
                                                                 sock_read=idle_seconds),
        ) as response:
            self._count(response.status)
            if response.status >= 300:
                raw = await self._read(response, what)
                if response.status in RETRY_STATUSES or response.status < 400:
                    raise aiohttp.ClientConnectionError(f"HTTP {response.status}: {short(raw)}")
                raise refused(what, response.status, f"HTTP {response.status}: {short(raw)}")
            event, event_id, size = "", "", 0
            data: list[str] = []
            while True:
                line = await response.content.readline()  # aiohttp bounds a line by its read buffer
                if not line:
                    return
                size += len(line)
                if size > limit:
                    raise too_large(what, limit, None)
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text:
                    if data or event:
                        yield Event(event or "message", "\n".join(data), event_id)
                    event, data, size = "", [], 0
                    continue
                if text.startswith(":"):
                    continue
                field, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    event_id = value


def too_large(what: str, limit: int, size: int | None) -> UpstreamError:
    told = f" ({size} bytes)" if size is not None else ""
    return UpstreamError(
        f"the upstream's {what} answer is larger than the route's limit of {limit} bytes{told}: not read",
        "UPSTREAM_ANSWER_TOO_LARGE", Code.FAILED_PRECONDITION, {"step": what, "limit_bytes": str(limit)},
    )


def refused(what: str, status: int, detail: str) -> UpstreamError:
    """The job's failure for an upstream's 4xx answer."""
    meta = {"status": str(status), "step": what}
    if status in (401, 403):
        return UpstreamError(f"the upstream refused our credentials on {what}: {detail}",
                             "UPSTREAM_UNAUTHORIZED", Code.PERMISSION_DENIED, meta)
    if status in (404, 410):
        return UpstreamError(f"the upstream does not know this job any more ({what}): {detail}",
                             "UPSTREAM_NOT_FOUND", Code.NOT_FOUND, meta)
    if status == 413:
        return UpstreamError(f"the upstream refused the inputs as too large: {detail}",
                             "UPSTREAM_INPUT_TOO_LARGE", Code.INVALID_ARGUMENT, meta)
    return UpstreamError(f"the upstream refused the {what}: {detail}", "UPSTREAM_REJECTED",
                         Code.FAILED_PRECONDITION, meta)
