"""Connections to Redis: the redis-py pool of the engine's ordinary commands (``pool``), and one
connection spoken to directly (``RespConnection``) for the hot paths: the store's writer (a pipeline
of scripts per batch), the work queue's blocking read and the event bus's subscription. On those,
commands are packed and replies parsed by hiredis (C), without redis-py's per-command machinery
(connection pool, callbacks, encoders), which cost more CPU than Redis itself per job.

Errors look as redis-py's do: an error reply is the redis-py exception for its prefix (NOSCRIPT,
OOM, READONLY...), returned in place (a pipeline goes on past it); a lost connection raises redis-py's
ConnectionError. URLs are read by redis-py's own parser, with its meaning: ``redis://`` (host, port,
db, user, password), ``rediss://`` (TLS, its ``ssl_*`` parameters made into a context by redis-py's
own code, so the certificate checks are the same), ``unix://PATH?db=N``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RespConnection", "pool", "supported"]

_READ = 256 * 1024
CONNECT_TIMEOUT_SECONDS = 10.0


def supported(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss", "unix")


def pool(url: str, max_connections: int) -> aioredis.Redis:
    """A redis-py client on a blocking pool: a burst of commands waits for a connection instead of
    failing, and a command that meets a lost connection is retried with backoff (up to 2 s apart)."""
    connections = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis(connection_pool=connections)


class RespConnection:
    """Not shared: one user at a time (the writer, the queue's fetch loop, the bus)."""

    def __init__(self, url: str, timeout: float | None = 30.0) -> None:
        """``timeout``: how long one ``execute`` may wait for its replies before the connection is given
        up (RedisTimeoutError): a Redis that went silent (a failover, a partition) is noticed, and the
        caller's retry reconnects (the store's scripts recognise a write they already applied)."""
        self.timeout = timeout
        if not supported(url):
            raise ValueError(f"{urlsplit(url).scheme}:// is not a Redis URL")
        options = parse_url(url)
        kind = options.pop("connection_class", None)
        self.path: str | None = options.get("path") if kind is UnixDomainSocketConnection else None
        self.host = options.get("host") or "localhost"
        self.port = int(options.get("port") or 6379)
        self.username = options.get("username") or ""
        self.password = options.get("password") or ""
        self.db = int(options.get("db") or 0)
        # TLS: the context redis-py would make of the same URL (its ssl_* parameters and defaults).
        self.ssl: ssl.SSLContext | None = SSLConnection(**options).ssl_context.get() if kind is SSLConnection else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    @property
    def address(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        try:
            if self.path is not None:
                opening = asyncio.open_unix_connection(self.path, limit=_READ)
            else:
                opening = asyncio.open_connection(self.host, self.port, limit=_READ, ssl=self.ssl,
                                                  server_hostname=self.host if self.ssl is not None else None)
            reader, writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError: a refused certificate too
            raise RedisConnectionError(f"cannot connect to Redis at {self.address}: {exc}") from None
        self._reader, self._writer = reader, writer
        sock = writer.get_extra_info("socket")
        if sock is not None and self.path is None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._parser = hiredis.Reader()
        setup: list[tuple[Any, ...]] = []
        if self.password:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        for reply in await self.execute(setup) if setup else ():
            if isinstance(reply, Exception):
                self.close()
                raise reply

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def send(self, commands: Sequence[Sequence[Any]]) -> None:
        if self._writer is None:
            raise RedisConnectionError("not connected")
        self._writer.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))

    async def read(self) -> Any:
        """The next reply (an error reply as its redis-py exception, returned, not raised)."""
        while True:
            reply = self._parser.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    return BaseParser.parse_error(str(reply))
                return reply
            if self._reader is None:
                raise RedisConnectionError("not connected")
            try:
                chunk = await self._reader.read(_READ)
            except OSError as exc:
                self.close()
                raise RedisConnectionError(f"Redis connection lost: {exc}") from None
            if not chunk:
                self.close()
                raise RedisConnectionError("Redis closed the connection")
            self._parser.feed(chunk)

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Sends the commands in one write and answers their replies, in order (a pipeline)."""
        self.send(commands)
        try:
            async with asyncio.timeout(self.timeout):
                return [await self.read() for _ in commands]
        except TimeoutError:
            self.close()
            raise RedisTimeoutError(f"no answer from Redis at {self.address} within {self.timeout:g} s") from None
        except asyncio.CancelledError:
            self.close()  # replies still due would be read as the next command's
            raise
