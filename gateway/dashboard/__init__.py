"""The live dashboard: one page at ``/`` on the HTTP listener, and the JSON and SSE endpoints it reads.

    GET  /                                    the page (index.html; app.js and style.css under /dashboard/)
    GET  /api/dashboard/config                auth on?, the tenant of this browser (if signed in), the routes,
                                              and "tenants": [{"name", "actions"}] it may view (its own first)
    POST /api/dashboard/session               {"token": ...} -> an HttpOnly, SameSite=Strict cookie
    DELETE /api/dashboard/session             signs out
    GET  /api/dashboard/jobs                  List: ?state=RUNNING&state=...&route=&label=k=v&page_token=&page_size=
                                              &since=15m (created in the last 15 minutes; s, m, h, d)
    GET  /api/dashboard/jobs/{id}             the job with its segments, and its revisions (?after=N: those after N)
    POST /api/dashboard/jobs/{id}/cancel      Cancel
    POST /api/dashboard/jobs/{id}/retry       Retry: {"job", "existing"}
    DELETE /api/dashboard/jobs/{id}           Delete (a finished job)
    POST /api/dashboard/cancel-matching       Cancel every queued or running job of a filter (?route=&label=k=v
                                              &state=QUEUED|RUNNING): {"asked", "cancelled"}
    GET  /api/dashboard/find?q=               a job by its id or its request id: {"job"}
    GET  /api/dashboard/overview              per route: jobs waiting and running (the server's counts, every
                                              process's), its workers, and jobs ended per minute by state
    GET  /api/dashboard/events                server-sent events: the WatchJobs stream of the tenant
                                              (?route=&label=k=v), ``id:`` = the WatchJobs resume token,
                                              so ``Last-Event-ID`` (or ?resume=) resumes without gaps

Every route above that reads or changes jobs (jobs, jobs/{id} and its cancel, retry and delete,
cancel-matching, find, events) also takes ``?tenant=NAME``: the tenant whose jobs it is about; absent
or empty, the caller's own. An operator (``[auth.operators.<tenant>]``) may name the tenants its
``tenants`` list gives (``"*"``: every tenant of the settings), and change their jobs only with
``actions = true``; anyone else only its own. Refusals are 403 PERMISSION_DENIED, reason
``TENANT_NOT_ALLOWED`` (a tenant the caller may not view, whether it exists or not) or
``ACTION_NOT_ALLOWED`` (a change to another tenant's job without ``actions``); a tenant that is no
tenant name (over 256 characters, control characters, given twice) is 400 INVALID_ARGUMENT. With auth
off the one tenant is ``default``. An operator's change to another tenant's job is logged (INFO) with
both tenants and the job id.

The page lists first (each List answer carries ``resumeToken``, the change position read before the
list), then opens the stream resumed from that token: the stream brings every job changed since the
list, and a cut at any point resumes from the last id (the token itself until the first event).
A stream opened without a token starts with the active jobs, sent without ids (they all stand at
one position: a stream cut among them starts afresh).

The SSE stream is JobService.watch_jobs, the machinery behind the WatchJobs RPC (same order, same
resume tokens). Its ``job`` events carry the job and the transcript segments this stream has not
sent yet (``segmentsOffset``: how many came before them; null when the event was read back from the
store, which does not say: the page then reads the job). Heartbeats are ``heartbeat`` events that
also move the stream's id forward.

Authentication: EventSource cannot send headers, so with auth on the page posts the token once and
gets it back as an HttpOnly, SameSite=Strict cookie scoped to /api/dashboard (a session cookie: gone
when the browser closes). The token never appears in a URL, and page scripts cannot read it. API
calls may send ``Authorization: Bearer`` instead. State-changing calls also need the header
``X-Dashboard: 1`` (a cross-site form cannot send it). Every answer is scoped to the tenant (the
caller's, or the one ``?tenant=`` names).

This is one sub-app of the HTTP face (``gateway.http``), which authenticates every route as its
:class:`~gateway.http.face.Access` says (the cookie, the X-Dashboard header) and answers every error
in the one shape (``{"status": "error", "error": {"code", "reason", "message"}}``, the status of
``gateway.errors.http_status``). In front of these routes it answers only the gateway's own Host
names when auth is off (a DNS-rebinding page, which could otherwise send the header and read the
answers as its own origin, names its own host), and refuses state-changing requests a browser marks
as cross-origin (Sec-Fetch-Site, Origin), with auth on or off.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.api.auth import DEFAULT_TENANT, Authenticator
from gateway.errors import FieldViolation, GatewayError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from gateway.http.face import ANYONE, Access, Route, current_tenant, optional_tenant
from gateway.hub import HubClosed, JobEvent
from gateway.jobs import Job, JobState, Segment
from gateway.service import Heartbeat, JobService
from gateway.settings import Settings
from gateway.store.base import JobFilter

__all__ = ["COOKIE", "Dashboard", "job_json"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent
COOKIE = "gateway_dashboard"
COOKIE_PATH = "/api/dashboard"
MAX_TOKEN_BYTES = 4096
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# The API's routes: the session cookie (or a bearer header) names the tenant; every call but a GET
# needs X-Dashboard: 1, which a cross-site form cannot send.
_SIGNED_IN = Access(cookie=COOKIE, write_header="X-Dashboard")
_MAYBE_SIGNED_IN = Access(optional=True, cookie=COOKIE, write_header="X-Dashboard")
_ANYONE = Access(authenticate=False, write_header="X-Dashboard")


MAX_BULK = 10_000  # jobs one cancel-matching cancels at most
MAX_TENANT = 256  # characters of ?tenant= at most
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Throughput:
    """Jobs ended per minute, by route and final state, over the last MINUTES minutes: counted off the
    event bus, so every job of every tenant, whichever process ended it (with Redis, every replica's
    bus carries every end)."""

    MINUTES = 15

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], dict[int, int]] = {}

    def on_event(self, event: JobEvent) -> None:
        if not event.terminal:
            return
        job = event.job
        minute = int((job.finished or time.time()) // 60)
        counts = self._counts.setdefault((job.route, job.state.name), {})
        counts[minute] = counts.get(minute, 0) + 1
        if len(counts) > self.MINUTES + 2:
            for old in [m for m in counts if m < minute - self.MINUTES]:
                del counts[old]

    def per_minute(self, route: str, now: float | None = None) -> dict[str, list[int]]:
        """{state: [jobs ended in each of the last MINUTES minutes, oldest first, this one last]}."""
        this = int((now if now is not None else time.time()) // 60)
        minutes = range(this - self.MINUTES + 1, this + 1)
        return {state: [self._counts.get((route, state), {}).get(m, 0) for m in minutes]
                for state in ("SUCCEEDED", "FAILED", "CANCELLED")}


def _since(text: str) -> float | None:
    """?since=: seconds (a number), or 15m, 1h, 24h, 7d; empty: no limit."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise InvalidArgument.fields(FieldViolation("since", "seconds, or a number with s, m, h or d: 15m, 24h"))
    return value


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {"start": segment.start, "end": segment.end, "text": segment.text}


