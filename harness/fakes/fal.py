"""A fake fal.ai queue (``queue.fal.run``) that speaks the queue HTTP API the way `fal-client` 1.0.x expects it.

Its faithfulness is proved by tests/http/test_fake_fal.py, which runs the official ``fal-client==1.0.3`` against it
over TLS (the client only speaks https); it also serves plain http (no TLS flags) for the gateway's own tests. The
protocol, what was checked against the client's source and what is assumed, is written up in docs/research/fal.md.

Routes (``{ns}`` is an optional ``workflows/`` or ``comfy/`` namespace; route names in brackets, for faults/stats):

- ``POST /{owner}/{app}[/{path}]`` [submit]: the body is the input JSON; ``?fal_webhook=URL`` asks for a webhook.
  200 ``{"status": "IN_QUEUE", "request_id", "gateway_request_id", "queue_position", "response_url", "status_url",
  "cancel_url"}``, the URLs absolute on the origin the caller used and on ``owner/app`` only (no sub path).
- ``GET /{ns}{owner}/{app}/requests/{id}/status[?logs=1]`` [status]: 202 while IN_QUEUE/IN_PROGRESS, 200 once
  COMPLETED; ``logs`` is null unless asked for (``1``/``true``), then every log line so far.
- ``GET .../requests/{id}/status/stream[?logs=1]`` [status_stream]: ``text/event-stream``, one ``data: <status>``
  per change, the last one COMPLETED; with logs each event carries the lines new since the previous event.
- ``GET .../requests/{id}`` [result]: 200 the output; a failed run: its status (``fail_status``, 500) with
  ``{"detail": msg}``; canceled: 400 ``{"detail": "Request was cancelled"}``; not yet done: 400
  ``{"detail": "Request is still in progress"}``; unknown: 404.
- ``PUT .../requests/{id}/cancel`` [cancel]: 202 ``{"status": "CANCELLATION_REQUESTED"}``; done: 400
  ``{"status": "ALREADY_COMPLETED"}``; unknown: 404 ``{"status": "NOT_FOUND"}``.
- ``GET /.well-known/jwks.json`` [jwks]: the Ed25519 key the webhooks are signed with (no auth needed).
- ``GET /_stats``, ``GET|POST /_control``: test-only (harness/fakes/common.py).

Auth: ``Authorization: Key <token>`` when started with a token. Every answer of the queue carries
``X-Fal-Request-Id`` (but the ingress-style errors of ``ingress_errors``, which the client retries).

The model every request runs is :class:`ScriptedRun` (common.py): ``steps`` log lines ``step <i>`` one every
``delay`` s, then ``{"outputs": [...]}`` (or ``{"text": ...}`` for ``audio``), or ``fail``: the run fails with that
message (``fail_status``, an int in the input, overrides the setting for that request).

    async with FakeFal(token="k", queue_seconds=0.2) as fake: ...           # in process
    python -m harness.fakes.fal --port 0 --token k [--tls-cert C --tls-key K] [--settings JSON]
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from harness.fakes.common import TOKEN, FakeProcess, FakeServer, Faults, ScriptedRun, fake_args, serve_main

__all__ = ["TOKEN", "FakeFal", "FakeProcess", "FalSettings", "Faults", "main", "sign_webhook", "verify_webhook"]

# Route names (what Faults.targets and Stats.requests key on).
SUBMIT, STATUS, STATUS_STREAM, RESULT, CANCEL, JWKS = "submit", "status", "status_stream", "result", "cancel", "jwks"
IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
NAMESPACES = ("workflows", "comfy")  # fal_client/client.py APP_NAMESPACES
REQUEST_ID_HEADER = "X-Fal-Request-Id"
CANCELLED = "Request was cancelled"
STILL_RUNNING = "Request is still in progress"
WEBHOOK_USER_ID = "fake-fal-user"
_INGRESS_PAGE = ("<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}"
                 "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


@dataclass
class FalSettings:
    """The fake's own knobs, set like faults (``configure``, ``POST /_control``, ``--settings``)."""

    queue_seconds: float = 0.2          # a request is IN_QUEUE this long ...
    queue_ahead: int = 2                # ... starting at this queue_position, counting down to 0
    fail_status: int = 500              # the result's HTTP status for a failed run
    honor_cancel: bool = True           # a canceled IN_PROGRESS run stops at its next step (else it runs on)
    ingress_errors: bool = False        # injected 502/503/504 are nginx pages without X-Fal-Request-Id (retried)
    webhook_drop_rate: float = 0.0      # this share of webhooks is never sent (lost)
    webhook_repeat_rate: float = 0.0    # this share of webhooks is delivered twice
    webhook_retries: int = 3            # further attempts after a failed delivery (non-2xx, no answer)
    webhook_retry_seconds: float = 0.2  # the wait before the first retry, doubling after each
    webhook_timeout: float = 5.0        # seconds one delivery attempt may take


