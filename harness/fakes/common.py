"""What the hosted-provider fakes (Replicate, fal, RunPod) share: the scripted model they all run, the
fault plan and its injection, the test-only control and stats routes, TLS, and the subprocess entry.

The scripted model reads its input (every fake runs the same one, so a test reads the same for each):

- ``steps`` (int, default 3) outputs, one every ``delay`` seconds (default 0.1), each ``prefix`` + its
  index (``prefix`` default ``"tok"``), with one log line ``step <i>`` per step;
- ``fail`` (str): after the steps, the prediction fails with this error message;
- ``audio`` (anything): the output is ``{"text": TRANSCRIPTION}`` once the steps are done (a Whisper model).

A fake is driven like FakeOctoAI: ``configure(**settings)`` in process, ``POST /_control`` (JSON of the
same names, plus ``reset_stats``) from another process; ``GET /_stats`` answers the counters. Neither
route is faulted or authenticated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import socket
import ssl
import struct
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from harness.process import start_serving, stop_process

__all__ = ["TOKEN", "TRANSCRIPTION", "FakeProcess", "FakeServer", "Faults", "Reset", "ScriptedRun", "reset_connection",
           "serve_main"]

TOKEN = "upstream-secret"
TRANSCRIPTION = " She sells seashells by the seashore."


@dataclass
class ScriptedRun:
    """What the scripted model does with one input."""

    steps: int = 3
    delay: float = 0.1
    prefix: str = "tok"
    fail: str | None = None
    audio: bool = False

    @classmethod
    def of(cls, inputs: Any) -> ScriptedRun:
        inputs = inputs if isinstance(inputs, dict) else {}
        fail = inputs.get("fail")
        return cls(steps=max(0, int(inputs.get("steps", 3))), delay=max(0.0, float(inputs.get("delay", 0.1))),
                   prefix=str(inputs.get("prefix", "tok")), fail=str(fail) if fail is not None else None,
                   audio="audio" in inputs)

    def outputs(self) -> Iterator[str]:
        for i in range(self.steps):
            yield f"{self.prefix}{i}"

    @property
    def final(self) -> Any:
        """The whole output of a run that succeeded."""
        return {"text": TRANSCRIPTION} if self.audio else list(self.outputs())


@dataclass
class Faults:
    """What goes wrong, switchable at run time. One RNG draw per faultable request picks among reset,
    5xx and 429 (rates add up to at most 1); a slow answer is a second draw and combines with them."""

    fail_rate: float = 0.0
    fail_statuses: tuple[int, ...] = (500, 502, 503)
    throttle_rate: float = 0.0
    retry_after: int = 1
    reset_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    targets: frozenset[str] = frozenset()  # route names the random faults apply to; empty: every faultable route
    max_faults: int | None = None          # no more random faults after this many
    stream_cut_after: int | None = None    # an event stream is closed after this many events (then, each time)
    bad_token: bool = False                # 401 to everything
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"], out["fail_statuses"] = sorted(self.targets), list(self.fail_statuses)
        return out


def coerce(obj: Any, key: str, value: Any) -> Any:
    """``value`` as the type of ``obj.key`` (sets from lists, tuples of ints, optional fields as given)."""
    current = getattr(obj, key)
    if isinstance(current, frozenset):
        return frozenset([value] if isinstance(value, str) else value)
    if isinstance(current, tuple):
        return tuple(int(v) for v in value)
    if value is None or current is None:
        return value
    return type(current)(value)


class Reset(Exception):
    """The connection was reset on purpose: nothing is to be answered."""


def reset_connection(request: web.Request) -> None:
    """Drops the connection with a TCP RST (raises Reset)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise Reset


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)   # per route name, answered or faulted
    creates: Counter[str] = field(default_factory=Counter)    # predictions created, per the caller's idempotency key or id
    faults: Counter[str] = field(default_factory=Counter)
    authorization: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "creates": dict(self.creates), "faults": dict(self.faults),
                "authorization": dict(self.authorization), "total_creates": sum(self.creates.values())}