def job_json(job: Job, segments: bool = False) -> dict[str, Any]:
    """The job as the page reads it (times in seconds since the epoch; segments only if asked)."""
    body: dict[str, Any] = {
        "id": job.id,
        "route": job.route,
        "state": job.state.name,
        "done": job.terminal,
        "revision": job.revision,
        "progress": job.progress,
        "queuePosition": job.queue_position,
        "labels": dict(job.labels),
        "createTime": job.created,
        "startTime": job.started,
        "finishTime": job.finished,
        "expireTime": job.expires,
        "requestId": job.request_id,
        "attempt": job.attempt,
        "retryOf": job.retry_of,
        "retriedBy": job.retried_by,
        "error": None if job.error is None else {
            "code": job.error.code.name, "reason": job.error.reason, "message": job.error.message},
    }
    if segments:
        body["segments"] = [_segment_json(s) for s in job.segments]
    return body


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _filter(query: Mapping[str, str], multi: Any, with_states: bool) -> JobFilter:
    states: set[JobState] = set()
    if with_states:
        for raw in multi.getall("state", []):
            for name in raw.split(","):
                name = name.strip().upper().removeprefix("JOB_STATE_")
                if not name:
                    continue
                try:
                    states.add(JobState[name])
                except KeyError:
                    raise InvalidArgument.fields(FieldViolation("state", f"unknown state {name!r}")) from None
    labels: dict[str, str] = {}
    for raw in multi.getall("label", []):
        key, sep, value = raw.partition("=")
        if not sep or not key:
            raise InvalidArgument.fields(FieldViolation("label", f"{raw!r}: expected key=value"))
        labels[key] = value
    return JobFilter(frozenset(states), query.get("route", ""), labels)


