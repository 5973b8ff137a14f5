"""A fake of Replicate's hosted predictions API (api.replicate.com/v1), as the official ``replicate`` Python
client 1.0.x speaks it. Its faithfulness is proved by tests/http/test_fake_replicate.py, which runs
``replicate==1.0.7`` against it; the protocol, and what was verified against what, is docs/research/replicate.md.

Routes (every one named, for ``Faults.targets`` and the per-route request counts):

- ``POST /v1/predictions`` (``create``): body ``{"version", "input", "webhook", "webhook_events_filter", "stream"}``;
  ``version`` is ``<64 hex>``, ``owner/name:<64 hex>`` or ``owner/name`` (an official model: version ``"hidden"``).
- ``POST /v1/models/{owner}/{name}/predictions`` (``create_model``), ``POST /v1/deployments/{owner}/{name}/predictions``
  (``create_deployment``): the same body without ``version``.
  Headers: ``Prefer: wait[=N]`` holds the answer until the prediction is done or N s pass (capped by
  ``max_wait_seconds``); ``Cancel-After: 30s|5m|1h30m|90`` cancels it past that age (``aborted`` if it never started).
  Answer 201 with the prediction (202 when a ``Prefer: wait`` ran out before the end).
- ``GET /v1/predictions/{id}`` (``get``), ``POST /v1/predictions/{id}/cancel`` (``cancel``),
  ``GET /v1/predictions`` (``list``: ``{"next", "previous", "results"}``, newest first, ``?cursor=``).
- ``GET /v1/streams/{id}`` (``stream``, the prediction's ``urls.stream``): SSE ``output`` / ``logs`` / ``error`` /
  ``done`` events with ``id:`` lines, replayed from the start or from after ``Last-Event-ID``; no token needed.
- ``GET /v1/webhooks/default/secret`` (``secret``): ``{"key": "whsec_..."}``.
- ``GET /v1/models/{owner}/{name}/versions/{id}`` (``version``), ``GET /v1/deployments/{owner}/{name}`` (``deployment``):
  what ``client.run("owner/name:version")`` and ``client.deployments.get`` read first.

Errors are problem+json ``{"title", "detail", "status"}`` (what ``ReplicateError.from_response`` reads).
Every prediction runs the shared scripted model (harness/fakes/common.py): ``output`` is the growing list of step
strings (an iterator model), or ``{"text": TRANSCRIPTION}`` for an ``audio`` input; one ``logs`` line per step.

Webhooks: the whole prediction JSON, POSTed on the events of ``webhook_events_filter`` (default all of start, output,
logs, completed), signed the Standard Webhooks way with the secret above; output/logs ones throttled to one per
``webhook_interval`` (the latest state is sent at the end of the window), the terminal one retried with backoff.
Their faults are :class:`Settings` fields (``webhook_drop_rate``, ``webhook_repeat_rate``, ``webhook_shuffle``,
``webhook_terminal_fail_first``).

    python -m harness.fakes.replicate --port 0 --token T [--settings '{"queue_seconds": 0.2}']
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web

from harness.fakes.common import FakeServer, ScriptedRun, fake_args, serve_main

__all__ = ["DEFAULT_MODEL", "DEFAULT_VERSION", "SECRET", "FakeReplicate", "Settings", "main", "sign"]

SECRET = "whsec_" + base64.b64encode(b"fake-replicate-signing-key-32byt").decode()  # 32 bytes, base64
DEFAULT_MODEL = "replicate/hello-world"
DEFAULT_VERSION = hashlib.sha256(b"fake-replicate-version").hexdigest()  # 64 hex, like a real version id
HIDDEN = "hidden"  # the version of a prediction of an official model (OpenAPI: version enum "hidden")

STARTING, PROCESSING = "starting", "processing"
SUCCEEDED, FAILED, CANCELED, ABORTED = "succeeded", "failed", "canceled", "aborted"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED, ABORTED})
EVENTS = ("start", "output", "logs", "completed")

VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
MODEL_REF = re.compile(r"^(?P<owner>[^/:\s]+)/(?P<name>[^/:\s]+)(?::(?P<version>.+))?$")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
CREATE_FIELDS = frozenset({"input", "webhook", "webhook_events_filter", "stream"})
TITLES = {400: "Bad request", 401: "Unauthenticated", 404: "Not found", 422: "Input validation failed",
          429: "Request was throttled"}

# What GET .../versions/{id} answers: the scripted model's inputs, and an iterator of strings as its output
# (so that client.run("owner/name:version") returns an iterator, as for a language model).
OPENAPI_SCHEMA: dict[str, Any] = {
    "openapi": "3.0.2",
    "info": {"title": "Cog", "version": "0.1.0"},
    "paths": {},
    "components": {"schemas": {
        "Input": {"type": "object", "title": "Input", "properties": {
            "steps": {"type": "integer", "default": 3, "x-order": 0},
            "delay": {"type": "number", "default": 0.1, "x-order": 1},
            "prefix": {"type": "string", "default": "tok", "x-order": 2},
            "fail": {"type": "string", "x-order": 3},
            "audio": {"type": "string", "format": "uri", "x-order": 4}}},
        "Output": {"type": "array", "title": "Output", "items": {"type": "string"}, "x-cog-array-type": "iterator",
                   "x-cog-array-display": "concatenate"},
    }},
}


@dataclass
class Settings:
    """The fake's own knobs (``configure(**)`` / ``POST /_control`` by name, like the faults)."""

    queue_seconds: float = 0.1            # a prediction stays "starting" this long before it runs
    max_wait_seconds: float = 5.0         # the longest a Prefer: wait holds the answer (Replicate: 60)
    wait_timeout_status: str = ""         # the status a Prefer: wait answer shows when the wait ran out ("": the true one)
    min_cancel_after_seconds: float = 5.0  # a shorter Cancel-After is refused (Replicate's documented minimum: 5 s)
    page_size: int = 100                  # predictions per page of GET /v1/predictions (Replicate: 100)
    streaming: bool = True                # predictions carry urls.stream (the model supports streaming)
    missing_models: frozenset[str] = frozenset()  # "owner/name"s of models and deployments that answer 404
    webhook_secret: str = SECRET          # what GET /v1/webhooks/default/secret answers, and the signing key
    webhook_interval: float = 0.5         # output/logs webhooks at most once per this many seconds
    webhook_timeout: float = 5.0          # one webhook attempt's limit
    webhook_retries: int = 4              # retries of a failed terminal webhook (non-terminal ones: none)
    webhook_backoff: float = 0.2          # seconds before the first retry, doubling
    webhook_drop_rate: float = 0.0        # a non-terminal webhook is not sent
    webhook_repeat_rate: float = 0.0      # a webhook is delivered twice (same webhook-id)
    webhook_shuffle: bool = False         # non-terminal webhooks each wait up to webhook_shuffle_seconds: out of order
    webhook_shuffle_seconds: float = 0.3
    webhook_terminal_fail_first: int = 0  # per prediction: its first N terminal attempts are not made (count as failed)