@dataclass
class FalRequest:
    id: str
    namespace: str          # "" or "workflows/"
    owner: str
    app: str
    path: str | None
    input: Any
    run: ScriptedRun
    fail_status: int
    webhook: str | None
    headers: dict[str, str]
    queue_position: int
    state: str = IN_QUEUE
    logs: list[dict[str, Any]] = field(default_factory=list)
    output: Any = None
    error: str | None = None
    result_status: int = 200
    started: float | None = None
    completed: float | None = None
    cancel_requested: bool = False
    canceled: bool = False
    version: int = 0
    webhook_deliveries: int = 0
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def app_path(self) -> str:
        return f"{self.namespace}{self.owner}/{self.app}"

    def touch(self) -> None:
        """Wakes whoever waits for a change (the status streams)."""
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def inference_time(self) -> float | None:
        if self.started is None or self.completed is None:
            return None
        return round(self.completed - self.started, 6)


def _timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def sign_webhook(key: Ed25519PrivateKey, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
    """fal's webhook signature: Ed25519 over ``request_id\\nuser_id\\ntimestamp\\nsha256_hex(body)``, in hex."""
    message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return key.sign(message).hex()


def verify_webhook(jwks: dict[str, Any], headers: Any, body: bytes) -> bool:
    """Checks a webhook's ``X-Fal-Webhook-*`` headers against a JWKS (what a receiver of fal's webhooks does)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        request_id, user_id = headers["X-Fal-Webhook-Request-Id"], headers["X-Fal-Webhook-User-Id"]
        timestamp, signature = headers["X-Fal-Webhook-Timestamp"], bytes.fromhex(headers["X-Fal-Webhook-Signature"])
    except (KeyError, ValueError):
        return False
    message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    for jwk in jwks.get("keys", []):
        x = jwk["x"] + "=" * (-len(jwk["x"]) % 4)
        with contextlib.suppress(InvalidSignature, ValueError):
            Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x)).verify(signature, message)
            return True
    return False


class FakeFal(FakeServer):
    """fal's queue on 127.0.0.1, in process (``async with``) or as a subprocess (``python -m harness.fakes.fal``)."""

    name = "fal"

    def __init__(self, *, settings: FalSettings | None = None, **kwargs: Any) -> None:
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in {f.name for f in dataclasses.fields(FalSettings)}}
        super().__init__(**kwargs)
        self.own = settings or FalSettings()
        for key, value in own.items():
            setattr(self.own, key, value)
        self.requests: dict[str, FalRequest] = {}
        self.webhook_key = Ed25519PrivateKey.generate()
        self.webhooks: list[dict[str, Any]] = []     # every delivery attempt: request_id, attempt, answer
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- FakeServer --

    def settings(self) -> FalSettings:
        return self.own

    def authorized(self, request: web.Request) -> bool:
        if request.match_info.route.name == JWKS:
            return True
        return request.headers.get("Authorization") == f"Key {self.token}"

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"detail": message}, status=status, headers=headers)

    def add_routes(self, app: web.Application) -> None:
        base = r"/{ns:(?:(?:workflows|comfy)/)?}{owner:[^/_.][^/]*}/{app}/requests/{id}"
        app.router.add_get("/.well-known/jwks.json", self._jwks, name=JWKS)
        app.router.add_put(base + "/cancel", self._cancel, name=CANCEL)
        app.router.add_get(base + "/status/stream", self._status_stream, name=STATUS_STREAM)
        app.router.add_get(base + "/status", self._status, name=STATUS)
        app.router.add_get(base, self._result, name=RESULT)
        app.router.add_post(r"/{owner:[^/_.][^/]*}/{rest:.+}", self._submit, name=SUBMIT)

    def snapshot(self) -> dict[str, Any]:
        return {
            "fal_requests": {rid: {"app": r.app_path, "path": r.path, "status": r.state,
                                   "queue_position": r.queue_position if r.state == IN_QUEUE else None,
                                   "logs": len(r.logs), "error": r.error, "cancel_requested": r.cancel_requested,
                                   "canceled": r.canceled, "webhook": r.webhook, "headers": r.headers,
                                   "webhook_deliveries": r.webhook_deliveries}
                             for rid, r in self.requests.items()},
            "webhooks": self.webhooks,
        }

    async def inject(self, request: web.Request, target: str) -> web.Response | None:
        fault = await super().inject(request, target)
        if fault is not None and self.own.ingress_errors and fault.status in (502, 503, 504):
            reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
            page = _INGRESS_PAGE.format(status=fault.status, reason=reason[fault.status])
            return web.Response(text=page, status=fault.status, content_type="text/html")
        return fault

    async def stop(self) -> None:
        await super().stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- helpers --

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _urls(self, req: FalRequest, base: str) -> dict[str, str]:
        response_url = f"{base}/{req.app_path}/requests/{req.id}"
        return {"response_url": response_url, "status_url": f"{response_url}/status",
                "cancel_url": f"{response_url}/cancel"}

    def _find(self, request: web.Request) -> FalRequest | None:
        m = request.match_info
        req = self.requests.get(m["id"])
        if req is None or (req.namespace, req.owner, req.app) != (m["ns"], m["owner"], m["app"]):
            return None
        return req

    @staticmethod
    def _id_header(req: FalRequest) -> dict[str, str]:
        return {REQUEST_ID_HEADER: req.id}

    def status_body(self, req: FalRequest, base: str, *, logs: bool, since: int = 0) -> dict[str, Any]:
        """What ``/status`` answers (and each ``/status/stream`` event carries, with ``since`` for new logs)."""
        body: dict[str, Any] = {"status": req.state, "request_id": req.id, **self._urls(req, base)}
        if req.state == IN_QUEUE:
            body["queue_position"] = req.queue_position
        body["logs"] = req.logs[since:] if logs else None
        body["metrics"] = {"inference_time": req.inference_time} if req.state == COMPLETED else {}
        if req.state == COMPLETED and req.error is not None:
            body["error"] = req.error
        return body

    # -- the model --

    async def _wait_cancel(self, req: FalRequest, seconds: float) -> bool:
        """Sleeps ``seconds``; True (early) if the request was asked to cancel."""
        if not req.cancel_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(req.cancel_event.wait(), seconds)
        return req.cancel_event.is_set()

    async def _execute(self, req: FalRequest, queue_seconds: float, ahead: int) -> None:
        pause = queue_seconds / (ahead + 1) if queue_seconds > 0 else 0.0
        for position in range(ahead, -1, -1):
            if req.queue_position != position:
                req.queue_position = position
                req.touch()
            if await self._wait_cancel(req, pause):
                return self._finish(req, canceled=True)  # removed from the queue: it never ran
        req.state, req.started = IN_PROGRESS, time.monotonic()
        req.touch()
        for i, _ in enumerate(req.run.outputs()):
            if self.own.honor_cancel:
                if await self._wait_cancel(req, req.run.delay):
                    return self._finish(req, canceled=True)
            else:
                await asyncio.sleep(req.run.delay)
            req.logs.append({"message": f"step {i}", "level": "INFO", "source": "USER", "timestamp": _timestamp()})
            req.touch()
        if self.own.honor_cancel and req.cancel_event.is_set():
            return self._finish(req, canceled=True)
        self._finish(req)

    def _finish(self, req: FalRequest, *, canceled: bool = False) -> None:
        req.completed = time.monotonic()
        if canceled:
            req.canceled, req.error, req.result_status = True, CANCELLED, 400
            req.output = {"detail": CANCELLED}
        elif req.run.fail is not None:
            req.error, req.result_status, req.output = req.run.fail, req.fail_status, {"detail": req.run.fail}
        else:
            final = req.run.final
            req.output = final if isinstance(final, dict) else {"outputs": final}
        req.state = COMPLETED
        req.touch()
        if req.webhook:
            self._spawn(self._send_webhook(req))

    # -- webhooks --

    async def _send_webhook(self, req: FalRequest) -> None:
        s = self.own
        if self.rng.random() < s.webhook_drop_rate:
            self.webhooks.append({"request_id": req.id, "attempt": 0, "answer": "dropped"})
            return
        copies = 2 if self.rng.random() < s.webhook_repeat_rate else 1
        body: dict[str, Any] = {"request_id": req.id, "gateway_request_id": req.id}
        if req.result_status < 400:
            body.update(status="OK", payload=req.output)
        else:
            body.update(status="ERROR", error=f"Invalid status code: {req.result_status}", payload=req.output)
        data = json.dumps(body).encode()
        for _ in range(copies):
            await self._deliver(req, data)

    async def _deliver(self, req: FalRequest, data: bytes) -> None:
        s = self.own
        if self._session is None:
            self._session = aiohttp.ClientSession()
        delay = s.webhook_retry_seconds
        for attempt in range(1, s.webhook_retries + 2):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "fal-webhook (fake)",
                       "X-Fal-Webhook-Request-Id": req.id, "X-Fal-Webhook-User-Id": WEBHOOK_USER_ID,
                       "X-Fal-Webhook-Timestamp": timestamp,
                       "X-Fal-Webhook-Signature": sign_webhook(self.webhook_key, req.id, WEBHOOK_USER_ID, timestamp,
                                                               data)}
            answer: int | str
            try:
                async with self._session.post(req.webhook, data=data, headers=headers,  # type: ignore[arg-type]
                                              timeout=aiohttp.ClientTimeout(total=s.webhook_timeout)) as resp:
                    await resp.read()
                    answer = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer = type(exc).__name__
            self.webhooks.append({"request_id": req.id, "attempt": attempt, "answer": answer})
            if isinstance(answer, int) and 200 <= answer < 300:
                req.webhook_deliveries += 1
                return
            if attempt <= s.webhook_retries:
                await asyncio.sleep(delay)
                delay *= 2

    # -- routes --

    async def _jwks(self, request: web.Request) -> web.Response:
        raw = self.webhook_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return web.json_response({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "fake-fal", "use": "sig"}]})

    async def _submit(self, request: web.Request) -> web.Response:
        parts = [request.match_info["owner"], *request.match_info["rest"].split("/")]
        namespace = ""
        if parts[0] in NAMESPACES and len(parts) >= 3:
            namespace, parts = f"{parts[0]}/", parts[1:]
        owner, app, path = parts[0], parts[1], "/".join(parts[2:]) or None
        raw = await request.read()
        try:
            inputs = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return self.error(400, "Request body is not valid JSON")
        run = ScriptedRun.of(inputs)
        fail_status = self.own.fail_status
        if isinstance(inputs, dict) and isinstance(inputs.get("fail_status"), int):
            fail_status = inputs["fail_status"]
        seen = {k: v for k, v in request.headers.items() if k.lower().startswith("x-fal-") or k.lower() == "user-agent"}
        req = FalRequest(id=str(uuid.uuid4()), namespace=namespace, owner=owner, app=app, path=path, input=inputs,
                         run=run, fail_status=fail_status, webhook=request.query.get("fal_webhook") or None,
                         headers=seen, queue_position=max(0, self.own.queue_ahead))
        self.requests[req.id] = req
        self.stats.creates[req.id] += 1
        self._spawn(self._execute(req, max(0.0, self.own.queue_seconds), req.queue_position))
        body = {"status": IN_QUEUE, "request_id": req.id, "gateway_request_id": req.id,
                "queue_position": req.queue_position, **self._urls(req, self._base(request))}
        return web.json_response(body, headers=self._id_header(req))

    async def _status(self, request: web.Request) -> web.Response:
        req = self._find(request)
        if req is None:
            return self.error(404, "Request not found")
        body = self.status_body(req, self._base(request), logs=_truthy(request.query.get("logs")))
        return web.json_response(body, status=200 if req.state == COMPLETED else 202, headers=self._id_header(req))

    async def _status_stream(self, request: web.Request) -> web.StreamResponse:
        req = self._find(request)
        if req is None:
            return self.error(404, "Request not found")
        logs = _truthy(request.query.get("logs"))
        base = self._base(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               **self._id_header(req)})
        await response.prepare(request)
        left = self.stream_events_left()
        sent, cursor, last = 0, 0, None
        try:
            while True:
                if left is not None and sent >= left:
                    self.stats.faults["stream_cut"] += 1
                    break  # cut: the stream ends without its COMPLETED event
                changed = req.changed
                body = self.status_body(req, base, logs=logs, since=cursor)
                key = (req.state, body.get("queue_position"), len(req.logs) if logs else 0)
                if key != last:
                    await response.write(f"data: {json.dumps(body)}\n\n".encode())
                    sent, last = sent + 1, key
                    cursor = len(req.logs)
                if req.state == COMPLETED:
                    break
                await changed.wait()
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    async def _result(self, request: web.Request) -> web.Response:
        req = self._find(request)
        if req is None:
            return self.error(404, "Request not found")
        if req.state != COMPLETED:
            return self.error(400, STILL_RUNNING, headers=self._id_header(req))
        return web.json_response(req.output, status=req.result_status, headers=self._id_header(req))

    async def _cancel(self, request: web.Request) -> web.Response:
        req = self._find(request)
        if req is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        if req.state == COMPLETED:
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400, headers=self._id_header(req))
        req.cancel_requested = True
        req.cancel_event.set()
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202, headers=self._id_header(req))


def main(argv: list[str] | None = None) -> None:
    serve_main(lambda args: FakeFal(**fake_args(args)), argv, "python -m harness.fakes.fal",
               (__doc__ or "").split("\n")[0])


if __name__ == "__main__":
    main()
