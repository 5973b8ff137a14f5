"""Section ``webhooks``: completion webhooks against a caller's 1 s polling loop, same gateway, same round.

N echo jobs (their run times drawn per job, so that no job lasts a whole number of the loop's
seconds) are submitted at once, two ways, alternating rounds:
- with a webhook (``completed``) to a receiver in this process (aiohttp on 127.0.0.1), which
  verifies nothing (the tests do) and notes when each job's delivery arrived;
- without one, each followed by a caller that asks Get every second until the job is done (what
  hosted async APIs ask of their callers).
Reported: the delay from the job's finish (its finish_time, this machine's clock) to the caller
knowing (p50, p99), and the requests a job costs its caller (Get calls; the webhook's is none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import ECHO_CONFIG, GatewayServer, Row, abba, started
from harness.stats import percentile

NAME = "webhooks"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass(frozen=True)
class Config:
    rounds: int = 3
    jobs: int = 200
    run_s: tuple[float, float] = (0.3, 2.5)


FULL = Config()
QUICK = Config(rounds=1, jobs=40, run_s=(0.2, 1.2))


def _log(message: str) -> None:
    print(f"[{NAME}] {message}", file=sys.stderr, flush=True)


def _finish(job: dict[str, Any]) -> float:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(job["finishTime"])
    return stamp.ToNanoseconds() / 1e9


async def _round(target: str, url: str, arrived: dict[str, float], bodies: dict[str, dict[str, Any]],
                 way: str, delays: list[float]) -> dict[str, Any]:
    import grpc
    from google.protobuf import json_format, struct_pb2
    from inferencegateway.gateway.v1 import gateway_pb2 as pb
    from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)

        async def submit(delay: float) -> str:
            inputs = struct_pb2.Struct()
            inputs.update({"delay_ms": delay * 1000})
            request = pb.SubmitRequest(route="echo", inputs=inputs)
            if way == "webhook":
                request.webhook.url = url
            return (await stub.Submit(request, timeout=30)).job.id

        ids = await asyncio.gather(*(submit(d) for d in delays))
        gets = 0
        known: dict[str, float] = {}
        if way == "webhook":
            async with asyncio.timeout(120):
                while not all(i in arrived for i in ids):  # noqa: ASYNC110 (the receiver fills it)
                    await asyncio.sleep(0.01)
            late = [arrived[i] - _finish(bodies[i]) for i in ids]
        else:
            async def poll(job_id: str) -> None:
                nonlocal gets
                while True:
                    await asyncio.sleep(1.0)
                    gets += 1
                    job = (await stub.Get(pb.GetRequest(job_id=job_id), timeout=30)).job
                    if job.done:
                        known[job_id] = time.time()
                        bodies[job_id] = json_format.MessageToDict(job)
                        return

            await asyncio.gather(*(poll(i) for i in ids))
            late = [known[i] - _finish(bodies[i]) for i in ids]
    late.sort()
    return {"way": way, "p50_s": percentile(late, 0.5), "p99_s": percentile(late, 0.99), "requests_per_job": gets / len(ids)}


async def _run(cfg: Config) -> list[Row]:
    from aiohttp import web

    arrived: dict[str, float] = {}
    bodies: dict[str, dict[str, Any]] = {}

    async def receive(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        arrived[body["id"]] = time.time()
        bodies[body["id"]] = body
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/hook"
    config = ECHO_CONFIG + (f'[webhooks]\nallowed_prefixes = ["http://127.0.0.1:{port}/"]\n'
                            f'allowed_networks = ["127.0.0.1/32"]\nsecret = "{SECRET}"\n')
    results: dict[str, list[dict[str, Any]]] = {"webhook": [], "poll": []}
    rng = random.Random(7)
    try:
        with started(GatewayServer(config)) as (gateway,):
            for r in range(cfg.rounds):
                delays = [rng.uniform(*cfg.run_s) for _ in range(cfg.jobs)]
                for way in abba(("webhook", "poll"), r):
                    result = await _round(gateway.target, url, arrived, bodies, way, delays)
                    results[way].append(result)
                    _log(f"round {r + 1}/{cfg.rounds} {way}: p50 {result['p50_s'] * 1000:.0f} ms, "
                         f"p99 {result['p99_s'] * 1000:.0f} ms, {result['requests_per_job']:.1f} requests per job")
    finally:
        await runner.cleanup()

    def med(way: str, key: str) -> float:
        values = sorted(x[key] for x in results[way])
        return values[len(values) // 2]

    raw = {"rounds": results, "jobs_per_round": cfg.jobs, "run_s": cfg.run_s}
    return [
        Row(f"Completion to caller p50 ({cfg.jobs} jobs at once), webhook vs 1 s Get loop", "ms",
            med("webhook", "p50_s") * 1000, med("poll", "p50_s") * 1000, raw=raw),
        Row(f"Completion to caller p99 ({cfg.jobs} jobs at once), webhook vs 1 s Get loop", "ms",
            med("webhook", "p99_s") * 1000, med("poll", "p99_s") * 1000),
        Row("Requests a job costs its caller after Submit", "requests", 0.0, med("poll", "requests_per_job"),
            note="the webhook's caller makes none: the gateway calls it"),
    ]


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    return asyncio.run(_run(cfg))
