"""A webhook relay with faults, between a provider that cannot be made to misbehave (a real Cog server)
and the gateway: it forwards each POST to the same path on its target, and loses, repeats, delays
(so reorders) or refuses deliveries as told.

    python -m harness.webhook_relay --port 0 --settings '{"drop_rate": 0.5}'

prints ``{"event": "serving", "url": ...}``; ``POST /_control`` sets ``target`` (the gateway's HTTP base)
and the fault settings below; ``GET /_stats`` answers the counters.

A delivery is final when its JSON body's ``status`` is one of ``final_statuses``. Faults on non-final
deliveries: ``drop_rate`` (answered 200, not forwarded), ``repeat_rate`` (forwarded twice),
``delay_max_seconds`` (forwarded after a random delay, in the background: out of order). On final
ones: the first ``fail_final_first`` are answered 500 unforwarded (a provider that retries sends them
again); ``repeat_rate`` applies too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
import urllib.request
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from harness.process import start_serving, stop_process

__all__ = ["RelayProcess"]

FINAL = ("succeeded", "failed", "canceled", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class Relay:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings: dict[str, Any] = {"target": "", "drop_rate": 0.0, "repeat_rate": 0.0, "delay_max_seconds": 0.0,
                                         "fail_final_first": 0, "final_statuses": list(FINAL), "seed": 0}
        self.settings.update(settings)
        self.rng = random.Random(self.settings["seed"])
        self.stats: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.background: set[asyncio.Task[None]] = set()
        self.final_at: list[float] = []  # when each final delivery arrived (wall clock)

    async def forward(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        assert self.session is not None
        try:
            async with self.session.post(self.settings["target"].rstrip("/") + path, data=body, headers=headers) as r:
                self.stats[f"forwarded:{r.status}"] += 1
                return r.status
        except aiohttp.ClientError:
            self.stats["forward_error"] += 1
            return 502

    async def later(self, delay: float, path: str, body: bytes, headers: dict[str, str]) -> None:
        await asyncio.sleep(delay)
        await self.forward(path, body, headers)

    async def take(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "user-agent")}
        s = self.settings
        try:
            status = json.loads(body).get("status")
        except (ValueError, AttributeError):
            status = None
        final = status in s["final_statuses"]
        self.stats["received"] += 1
        copies = 2 if self.rng.random() < s["repeat_rate"] else 1
        if final:
            self.stats["final"] += 1
            self.final_at.append(time.time())
            if self.stats["final"] <= s["fail_final_first"]:
                self.stats["final_refused"] += 1
                return web.json_response({"relay": "refused"}, status=500)
            answer = 200
            for _ in range(copies):
                answer = await self.forward(request.path, body, headers)
            return web.json_response({"relay": "forwarded"}, status=answer)
        if self.rng.random() < s["drop_rate"]:
            self.stats["dropped"] += 1
            return web.json_response({"relay": "dropped"})
        for _ in range(copies):
            delay = self.rng.uniform(0, s["delay_max_seconds"]) if s["delay_max_seconds"] else 0.0
            task = asyncio.create_task(self.later(delay, request.path, body, headers))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        return web.json_response({"relay": "queued"})

    async def control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            changes = await request.json()
            if "reset_stats" in changes:
                changes.pop("reset_stats")
                self.stats.clear()
                self.final_at.clear()
            self.settings.update(changes)
            if "seed" in changes:
                self.rng.seed(changes["seed"])
        return web.json_response(self.settings)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "final_at": self.final_at})


async def _serve(args: argparse.Namespace) -> None:
    relay = Relay(json.loads(args.settings) if args.settings else {})
    relay.session = aiohttp.ClientSession()
    app = web.Application()
    app.router.add_route("*", "/_control", relay.control)
    app.router.add_get("/_stats", relay.get_stats)
    app.router.add_post("/{tail:.*}", relay.take)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"event": "serving", "url": f"http://127.0.0.1:{port}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await relay.session.close()


class RelayProcess:
    def __init__(self, **settings: Any) -> None:
        self.proc, event, _ = start_serving([sys.executable, "-m", "harness.webhook_relay", "--port", "0",
                                             "--settings", json.dumps(settings)],
                                            what="the webhook relay", timeout=30, die_with_parent=False)
        self.url: str = event["url"]

    def control(self, **changes: Any) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/_control", data=json.dumps(changes).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.load(resp))

    def stats(self) -> dict[str, Any]:
        """The counters, and ``final_at``: when each final delivery arrived (time.time())."""
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=10) as resp:
            return dict(json.load(resp))

    def stop(self) -> None:
        stop_process(self.proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.webhook_relay", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--settings", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
