"""The OctoAI-compatible HTTP facade: code written for the OctoAI SDK runs unchanged but for the URL.

    POST /<route>/predict            X-OctoAI-Async: 1 -> 201 {"response_id", "poll_url"}
                                     without it         -> 200 the output (waits for the job)
    GET  /v1/requests/<id>           -> {"status": "pending" | "running" | "completed", "response_url"}
                                        a failed or cancelled job: an error status with a JSON reason,
                                        so the SDK raises instead of polling forever
    GET  /v1/responses/<id>          -> the output
    GET  /<route>/healthcheck        -> 200 when the route is SERVING, 503 while it warms up

Jobs are the gateway's own: the same tenants (bearer tokens), retention, and gRPC Watch/Fetch by id.
A predict body is read as JSON whatever its Content-Type (SDKs and curl send various ones), which is
why the HTTP face (``gateway.http``) refuses a POST that a browser marks as cross-origin: a page on
another site could otherwise post a text/plain form here and make jobs; with auth off, it also
refuses Host names that are not the gateway's (DNS rebinding). The facade is one sub-app of the
HTTP face, which authenticates its callers (bearer tokens) and answers its errors as for every
sub-app (``{"status": "error", "error": {"code", "reason", "message"}}`` at the status of
``gateway.errors.http_status``); a job that failed is answered here in that shape with
``"status": "failed"`` and its ``job_id``.
The whisper route answers in the OctoAI Whisper template's shape:
``{"prediction_time_ms", "transcription", "response": {"segments": [...], "word_segments": [...]}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from gateway.errors import Code, FieldViolation, GatewayError, InvalidArgument, NotFound, http_status
from gateway.http.face import ANYONE, Route, current_tenant, error_body, json_response, priority_of
from gateway.hub import HubClosed
from gateway.jobs import Job, JobInput, JobOutput, JobState, Result, Transcript
from gateway.service import MAX_INPUT_DEPTH, JobService
from gateway.settings import Settings, WhisperRoute
from gateway.work import health_name

log = logging.getLogger(__name__)

__all__ = ["Facade", "whisper_template"]

_STATUS = {JobState.QUEUED: "pending", JobState.RUNNING: "running", JobState.SUCCEEDED: "completed"}


class _NotFinite(ValueError):
    pass


def _not_finite(text: str) -> float:
    raise _NotFinite(text)


def _float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400
        raise _NotFinite(text)
    return number


def _int(text: str) -> int:
    number = int(text)
    try:
        float(number)  # Struct keeps doubles
    except OverflowError:
        raise _NotFinite(text) from None
    return number


def _strict_loads(text: str) -> Any:
    """JSON as gRPC's Struct takes it: no NaN, Infinity or numbers too large for a double."""
    return json.loads(text, parse_constant=_not_finite, parse_float=_float, parse_int=_int)


def _job_error_body(code: Code, reason: str, message: str, job_id: str, **extra: Any) -> dict[str, Any]:
    """The error shape of every sub-app, for a job: ``"status": "failed"`` and the job's id."""
    body = error_body(code, reason, message)
    body["error"]["job_id"] = job_id
    return {**body, "status": "failed", **extra}


def _json(body: Any, status: int = 200, job_id: str = "", headers: dict[str, str] | None = None) -> web.Response:
    all_headers = dict(headers or {})
    if job_id:
        all_headers["X-User-Request-ID"] = job_id  # the OctoAI SDK quotes it in its error messages
    return json_response(body, status, all_headers)


def whisper_template(job: Job, transcript: Transcript) -> dict[str, Any]:
    """The OctoAI Whisper template's output shape."""
    segments, word_segments = [], []
    for s in transcript.segments:
        words = [{"word": w.word.strip(), "start": w.start, "end": w.end, "score": round(w.probability, 3),
                  "speaker": None} for w in s.words]
        word_segments.extend(words)
        segments.append({"start": s.start, "end": s.end, "text": s.text, "words": words, "speaker": None,
                         "avg_logprob": s.avg_logprob, "no_speech_prob": s.no_speech_prob})
    elapsed = (job.finished - job.started) if job.finished is not None and job.started is not None else 0.0
    return {
        "prediction_time_ms": round(elapsed * 1000, 1),
        "transcription": "".join(s.text for s in transcript.segments),
        "response": {"segments": segments, "word_segments": word_segments, "language": transcript.language},
    }