def now_iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_duration(text: str) -> float | None:
    """Seconds of a Cancel-After value (``30``, ``30s``, ``5m``, ``1h30m45s``, ``500ms``), or None if malformed."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or DURATION.sub("", text):
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * unit[u] for n, u in DURATION.findall(text))


def parse_prefer_wait(header: str) -> float | None:
    """The seconds a ``Prefer: wait`` / ``wait=N`` asks for (bare ``wait``: 60, N clamped to 1..60), else None.
    Other preferences in the header are ignored, as RFC 7240 has it."""
    for part in re.split(r"[,;]", header):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value.strip():
            return 60.0
        try:
            return float(min(60, max(1, int(value.strip().strip('"')))))
        except ValueError:
            return None
    return None


def sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the
    base64-decoded part of the secret after ``whsec_`` (what replicate.webhook.Webhooks.validate checks)."""
    key = base64.b64decode(secret.split("_", 1)[1])
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def new_id() -> str:
    """A prediction id the way Replicate's look: 26 lowercase base32 characters."""
    return base64.b32encode(os.urandom(16)).decode().lower().rstrip("=")


def output_text(chunk: Any) -> str:
    return chunk if isinstance(chunk, str) else json.dumps(chunk)


@dataclass
class Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    run: ScriptedRun
    origin: str                        # scheme://host the creating request used (webhook bodies' urls)
    created: float
    deployment: str | None = None
    deadline: float | None = None
    webhook: str | None = None
    events_filter: frozenset[str] = frozenset(EVENTS)
    status: str = STARTING
    output: Any = None
    logs: str = ""
    error: str | None = None
    started: float | None = None
    completed: float | None = None
    stream: list[tuple[str, str, str]] = field(default_factory=list)  # (id, event, data) of the SSE stream
    changed: asyncio.Event = field(default_factory=asyncio.Event)      # set (and replaced) on every change
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    deadline_handle: asyncio.TimerHandle | None = None
    hook_last: float = float("-inf")   # loop time of the last output/logs webhook
    hook_pending: asyncio.TimerHandle | None = None
    hook_fail_first: int = 0
    hook_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one webhook at a time, in order (but shuffled)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self, origin: str, streaming: bool, *, logs: bool = True) -> dict[str, Any]:
        urls = {"get": f"{origin}/v1/predictions/{self.id}", "cancel": f"{origin}/v1/predictions/{self.id}/cancel",
                "web": f"https://replicate.com/p/{self.id}"}
        if streaming:
            urls["stream"] = f"{origin}/v1/streams/{self.id}"
        metrics: dict[str, float] = {}
        if self.completed is not None:
            if self.started is not None:
                metrics["predict_time"] = round(self.completed - self.started, 6)
            metrics["total_time"] = round(self.completed - self.created, 6)
        body: dict[str, Any] = {
            "id": self.id, "model": self.model, "version": self.version, "input": self.input,
            "logs": self.logs, "output": self.output, "data_removed": False, "error": self.error,
            "source": "api", "status": self.status, "created_at": now_iso(self.created),
            "started_at": now_iso(self.started), "completed_at": now_iso(self.completed),
            "urls": urls, "metrics": metrics,
        }
        if not logs:
            del body["logs"]
        if self.deployment is not None:
            body["deployment"] = self.deployment
        if self.deadline is not None:
            body["deadline"] = now_iso(self.deadline)
        return body