class FakeServer:
    """The base of a provider fake: an aiohttp app with auth, faults, /_control and /_stats.

    A subclass sets ``name`` and implements ``add_routes(app)`` (naming each route, for faults and
    stats), ``authorized(request)``, ``error(status, message)`` (the provider's error body) and may add
    ``settings`` (a dataclass of timing knobs, configurable like faults).
    """

    name = "fake"

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None, faults: Faults | None = None) -> None:
        self.token = token
        self.host, self.port, self.tls = host, port, tls
        self.faults = faults or Faults()
        self.rng = random.Random(self.faults.seed)
        self.stats = Stats()
        self.url = ""
        self._runner: web.AppRunner | None = None

    # -- to implement --

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"detail": message}, status=status, headers=headers)

    def settings(self) -> Any:
        """A dataclass of the fake's own knobs (timing), configurable by name; None: none."""
        return None

    def snapshot(self) -> dict[str, Any]:
        """Extra state for /_stats (the fake's jobs)."""
        return {}

    # -- lifecycle --

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self._middleware])
        self.add_routes(app)
        app.router.add_get("/_stats", self._stats)
        app.router.add_route("*", "/_control", self._control)
        return app

    async def start(self) -> FakeServer:
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- run-time switches --

    def configure(self, **changes: Any) -> dict[str, Any]:
        if changes.pop("reset_stats", False):
            self.stats = Stats()
        if "token" in changes:
            self.token = changes.pop("token") or None
        own = self.settings()
        fault_names = {f.name for f in dataclasses.fields(Faults)}
        own_names = {f.name for f in dataclasses.fields(own)} if own is not None else set()
        unknown = set(changes) - fault_names - own_names
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for key, value in changes.items():
            target = self.faults if key in fault_names else own
            setattr(target, key, coerce(target, key, value))
        if "seed" in changes:
            self.rng.seed(self.faults.seed)
        return self.config()

    def config(self) -> dict[str, Any]:
        own = self.settings()
        settings = dataclasses.asdict(own) if own is not None else {}
        settings = {k: sorted(v) if isinstance(v, frozenset | set) else v for k, v in settings.items()}
        return {"faults": self.faults.to_json(), "settings": settings, "token_required": bool(self.token)}

    # -- faults --

    async def inject(self, request: web.Request, target: str) -> web.Response | None:
        """A random fault for this route: an error answer, a reset (raises Reset), a delay, or None."""
        f = self.faults
        aimed = not f.targets or target in f.targets
        if aimed and f.slow_seconds > 0 and f.slow_rate > 0 and self.rng.random() < f.slow_rate:
            self.stats.faults["slow"] += 1
            await asyncio.sleep(f.slow_seconds)
        random_faults = self.stats.faults["error"] + self.stats.faults["throttle"] + self.stats.faults["reset"]
        if not aimed or (f.max_faults is not None and random_faults >= f.max_faults):
            return None
        if f.reset_rate <= 0 and f.fail_rate <= 0 and f.throttle_rate <= 0:
            return None
        draw = self.rng.random()
        if draw < f.reset_rate:
            self.stats.faults["reset"] += 1
            reset_connection(request)
        draw -= f.reset_rate
        if draw < f.fail_rate:
            status = self.rng.choice(f.fail_statuses)
            self.stats.faults["error"] += 1
            return self.error(status, f"injected {status} on {target}")
        draw -= f.fail_rate
        if draw < f.throttle_rate:
            self.stats.faults["throttle"] += 1
            return self.error(429, "Too many requests: slow down", headers={"Retry-After": str(f.retry_after)})
        return None

    def stream_events_left(self) -> int | None:
        """How many events an event stream may send before it is cut (None: no cut)."""
        return self.faults.stream_cut_after

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await handler(request)
        target = request.match_info.route.name or ""
        self.stats.requests[target] += 1
        self.stats.authorization[request.headers.get("Authorization", "")] += 1
        try:
            if self.faults.bad_token:
                self.stats.faults["bad_token"] += 1
                return self.error(401, "Invalid token")
            if self.token and not self.authorized(request):
                return self.error(401, "Unauthenticated: missing or invalid token")
            if (fault := await self.inject(request, target)) is not None:
                return fault
            return await handler(request)
        except Reset:
            raise asyncio.CancelledError from None
        except web.HTTPException as exc:
            return self.error(exc.status, exc.reason)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats.to_json(), **self.snapshot()})

    async def _control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("a JSON object of settings")
                return web.json_response(self.configure(**changes))
            except (ValueError, TypeError) as exc:
                return web.json_response({"detail": str(exc)}, status=400)
        return web.json_response(self.config())


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def serve_main(make: Callable[[argparse.Namespace], FakeServer], argv: list[str] | None, prog: str,
               description: str) -> None:
    """The subprocess entry: ``python -m harness.fakes.X --port 0 [--token T] [--tls-cert C --tls-key K]
    [--settings JSON]`` prints ``{"event": "serving", "url": ...}`` once it accepts connections."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None)
    parser.add_argument("--tls-cert", type=Path, default=None)
    parser.add_argument("--tls-key", type=Path, default=None)
    parser.add_argument("--settings", default=None, help="JSON object, as for POST /_control")
    args = parser.parse_args(argv)

    async def serve() -> None:
        fake = make(args)
        if args.settings:
            fake.configure(**json.loads(args.settings))
        await fake.start()
        print(json.dumps({"event": "serving", "url": fake.url}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def fake_args(args: argparse.Namespace) -> dict[str, Any]:
    """The FakeServer keyword arguments that ``serve_main``'s flags give."""
    tls = server_tls(args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None
    return {"token": args.token, "host": args.host, "port": args.port, "tls": tls}


class FakeProcess:
    """A fake as a subprocess (``python -m <module>``), driven over /_control and /_stats."""

    def __init__(self, module: str, *args: str, ca_file: Path | None = None) -> None:
        self.proc, event, _ = start_serving([sys.executable, "-m", module, "--port", "0", *args],
                                            what=module, timeout=30, die_with_parent=False)
        self.url: str = event["url"]
        self._context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    def _open(self, request: urllib.request.Request | str) -> Any:
        with urllib.request.urlopen(request, timeout=10, context=self._context) as resp:
            return json.load(resp)

    def control(self, **changes: Any) -> dict[str, Any]:
        return self._open(urllib.request.Request(f"{self.url}/_control", data=json.dumps(changes).encode(),
                                                 method="POST", headers={"Content-Type": "application/json"}))

    def stats(self) -> dict[str, Any]:
        return self._open(f"{self.url}/_stats")

    def stop(self) -> None:
        stop_process(self.proc)