class Facade:
    """The OctoAI-compatible sub-app of the HTTP face."""

    def __init__(self, settings: Settings, service: JobService, serving: Callable[[str], bool]) -> None:
        self.settings = settings
        self.service = service
        self.serving = serving
        self._uploads = 0  # request bodies being received now

    def routes(self) -> Iterable[Route]:
        return [
            Route("POST", "/{route}/predict", self.predict),
            Route("GET", "/{route}/healthcheck", self.healthcheck, ANYONE),
            Route("GET", "/v1/requests/{job_id}", self.request_status),
            Route("GET", "/v1/responses/{job_id}", self.response),
        ]

    def _base(self, request: web.Request) -> str:
        return self.settings.public_url.rstrip("/") or str(request.url.origin())

    async def predict(self, request: web.Request) -> web.Response:
        tenant = current_tenant()
        route = request.match_info["route"]
        self.service.route(route)  # 404 ROUTE_NOT_FOUND before reading a large body
        try:
            inputs = _strict_loads(await self._body(request))
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(f"the body is over the limit of {self.settings.max_receive_bytes} bytes",
                               "REQUEST_TOO_LARGE", Code.RESOURCE_EXHAUSTED) from None
        except _NotFinite:  # as gRPC refuses them: JSON has no NaN or Infinity
            raise InvalidArgument.fields(FieldViolation("inputs", "numbers must be finite (no NaN or Infinity)")) from None
        except RecursionError:
            raise InvalidArgument.fields(FieldViolation("inputs", f"nested deeper than {MAX_INPUT_DEPTH} levels"),
                                         reason="INPUT_TOO_DEEP") from None
        except ValueError:
            raise InvalidArgument("the body must be JSON inputs", reason="MALFORMED_REQUEST") from None
        if not isinstance(inputs, dict):
            raise InvalidArgument("the body must be a JSON object of inputs", reason="MALFORMED_REQUEST")
        if isinstance(self.settings.routes[route], WhisperRoute):
            inputs.setdefault("word_timestamps", True)  # the template's segments carry words
        job, _ = await self.service.submit(tenant, route, JobInput(inputs=inputs), {"via": "octoai-facade"}, "",
                                           priority=priority_of(request))
        if request.headers.get("X-OctoAI-Async", "").strip() in ("1", "true", "True"):
            body = {"response_id": job.id, "poll_url": f"{self._base(request)}/v1/requests/{job.id}"}
            return _json(body, 201, job.id)
        try:
            job, result = await self.service.fetch(tenant, job.id, wait=self.settings.predict_timeout_seconds)
        except HubClosed:  # shutting down while the job runs: answered below, with the job to poll
            job, result = await self.service.get(tenant, job.id), None
        if not job.terminal:  # the job goes on (here after a restart, or elsewhere): the caller can poll it
            if not self.service.accepting:
                return self._unfinished(request, job, Code.UNAVAILABLE, "SHUTTING_DOWN",
                                        "the gateway is shutting down before the job ended; it is kept: poll it",
                                        headers={"Retry-After": "1"})
            limit = self.settings.predict_timeout_seconds
            return self._unfinished(request, job, Code.DEADLINE_EXCEEDED, "PREDICT_TIMEOUT",
                                    f"the job did not end within {limit:g} s (predict_timeout_seconds); it goes on: "
                                    "poll it")
        return self._output(job, result)

    def _unfinished(self, request: web.Request, job: Job, code: Code, reason: str, message: str,
                    headers: dict[str, str] | None = None) -> web.Response:
        """A synchronous predict that ends before its job: the error, the job's status and where to poll it."""
        body = _job_error_body(code, reason, message, job.id, response_id=job.id,
                           poll_url=f"{self._base(request)}/v1/requests/{job.id}")
        body["status"] = _STATUS[job.state]
        return _json(body, http_status(code, reason), job.id, headers=headers)

    async def _body(self, request: web.Request) -> str:
        """The request body, received within http_read_timeout_seconds, with at most
        max_concurrent_uploads being received at once: a slow or stalled client cannot hold the
        facade (or its memory) for long, nor can many of them."""
        s = self.settings
        if self._uploads >= s.max_concurrent_uploads:
            raise GatewayError(f"{self._uploads} requests are being received, the limit (max_concurrent_uploads); "
                               "retry shortly", "TOO_MANY_UPLOADS", Code.UNAVAILABLE, retry_after=1.0)
        self._uploads += 1
        try:
            async with asyncio.timeout(s.http_read_timeout_seconds):
                raw = await request.read()
        except TimeoutError:
            raise GatewayError(f"the request body did not arrive within {s.http_read_timeout_seconds:g} s "
                               "(http_read_timeout_seconds)", "REQUEST_TIMEOUT", Code.DEADLINE_EXCEEDED) from None
        except ConnectionError as exc:  # the client went away mid-body: one line, no traceback
            log.info("facade: %s %s: the client went away while sending its body (%s)", request.method, request.path,
                     exc)
            raise GatewayError("the connection was lost while receiving the body", "CLIENT_GONE",
                               Code.CANCELLED) from None
        finally:
            self._uploads -= 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise InvalidArgument("the body must be JSON inputs (UTF-8)", reason="MALFORMED_REQUEST") from None

    async def request_status(self, request: web.Request) -> web.Response:
        job = await self.service.get(current_tenant(), request.match_info["job_id"])
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            return self._failed(job)
        body: dict[str, Any] = {"status": _STATUS[job.state], "response_id": job.id}
        if job.state is JobState.SUCCEEDED:
            body["response_url"] = f"{self._base(request)}/v1/responses/{job.id}"
        return _json(body, 200, job.id)

    async def response(self, request: web.Request) -> web.Response:
        tenant = current_tenant()
        job_id = request.match_info["job_id"]
        job = await self.service.get(tenant, job_id)
        if not job.terminal:
            raise NotFound(f"job {job_id} has no response yet: it is {_STATUS[job.state]}", reason="JOB_NOT_DONE",
                           metadata={"job_id": job_id})
        job, result = await self.service.fetch(tenant, job_id)
        return self._output(job, result)

    async def healthcheck(self, request: web.Request) -> web.Response:
        route = request.match_info["route"]
        self.service.route(route)
        ready = self.serving(health_name(route))
        return _json({"status": "ok" if ready else "warming up"}, 200 if ready else 503)

    def _output(self, job: Job, result: Result | None) -> web.Response:
        if job.state is not JobState.SUCCEEDED:
            return self._failed(job)
        if isinstance(result, Transcript):
            return _json(whisper_template(job, result), 200, job.id)
        assert isinstance(result, JobOutput)
        return _json(result.value, 200, job.id)

    def _failed(self, job: Job) -> web.Response:
        error = job.error
        code = error.code if error is not None else Code.UNKNOWN
        reason = error.reason if error is not None else "JOB_FAILED"
        message = error.message if error is not None else "the job failed"
        body = _job_error_body(code, reason, message, job.id)
        return _json(body, http_status(code, reason) if job.state is JobState.FAILED else 409, job.id)