class Dashboard:
    """The dashboard's sub-app of the HTTP face: the page and the API it reads."""

    def __init__(self, settings: Settings, service: JobService, auth: Authenticator) -> None:
        self.settings = settings
        self.service = service
        self.auth = auth
        self._secure = bool(getattr(settings.tls, "cert_file", ""))
        self._files: dict[str, bytes] = {}
        self.throughput = Throughput()
        service.bus.subscribe(self.throughput.on_event)
        # tenant -> the other tenants it may view (fixed at start: the settings do not change)
        self._views = {operator: frozenset(settings.viewable_tenants(operator)) for operator in settings.auth.operators}

    # -- which tenant a call is about --------------------------------------------------------------

    def _tenant(self, request: web.Request, change: bool = False) -> str:
        """The tenant whose jobs this call reads (or, ``change``, changes): ?tenant=, else the caller's own.
        Raises PermissionDenied where the caller may not."""
        own = current_tenant()
        given = request.query.getall("tenant", [])
        if len(given) > 1:
            raise InvalidArgument.fields(FieldViolation("tenant", "give one tenant, or none for your own"))
        wanted = given[0] if given else ""
        if len(wanted) > MAX_TENANT or _CONTROL.search(wanted):
            raise InvalidArgument.fields(FieldViolation(
                "tenant", f"a tenant name: at most {MAX_TENANT} characters, no control characters"))
        if not wanted or wanted == own:
            return own
        if wanted not in self._views.get(own, ()):
            # The same answer whether the tenant exists or not: nothing to learn about other tenants' names.
            raise PermissionDenied(f"the tenant {wanted!r} is not one whose jobs you may view "
                                   "([auth.operators] of the gateway's settings)", reason="TENANT_NOT_ALLOWED")
        if change and not self.settings.auth.operators[own].actions:
            raise PermissionDenied(f"you may view the jobs of the tenant {wanted!r}, not change them "
                                   "([auth.operators] actions)", reason="ACTION_NOT_ALLOWED")
        return wanted

    def _audit(self, what: str, tenant: str, job_id: str, note: str = "") -> None:
        """An operator's change to another tenant's job, logged: who, what, which job, whose."""
        own = current_tenant()
        if tenant != own:
            log.info("dashboard: operator %r %s job %s of tenant %r%s", own, what, job_id, tenant,
                     f" ({note})" if note else "", extra={"job_id": job_id, "tenant": tenant})

    def routes(self) -> Iterable[Route]:
        return [
            Route("GET", "/", self.index, ANYONE),
            Route("GET", "/dashboard/{name}", self.asset, ANYONE),
            Route("GET", "/favicon.ico", self.favicon, ANYONE),
            Route("GET", "/api/dashboard/config", self.config, _MAYBE_SIGNED_IN),
            Route("POST", "/api/dashboard/session", self.sign_in, _ANYONE),
            Route("DELETE", "/api/dashboard/session", self.sign_out, _ANYONE),
            Route("GET", "/api/dashboard/jobs", self.list_jobs, _SIGNED_IN),
            Route("GET", "/api/dashboard/jobs/{job_id}", self.job, _SIGNED_IN),
            Route("POST", "/api/dashboard/jobs/{job_id}/cancel", self.cancel, _SIGNED_IN),
            Route("POST", "/api/dashboard/jobs/{job_id}/retry", self.retry, _SIGNED_IN),
            Route("DELETE", "/api/dashboard/jobs/{job_id}", self.delete, _SIGNED_IN),
            Route("POST", "/api/dashboard/cancel-matching", self.cancel_matching, _SIGNED_IN),
            Route("GET", "/api/dashboard/find", self.find, _SIGNED_IN),
            Route("GET", "/api/dashboard/overview", self.overview, _SIGNED_IN),
            Route("GET", "/api/dashboard/events", self.events, _SIGNED_IN),
        ]

    def _file(self, name: str) -> bytes:
        data = self._files.get(name)
        if data is None:
            data = self._files[name] = (STATIC / name).read_bytes()
        return data

    # -- the page --------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._file("index.html"), content_type="text/html", charset="utf-8",
                            headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = _ASSETS.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        return web.Response(body=self._file(name), content_type=content_type, charset="utf-8",
                            headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

    # -- JSON ------------------------------------------------------------------------------------

    async def config(self, request: web.Request) -> web.Response:
        tenant = optional_tenant()
        routes = [{"name": name, "backend": route.backend} for name, route in sorted(self.settings.routes.items())]
        tenants: list[dict[str, Any]] = []
        if self.auth.enabled and tenant:
            operator = self.settings.auth.operators.get(tenant)
            actions = operator is not None and operator.actions
            tenants = [{"name": tenant, "actions": True},
                       *({"name": other, "actions": actions} for other in sorted(self._views.get(tenant, ())))]
        return web.json_response({"auth": self.auth.enabled, "tenant": tenant, "routes": routes, "tenants": tenants,
                                  "heartbeatSeconds": self.settings.heartbeat_seconds},
                                 headers={"Cache-Control": "no-store"})

    async def sign_in(self, request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_TOKEN_BYTES + 64)
        try:
            token = json.loads(raw)["token"]
            if not isinstance(token, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument("expected {\"token\": \"...\"}", reason="MALFORMED_REQUEST") from None
        token = token.strip()
        if not self.auth.enabled:
            return web.json_response({"tenant": DEFAULT_TENANT})
        if not token or len(token) > MAX_TOKEN_BYTES or any(c in token for c in ";, \t\r\n\"\\"):
            raise Unauthenticated("unknown bearer token", reason="INVALID_TOKEN")
        tenant = self.auth.tenant_for(f"Bearer {token}")
        response = web.json_response({"tenant": tenant}, headers={"Cache-Control": "no-store"})
        response.set_cookie(COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=self._secure)
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        response = web.json_response({"tenant": None}, headers={"Cache-Control": "no-store"})
        response.del_cookie(COOKIE, path=COOKIE_PATH)
        return response

    async def list_jobs(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        flt = _filter(request.query, request.query, with_states=True)
        try:
            page_size = int(request.query.get("page_size", "50") or 50)
        except ValueError:
            raise InvalidArgument.fields(FieldViolation("page_size", "a number")) from None
        # Read before the list: a stream resumed from here brings every job changed after the list
        # was read (and maybe some before: the page keeps the newest revision of each).
        resume = self.service.resume_token(self.service.hub.position)
        jobs, token = await self.service.list(tenant, flt, page_size, request.query.get("page_token", ""))
        since = _since(request.query.get("since", ""))
        if since is not None:  # jobs created in the last `since` seconds: newest first, so the rest are older
            oldest = time.time() - since
            kept = [j for j in jobs if j.created >= oldest]
            if len(kept) < len(jobs):
                token = ""
            jobs = kept
        return web.json_response({"jobs": [job_json(j) for j in jobs], "nextPageToken": token, "resumeToken": resume},
                                 headers={"Cache-Control": "no-store"}, dumps=_dumps)

    async def job(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        job_id = request.match_info["job_id"]
        job = await self.service.get(tenant, job_id)  # NotFound for another tenant's job
        try:
            after = max(0, int(request.query.get("after", "0") or 0))
        except ValueError:
            raise InvalidArgument.fields(FieldViolation("after", "a revision number")) from None
        revisions = []
        if after < job.revision:
            for rev, offset in await self.service.store.revisions_after(job_id, after):
                body = job_json(rev)
                body["segmentCount"] = len(rev.segments)
                body["segmentsOffset"] = offset
                revisions.append(body)
        return web.json_response({"job": job_json(job, segments=True), "revisions": revisions},
                                 headers={"Cache-Control": "no-store"}, dumps=_dumps)

    async def cancel(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request, change=True)
        job = await self.service.cancel(tenant, request.match_info["job_id"])
        self._audit("cancelled", tenant, job.id, f"now {job.state.name}")
        return web.json_response({"job": job_json(job)}, headers={"Cache-Control": "no-store"}, dumps=_dumps)

    async def retry(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request, change=True)
        job_id = request.match_info["job_id"]
        job, existing = await self.service.retry(tenant, job_id, self.settings.data_dir / "uploads" / "incoming")
        self._audit("retried", tenant, job_id, f"the new job: {job.id}" + (", made before" if existing else ""))
        return web.json_response({"job": job_json(job), "existing": existing}, headers={"Cache-Control": "no-store"},
                                 dumps=_dumps)

    async def delete(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request, change=True)
        job_id = request.match_info["job_id"]
        await self.service.delete(tenant, job_id)
        self._audit("deleted", tenant, job_id)
        return web.json_response({}, headers={"Cache-Control": "no-store"})

    async def cancel_matching(self, request: web.Request) -> web.Response:
        """Cancels the tenant's queued and running jobs that match the filter (at most MAX_BULK), as they
        are listed now: a job submitted meanwhile is not one of them."""
        tenant = self._tenant(request, change=True)
        flt = _filter(request.query, request.query, with_states=True)
        active = frozenset({JobState.QUEUED, JobState.RUNNING})
        flt = JobFilter(flt.states & active if flt.states else active, flt.route, flt.labels)
        since = _since(request.query.get("since", ""))
        oldest = time.time() - since if since is not None else 0.0
        ids: list[str] = []
        token = ""
        while len(ids) < MAX_BULK:
            jobs, token = await self.service.list(tenant, flt, min(1000, MAX_BULK - len(ids)), token)
            ids += [j.id for j in jobs if j.created >= oldest]
            if not token or (jobs and jobs[-1].created < oldest):  # newest first: the rest are older
                break
        cancelled = 0
        for job_id in ids:
            try:
                job = await self.service.cancel(tenant, job_id)
            except GatewayError:  # gone meanwhile (deleted, expired)
                continue
            cancelled += job.state is JobState.CANCELLED or not job.terminal
            self._audit("cancelled", tenant, job_id, f"cancel-matching, now {job.state.name}")
        if tenant != current_tenant():
            log.info("dashboard: operator %r cancel-matching on tenant %r (route %r, labels %r): asked %d, cancelled %d",
                     current_tenant(), tenant, flt.route, dict(flt.labels), len(ids), cancelled, extra={"tenant": tenant})
        return web.json_response({"asked": len(ids), "cancelled": cancelled}, headers={"Cache-Control": "no-store"})

    async def find(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        wanted = request.query.get("q", "").strip()
        if not wanted or len(wanted) > 256:
            raise InvalidArgument.fields(FieldViolation("q", "a job id or a request id"))
        if _JOB_ID.fullmatch(wanted.lower()):
            job = await self.service.get(tenant, wanted.lower())
        else:
            found = await self.service.store.find_request(tenant, wanted, self.service.clock.now())
            if found is None:
                raise NotFound(f"no job with the id or request id {wanted!r}", metadata={"q": wanted})
            job = await self.service.get(tenant, found[0].id)
        return web.json_response({"job": job_json(job)}, headers={"Cache-Control": "no-store"}, dumps=_dumps)

    async def overview(self, request: web.Request) -> web.Response:
        routes = []
        for name, runner in sorted(self.service.routes.items()):
            route = await runner.overview()
            route["ended"] = self.throughput.per_minute(name)
            routes.append(route)
        return web.json_response({"routes": routes, "minutes": Throughput.MINUTES, "now": time.time()},
                                 headers={"Cache-Control": "no-store"}, dumps=_dumps)

    # -- the push stream -------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        tenant = self._tenant(request)
        flt = _filter(request.query, request.query, with_states=False)  # states change: the page filters them
        resume = request.headers.get("Last-Event-ID") or request.query.get("resume", "")
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # proxies: do not buffer the stream
        })
        await response.prepare(request)
        sent_segments: dict[str, int] = {}  # job -> the segments this stream has sent of it
        try:
            await response.write(b"retry: 1000\n: connected\n\n")
            async for item in self.service.watch_jobs(tenant, flt, resume):
                if isinstance(item, Heartbeat):
                    token = self.service.resume_token(item.position)
                    data = _dumps({"time": item.time})
                    await response.write(f"event: heartbeat\nid: {token}\ndata: {data}\n\n".encode())
                    continue
                event, position = item
                data = _dumps(self._job_message(event, sent_segments))
                if not resume and not event.position:
                    # The first snapshot of a fresh stream (the active jobs): all of it is at one
                    # position, so a stream cut halfway through must start afresh, not resume.
                    await response.write(f"event: job\ndata: {data}\n\n".encode())
                    continue
                token = self.service.resume_token(position)
                await response.write(f"event: job\nid: {token}\ndata: {data}\n\n".encode())
        except GatewayError as exc:  # a bad resume token, a stream that fell too far behind
            data = _dumps({"code": exc.code.name, "reason": exc.reason, "message": exc.message})
            try:
                await response.write(f"event: failure\ndata: {data}\n\n".encode())
            except (ConnectionError, RuntimeError):
                pass
        except HubClosed:  # shutting down: the page reconnects (elsewhere, or once back)
            pass
        except (ConnectionError, RuntimeError):  # the page went away
            pass
        return response

    def _job_message(self, event: JobEvent, sent_segments: dict[str, int]) -> dict[str, Any]:
        job = event.job
        body: dict[str, Any] = {"job": job_json(job)}
        if event.partial:  # from another process: only the segments the revision added
            offset, segments = event.segments_offset, event.new_segments
            sent_segments[job.id] = offset + len(segments)
        elif event.position:  # committed here: the job holds every segment
            offset = sent_segments.get(job.id, 0)
            if offset > len(job.segments):
                offset = 0
            segments = job.segments[offset:]
            sent_segments[job.id] = len(job.segments)
        else:  # read back from the store, without its segments: unknown
            offset, segments = None, ()
            sent_segments.pop(job.id, None)
        if job.terminal:
            sent_segments.pop(job.id, None)
        body["segmentsOffset"] = offset
        body["segments"] = [_segment_json(s) for s in segments]
        return body
