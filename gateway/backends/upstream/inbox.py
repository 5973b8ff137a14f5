"""Webhooks from upstreams, to the process that runs each job: one URL per job, with a secret in it.

A provider that pushes by webhook (Cog always, which has no status to poll) is given
``<public_url>/v1/upstream/hooks/<job id>/<secret>``: the secret is made per job and kept in the job's
checkpoint, so a restarted gateway hands the same URL again, and only the provider that was given it
can post (Cog does not sign its webhooks). A delivery reaches any replica's HTTP face; the
:class:`Inbox` hands it to the job's mailbox in this process, or (the Redis store: several replicas)
publishes it on the job's own channel, to which the replica that runs the job subscribes.

The answer tells the provider whether to retry: 200 when a runner took the delivery, 404 when the job
is unknown or has ended (nothing to retry for), 503 when the job is waiting for a runner (it is being
resumed after a restart or taken over from a stopped replica): Cog retries a terminal webhook on 503,
and the runner that resumes the job gets it then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.tasks import cancel_and_wait

__all__ = ["HOOK_PATH", "Delivery", "Inbox", "Mailbox", "RedisInbox", "UpstreamHooks"]

log = logging.getLogger(__name__)

HOOK_PATH = "/v1/upstream/hooks"
_HEADERS = ("content-type", "webhook-id", "webhook-timestamp", "webhook-signature", "user-agent")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook as it came: the raw body and the headers a profile may check."""

    body: bytes
    headers: Mapping[str, str]


class Mailbox:
    def __init__(self, inbox: Inbox, job_id: str, secret: str, queue: asyncio.Queue[Any]) -> None:
        self.inbox, self.job_id, self.secret, self.queue = inbox, job_id, secret, queue

    async def close(self) -> None:
        await self.inbox.detach(self)


JobActive = Callable[[str], Awaitable[bool]]


class Inbox:
    """The mailboxes of the jobs this process runs (one process: SQLite)."""

    def __init__(self, job_active: JobActive, public_url: str = "") -> None:
        self.job_active = job_active
        self._mailboxes: dict[str, Mailbox] = {}
        self._base = public_url.rstrip("/")
        self._based = asyncio.Event()
        if self._base:
            self._based.set()
        self.expect_base = bool(self._base)  # a base will be known (public_url, or this process's HTTP face)
        self.deliveries = 0

    @property
    def available(self) -> bool:
        return self.expect_base

    def set_base(self, url: str) -> None:
        """The HTTP face's own address, when no public_url is set."""
        if not self._base:
            self._base = url.rstrip("/")
            self._based.set()

    async def url(self, job_id: str, secret: str) -> str:
        await self._based.wait()
        return f"{self._base}{HOOK_PATH}/{job_id}/{secret}"

    async def attach(self, job_id: str, secret: str, queue: asyncio.Queue[Any]) -> Mailbox:
        mailbox = Mailbox(self, job_id, secret, queue)
        self._mailboxes[job_id] = mailbox
        return mailbox

    async def detach(self, mailbox: Mailbox) -> None:
        if self._mailboxes.get(mailbox.job_id) is mailbox:
            del self._mailboxes[mailbox.job_id]

    def _local(self, job_id: str, secret: str, delivery: Delivery) -> bool | None:
        """True: taken here; False: the secret is wrong; None: not run here."""
        mailbox = self._mailboxes.get(job_id)
        if mailbox is None:
            return None
        if not hmac.compare_digest(mailbox.secret.encode(), secret.encode()):
            return False
        self.deliveries += 1
        mailbox.queue.put_nowait(delivery)
        return True

    async def _remote(self, job_id: str, secret: str, delivery: Delivery) -> bool:
        return False

    async def deliver(self, job_id: str, secret: str, delivery: Delivery) -> int:
        """The HTTP status to answer the provider with."""
        taken = self._local(job_id, secret, delivery)
        if taken is None and await self._remote(job_id, secret, delivery):
            taken = True
        if taken:
            return 200
        if taken is False or not await self.job_active(job_id):
            return 404
        return 503

    async def close(self) -> None:
        self._mailboxes.clear()


class RedisInbox(Inbox):
    """Mailboxes across replicas: a job's runner subscribes to ``<prefix>hook:<job id>``; a replica that
    receives its webhook and does not run it publishes it there (PUBLISH says whether anyone listens)."""

    def __init__(self, job_active: JobActive, url: str, public_url: str = "", prefix: str = "gw:") -> None:
        super().__init__(job_active, public_url)
        self.url_ = url
        self.prefix = prefix
        self._redis: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()  # the subscription's connection is up (set once)
        # redis-py's PubSub is not safe for concurrent (un)subscribes: the first ones would each open
        # a connection. One at a time; the reader reads on its own.
        self._lock = asyncio.Lock()

    def _channel(self, job_id: str) -> str:
        return f"{self.prefix}hook:{job_id}"

    async def _open(self) -> None:
        if self._redis is None:
            from gateway.redis.conn import pool

            self._redis = pool(self.url_, 16)
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._reader = asyncio.create_task(self._read(), name="upstream-hooks")

    async def attach(self, job_id: str, secret: str, queue: asyncio.Queue[Any]) -> Mailbox:
        mailbox = await super().attach(job_id, secret, queue)
        await self._open()
        async with self._lock:
            await self._pubsub.subscribe(self._channel(job_id))
        self._connected.set()
        return mailbox

    async def detach(self, mailbox: Mailbox) -> None:
        await super().detach(mailbox)
        if self._pubsub is not None and mailbox.job_id not in self._mailboxes:
            with contextlib.suppress(Exception):
                async with self._lock:
                    await self._pubsub.unsubscribe(self._channel(mailbox.job_id))

    async def _remote(self, job_id: str, secret: str, delivery: Delivery) -> bool:
        await self._open()
        message = json.dumps({"secret": secret, "body": base64.b64encode(delivery.body).decode(),
                              "headers": dict(delivery.headers)})
        try:
            return int(await self._redis.publish(self._channel(job_id), message)) > 0
        except Exception as exc:
            log.warning("upstream hooks: publishing a webhook of job %s failed: %s", job_id, exc)
            return False

    async def _read(self) -> None:
        await self._connected.wait()
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("upstream hooks: the subscription broke (%s); again", exc)
                await asyncio.sleep(0.5)
                continue
            if not message or message.get("type") != "message":
                continue
            try:
                channel = message["channel"].decode()
                data = json.loads(message["data"])
                delivery = Delivery(base64.b64decode(data["body"]), data.get("headers") or {})
                self._local(channel[len(self.prefix) + 5:], str(data["secret"]), delivery)
            except Exception:
                log.exception("upstream hooks: a published webhook could not be read")

    async def close(self) -> None:
        await super().close()
        if self._reader is not None:
            await cancel_and_wait([self._reader])
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()


class UpstreamHooks:
    """The HTTP face's sub-app that takes upstream webhooks (no token: the URL's secret is the check)."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def routes(self) -> Iterable[Any]:
        from gateway.http.face import ANYONE, Route

        return [Route("POST", HOOK_PATH + "/{job_id}/{secret}", self.take, ANYONE)]

    async def take(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        headers = {k: request.headers[k] for k in _HEADERS if k in request.headers}
        status = await self.inbox.deliver(request.match_info["job_id"], request.match_info["secret"],
                                          Delivery(body, headers))
        headers_out = {"Retry-After": "2"} if status == 503 else None
        return web.json_response({"taken": status == 200}, status=status, headers=headers_out)