class Invalid(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class FakeReplicate(FakeServer):
    name = "replicate"

    def __init__(self, *, settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.own = settings or Settings()
        self.predictions: dict[str, Prediction] = {}
        self.counts: Counter[str] = Counter()   # Prefer/Cancel-After seen, stream connections, webhook deliveries
        self.webhook_log: list[dict[str, Any]] = []  # every webhook attempt: id, prediction, event, status
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- FakeServer hooks --

    def settings(self) -> Settings:
        return self.own

    def configure(self, **changes: Any) -> dict[str, Any]:
        """FakeServer.configure, plus ``clear_predictions`` (forget every prediction, stopping those running)."""
        if changes.get("reset_stats"):
            self.counts = Counter()
            self.webhook_log = []
        if changes.pop("clear_predictions", False):
            for p in self.predictions.values():
                for handle in (p.deadline_handle, p.hook_pending):
                    if handle is not None:
                        handle.cancel()
                if p.task is not None:
                    p.task.cancel()
            self.predictions.clear()
        return super().configure(**changes)

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["settings"]["missing_models"] = sorted(self.own.missing_models)  # JSON has no sets
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"predictions": {p.id: p.status for p in self.predictions.values()}, "counts": dict(self.counts),
                "webhooks": list(self.webhook_log)}

    def authorized(self, request: web.Request) -> bool:
        if request.match_info.route.name == "stream":  # a capability URL: EventSource cannot send a token
            return True
        return super().authorized(request)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        try:
            title = TITLES.get(status) or HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        return web.json_response({"title": title, "detail": message, "status": status}, status=status,
                                 headers=headers, content_type="application/problem+json")

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/predictions", self._create_version, name="create")
        r.add_post("/v1/models/{owner}/{name}/predictions", self._create_model, name="create_model")
        r.add_post("/v1/deployments/{owner}/{name}/predictions", self._create_deployment, name="create_deployment")
        r.add_get("/v1/predictions", self._list, name="list")
        r.add_get("/v1/predictions/{id}", self._get, name="get")
        r.add_post("/v1/predictions/{id}/cancel", self._cancel, name="cancel")
        r.add_get("/v1/streams/{id}", self._stream, name="stream")
        r.add_get("/v1/webhooks/default/secret", self._secret, name="secret")
        r.add_get("/v1/models/{owner}/{name}/versions/{version}", self._version, name="version")
        r.add_get("/v1/deployments/{owner}/{name}", self._deployment, name="deployment")

    async def start(self) -> FakeReplicate:
        self._session = aiohttp.ClientSession()
        await super().start()
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for p in self.predictions.values():
            for handle in (p.deadline_handle, p.hook_pending):
                if handle is not None:
                    handle.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- helpers --

    @staticmethod
    def origin(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _json(self, p: Prediction, request: web.Request, status: int = 200, **kwargs: Any) -> web.Response:
        return web.json_response(p.to_json(self.origin(request), self.own.streaming, **kwargs), status=status)

    def _find(self, request: web.Request) -> Prediction:
        p = self.predictions.get(request.match_info["id"])
        if p is None:
            raise Invalid(404, f"Prediction {request.match_info['id']} not found")
        return p

    @staticmethod
    def _bump(p: Prediction) -> None:
        p.changed.set()
        p.changed = asyncio.Event()

    def _event(self, p: Prediction, event: str, data: str) -> None:
        p.stream.append((f"{int(time.time())}:{len(p.stream)}", event, data))

    # -- create --

    async def _body(self, request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise Invalid(400, "The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Invalid(422, "- (root): Invalid type. Expected: object")
        problems = [f"- (root): Additional property {k} is not allowed" for k in body if k not in allowed]
        if "input" not in body:
            problems.append("- (root): input is required")
        elif not isinstance(body["input"], dict):
            problems.append("- input: Invalid type. Expected: object")
        webhook = body.get("webhook")
        if webhook is not None and (not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))):
            problems.append("- webhook: Does not match format 'uri'")
        events = body.get("webhook_events_filter")
        if events is not None and (not isinstance(events, list) or not all(e in EVENTS for e in events)):
            problems.append(f"- webhook_events_filter: items must be one of {', '.join(EVENTS)}")
        if problems:
            raise Invalid(422, "\n".join(problems))
        return body

    def _check_model(self, owner: str, name: str) -> None:
        if f"{owner}/{name}" in self.own.missing_models:
            raise Invalid(404, f"Model {owner}/{name} not found" if owner else "Not found")

    async def _create_version(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request, CREATE_FIELDS | {"version"})
            ref = body.get("version")
            if not isinstance(ref, str) or not ref:
                raise Invalid(422, "- (root): version is required")
            if VERSION_ID.match(ref):
                model, version = DEFAULT_MODEL, ref
            elif (m := MODEL_REF.match(ref)) is not None:
                self._check_model(m["owner"], m["name"])
                model, version = f"{m['owner']}/{m['name']}", m["version"] or HIDDEN
                if version != HIDDEN and not VERSION_ID.match(version):
                    raise Invalid(422, "Invalid version or not permitted")
            else:
                raise Invalid(422, "Invalid version or not permitted")
            return await self._create(request, body, model, version)
        except Invalid as exc:
            return self.error(exc.status, exc.detail)

    async def _create_model(self, request: web.Request) -> web.Response:
        owner, name = request.match_info["owner"], request.match_info["name"]
        try:
            self._check_model(owner, name)
            body = await self._body(request, CREATE_FIELDS)
            return await self._create(request, body, f"{owner}/{name}", HIDDEN)
        except Invalid as exc:
            return self.error(exc.status, exc.detail)

    async def _create_deployment(self, request: web.Request) -> web.Response:
        owner, name = request.match_info["owner"], request.match_info["name"]
        try:
            self._check_model(owner, name)
            body = await self._body(request, CREATE_FIELDS)
            return await self._create(request, body, DEFAULT_MODEL, DEFAULT_VERSION, deployment=f"{owner}/{name}")
        except Invalid as exc:
            return self.error(exc.status, exc.detail)

    async def _create(self, request: web.Request, body: dict[str, Any], model: str, version: str,
                      deployment: str | None = None) -> web.Response:
        try:
            run = ScriptedRun.of(body["input"])
        except (TypeError, ValueError) as exc:
            raise Invalid(422, f"- input: {exc}") from None
        created = time.time()
        deadline = None
        if (cancel_after := request.headers.get("Cancel-After")) is not None:
            self.counts["cancel_after"] += 1
            seconds = parse_duration(cancel_after)
            if seconds is None:
                raise Invalid(422, f"Invalid Cancel-After header: {cancel_after!r}")
            if seconds < self.own.min_cancel_after_seconds:
                raise Invalid(422, f"Cancel-After must be at least {self.own.min_cancel_after_seconds:g}s")
            deadline = created + seconds
        wait = None
        if (prefer := request.headers.get("Prefer")) is not None:
            wait = parse_prefer_wait(prefer)
            self.counts[f"prefer:{prefer}"] += 1
        events = body.get("webhook_events_filter")
        p = Prediction(id=new_id(), model=model, version=version, input=body["input"], run=run,
                       origin=self.origin(request), created=created, deployment=deployment, deadline=deadline,
                       webhook=body.get("webhook"), events_filter=frozenset(EVENTS if events is None else events),
                       hook_fail_first=self.own.webhook_terminal_fail_first)
        self.predictions[p.id] = p
        self.stats.creates[p.id] += 1
        loop = asyncio.get_running_loop()
        p.task = self._spawn(self._run(p))
        if deadline is not None:
            p.deadline_handle = loop.call_later(max(0.0, deadline - time.time()), self._expire, p)
        status = 201
        if wait is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.done.wait(), min(wait, self.own.max_wait_seconds))
            if not p.terminal:
                status = 202
                if self.own.wait_timeout_status:
                    body_json = p.to_json(self.origin(request), self.own.streaming)
                    body_json["status"] = self.own.wait_timeout_status
                    return web.json_response(body_json, status=status)
        return self._json(p, request, status)

    # -- the model run --

    async def _run(self, p: Prediction) -> None:
        await asyncio.sleep(self.own.queue_seconds)
        if p.terminal:
            return
        p.status, p.started = PROCESSING, time.time()
        self._bump(p)
        self._hook(p, "start")
        for i, chunk in enumerate(p.run.outputs()):
            await asyncio.sleep(p.run.delay)
            p.logs += f"step {i}\n"
            self._event(p, "logs", f"step {i}")
            self._hook(p, "logs")
            if not p.run.audio:
                p.output = [*(p.output or []), chunk]
                self._event(p, "output", chunk)
                self._hook(p, "output")
            self._bump(p)
        if p.run.fail is not None:
            p.error = p.run.fail
            self._finish(p, FAILED)
            return
        if p.run.audio:
            p.output = p.run.final
            self._event(p, "output", output_text(p.output))
        self._finish(p, SUCCEEDED)

    def _finish(self, p: Prediction, status: str) -> None:
        """Ends ``p`` (if it has not ended): terminal stream events, waiters woken, the terminal webhook."""
        if p.terminal:
            return
        p.status, p.completed = status, time.time()
        if status == FAILED:
            self._event(p, "error", json.dumps({"detail": p.error}))
            self._event(p, "done", json.dumps({"reason": "error"}))
        elif status == SUCCEEDED:
            self._event(p, "done", "{}")
        else:
            self._event(p, "done", json.dumps({"reason": status}))
        if p.deadline_handle is not None:
            p.deadline_handle.cancel()
        if p.task is not None and p.task is not asyncio.current_task():
            p.task.cancel()
        p.done.set()
        self._bump(p)
        self._hook(p, "completed")

    def _expire(self, p: Prediction) -> None:
        """Cancel-After ran out: ``aborted`` if it never started, else ``canceled`` (Replicate's OpenAPI)."""
        self._finish(p, ABORTED if p.status == STARTING else CANCELED)

    # -- routes --

    async def _get(self, request: web.Request) -> web.Response:
        try:
            return self._json(self._find(request), request)
        except Invalid as exc:
            return self.error(exc.status, exc.detail)

    async def _cancel(self, request: web.Request) -> web.Response:
        try:
            p = self._find(request)
        except Invalid as exc:
            return self.error(exc.status, exc.detail)
        self._finish(p, CANCELED)  # a finished prediction stays as it is
        return self._json(p, request)

    async def _list(self, request: web.Request) -> web.Response:
        newest = sorted(self.predictions.values(), key=lambda p: p.created, reverse=True)
        try:
            start = int(base64.urlsafe_b64decode(request.query.get("cursor", "") + "==").decode() or 0)
        except ValueError:
            return self.error(400, "Invalid cursor")
        size = max(1, self.own.page_size)
        page = newest[start:start + size]

        def cursor(offset: int) -> str:
            token = base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")
            return f"{self.origin(request)}/v1/predictions?cursor={token}"

        return web.json_response({
            "next": cursor(start + size) if start + size < len(newest) else None,
            "previous": cursor(max(0, start - size)) if start > 0 else None,
            "results": [p.to_json(self.origin(request), self.own.streaming, logs=False) for p in page],
        })

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        try:
            p = self._find(request)
        except Invalid as exc:
            return self.error(exc.status, exc.detail)
        self.counts["stream_connections"] += 1
        last = request.headers.get("Last-Event-ID")
        index = next((i + 1 for i, (eid, _, _) in enumerate(p.stream) if eid == last), 0) if last else 0
        if last:
            self.counts["stream_resumes"] += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        left = self.stream_events_left()
        while True:
            changed = p.changed
            while index < len(p.stream):
                if left is not None and left <= 0:
                    self.counts["stream_cuts"] += 1
                    await response.write_eof()
                    return response
                eid, event, data = p.stream[index]
                lines = [f"event: {event}", f"id: {eid}", *(f"data: {line}" for line in data.split("\n"))]
                await response.write(("\n".join(lines) + "\n\n").encode())
                index += 1
                if left is not None:
                    left -= 1
                if event == "done":
                    await response.write_eof()
                    return response
            await changed.wait()

    async def _secret(self, request: web.Request) -> web.Response:
        return web.json_response({"key": self.own.webhook_secret})

    async def _version(self, request: web.Request) -> web.Response:
        owner, name, version = (request.match_info[k] for k in ("owner", "name", "version"))
        if f"{owner}/{name}" in self.own.missing_models or not VERSION_ID.match(version):
            return self.error(404, f"Version {version} of {owner}/{name} not found")
        return web.json_response({"id": version, "created_at": "2026-01-01T00:00:00.000000Z", "cog_version": "0.23.1",
                                  "openapi_schema": OPENAPI_SCHEMA})

    async def _deployment(self, request: web.Request) -> web.Response:
        owner, name = request.match_info["owner"], request.match_info["name"]
        if f"{owner}/{name}" in self.own.missing_models:
            return self.error(404, f"Deployment {owner}/{name} not found")
        return web.json_response({"owner": owner, "name": name, "current_release": {
            "number": 1, "model": DEFAULT_MODEL, "version": DEFAULT_VERSION,
            "created_at": "2026-01-01T00:00:00.000000Z",
            "created_by": {"type": "organization", "username": owner, "name": owner, "github_url": None},
            "configuration": {"hardware": "gpu-t4", "min_instances": 0, "max_instances": 1}}})

    # -- webhooks --

    def _hook(self, p: Prediction, event: str) -> None:
        """A webhook for ``event``, if the prediction asked for it: start and completed at once, output and logs
        at most one per ``webhook_interval`` (a throttled one goes at the end of the window, with the state then)."""
        if not p.webhook or event not in p.events_filter:
            return
        if event == "completed":
            if p.hook_pending is not None:
                p.hook_pending.cancel()
                p.hook_pending = None
            self._spawn(self._deliver_terminal(p, self._body_of(p)))
            return
        if event == "start":
            self._send_nonterminal(p, event)
            return
        loop = asyncio.get_running_loop()
        wait = p.hook_last + self.own.webhook_interval - loop.time()
        if wait <= 0:
            p.hook_last = loop.time()
            self._send_nonterminal(p, event)
        elif p.hook_pending is None:
            self.counts["webhook_throttled"] += 1
            p.hook_pending = loop.call_later(wait, self._flush, p, event)
        else:
            self.counts["webhook_throttled"] += 1

    def _flush(self, p: Prediction, event: str) -> None:
        p.hook_pending = None
        if not p.terminal:
            p.hook_last = asyncio.get_running_loop().time()
            self._send_nonterminal(p, event)

    def _body_of(self, p: Prediction) -> bytes:
        return json.dumps(p.to_json(p.origin, self.own.streaming)).encode()

    def _send_nonterminal(self, p: Prediction, event: str) -> None:
        s = self.own
        if s.webhook_drop_rate > 0 and self.rng.random() < s.webhook_drop_rate:
            self.counts["webhook_dropped"] += 1
            return
        copies = 2 if s.webhook_repeat_rate > 0 and self.rng.random() < s.webhook_repeat_rate else 1
        delay = self.rng.uniform(0, s.webhook_shuffle_seconds) if s.webhook_shuffle else 0.0
        self._spawn(self._deliver(p, event, self._body_of(p), copies, delay))

    async def _deliver(self, p: Prediction, event: str, body: bytes, copies: int, delay: float) -> None:
        msg_id = "msg_" + new_id()
        if delay > 0:  # shuffled: each on its own after a random wait, so they overtake one another
            await asyncio.sleep(delay)
            lock: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        else:
            lock = p.hook_lock
        async with lock:
            for copy in range(copies):
                if copy:
                    self.counts["webhook_repeated"] += 1
                await self._post(p, event, msg_id, body)

    async def _deliver_terminal(self, p: Prediction, body: bytes) -> None:
        async with p.hook_lock:  # after the non-terminal ones sent so far (unless shuffled)
            await self._deliver_terminal_now(p, body)

    async def _deliver_terminal_now(self, p: Prediction, body: bytes) -> None:
        s = self.own
        msg_id = "msg_" + new_id()
        delivered = False
        for attempt in range(1 + max(0, s.webhook_retries)):
            if attempt:
                await asyncio.sleep(s.webhook_backoff * 2 ** (attempt - 1))
            if p.hook_fail_first > 0:
                p.hook_fail_first -= 1
                self.counts["webhook_attempts"] += 1
                self.counts["webhook_failed"] += 1
                self.counts["webhook_injected_failures"] += 1
                self.webhook_log.append({"id": msg_id, "prediction": p.id, "event": "completed", "status": "injected"})
                continue
            if await self._post(p, "completed", msg_id, body):
                delivered = True
                break
        if not delivered:
            self.counts["webhook_gave_up"] += 1
        elif s.webhook_repeat_rate > 0 and self.rng.random() < s.webhook_repeat_rate:
            self.counts["webhook_repeated"] += 1
            await self._post(p, "completed", msg_id, body)

    async def _post(self, p: Prediction, event: str, msg_id: str, body: bytes) -> bool:
        """One attempt; True on a 2xx answer. Redirects are not followed (Replicate's docs)."""
        assert self._session is not None and p.webhook is not None
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "fake-replicate-webhooks",
                   "webhook-id": msg_id, "webhook-timestamp": timestamp,
                   "webhook-signature": sign(self.own.webhook_secret, msg_id, timestamp, body)}
        self.counts["webhook_attempts"] += 1
        status: int | str
        try:
            async with self._session.post(p.webhook, data=body, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=self.own.webhook_timeout)) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        ok = isinstance(status, int) and 200 <= status < 300
        self.counts["webhook_delivered" if ok else "webhook_failed"] += 1
        if ok:
            self.counts[f"webhook_delivered:{event}"] += 1
        self.webhook_log.append({"id": msg_id, "prediction": p.id, "event": event, "status": status})
        return ok


def main(argv: list[str] | None = None) -> None:
    serve_main(lambda args: FakeReplicate(**fake_args(args)), argv, "python -m harness.fakes.replicate",
               "A fake of Replicate's predictions API.")


if __name__ == "__main__":
    main()
