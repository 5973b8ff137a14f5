"""Section ``octoai``: the gateway polling an upstream once for everyone, against the seed's 1 s loop.

An upstream job (the faithful fake of harness/fakes/octoai.py, in this process) stays pending, then
running, then completes; its durations are drawn per round, the same for both ways. W parties want its result:
- the seed's way: one POSTs it (``infer_async``), and each of the W loops
  ``while not is_future_ready(f): time.sleep(1)`` then ``get_future_result(f)`` (the same HTTP requests
  as octoai-sdk: GET poll_url, then GET poll_url + GET response_url);
- the gateway's way: one Submit to an ``octoai`` route, W Watch streams on the job.
Reported for W = 1 and W = 100: upstream requests per job (POST + polls + result fetches, counted by
the upstream) and the notification delay (from the moment the upstream job completed to each party
learning of it; the median and the worst over parties and rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import GatewayServer, Row, abba

NAME = "octoai"


@dataclass(frozen=True)
class Config:
    rounds: int = 10
    pending_s: tuple[float, float] = (2.0, 4.0)  # drawn per round (the same for both ways), so that a
    running_s: tuple[float, float] = (1.0, 2.0)  # job never lasts a whole number of the loop's seconds
    watchers: tuple[int, ...] = (1, 100)


FULL = Config()
QUICK = Config(rounds=1, pending_s=(1.0, 1.5), running_s=(0.3, 0.6))


def _log(message: str) -> None:
    print(f"[octoai] {message}", file=sys.stderr, flush=True)


def _completed_at(fake: Any, upstream_id: str) -> float:
    job = fake.jobs[upstream_id]
    return float(job.created + job.pending_seconds + job.running_seconds)


def _requests(fake: Any, upstream_id: str, posts: int = 1) -> int:
    return posts + fake.stats.polls[upstream_id] + fake.stats.result_fetches[upstream_id]


async def _seed_loop(fake: Any, watchers: int) -> tuple[int, list[float]]:
    """The seed's snippet, W times over one future: requests for the job, and each party's delay."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        async with session.post(f"{fake.url}/predict", json={"seed": True}, headers={"X-OctoAI-Async": "1"}) as r:
            future = await r.json()
        poll_url = future["poll_url"]

        async def party() -> float:
            while True:  # while not client.is_future_ready(future): time.sleep(1)
                async with session.get(poll_url) as r:
                    if (await r.json())["status"] == "completed":
                        break
                await asyncio.sleep(1.0)
            async with session.get(poll_url) as r:  # client.get_future_result(future)
                response_url = (await r.json())["response_url"]
            async with session.get(response_url) as r:
                await r.json()
            return time.monotonic()

        done = await asyncio.gather(*(party() for _ in range(watchers)))
    upstream_id = future["response_id"]
    completed = _completed_at(fake, upstream_id)
    return _requests(fake, upstream_id), [t - completed for t in done]


async def _gateway(fake: Any, target: str, watchers: int) -> tuple[int, list[float]]:
    import grpc
    from inferencegateway.gateway.v1 import gateway_pb2 as pb
    from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

    before = set(fake.jobs)
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, watchers // 25))]
    try:
        stubs = [pb_grpc.GatewayServiceStub(c) for c in channels]
        request = pb.SubmitRequest(route="upstream")
        request.inputs.update({"gateway": True})
        job = (await stubs[0].Submit(request)).job

        async def party(i: int) -> float:
            async for response in stubs[i % len(stubs)].Watch(pb.WatchRequest(job_id=job.id)):
                if response.HasField("update") and response.update.job.state == pb.JOB_STATE_SUCCEEDED:
                    return time.monotonic()
            raise RuntimeError("the stream ended before the job succeeded")

        done = await asyncio.gather(*(party(i) for i in range(watchers)))
    finally:
        for channel in channels:
            await channel.close()
    (upstream_id,) = set(fake.jobs) - before
    completed = _completed_at(fake, upstream_id)
    return _requests(fake, upstream_id), [t - completed for t in done]


async def _run(cfg: Config) -> list[Row]:
    from harness.fakes.octoai import FakeOctoAI

    rows: list[Row] = []
    rng = random.Random(42)
    async with FakeOctoAI() as fake:
        config = f'[routes.upstream]\nbackend = "octoai"\nendpoint = "{fake.url}/predict"\n'
        with GatewayServer(config) as gateway:
            for watchers in cfg.watchers:
                figures: dict[str, dict[str, list[float]]] = {
                    "gateway": {"requests": [], "delay": []}, "seed": {"requests": [], "delay": []},
                }
                for r in range(cfg.rounds):
                    fake.configure(pending_seconds=rng.uniform(*cfg.pending_s), running_seconds=rng.uniform(*cfg.running_s))
                    for name in abba(("gateway", "seed"), r):
                        if name == "gateway":
                            requests, delays = await _gateway(fake, gateway.target, watchers)
                        else:
                            requests, delays = await _seed_loop(fake, watchers)
                        figures[name]["requests"].append(requests)
                        figures[name]["delay"].extend(delays)
                        _log(f"{watchers} watchers, {name}: {requests} requests, "
                             f"delay median {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms")
                gw, seed = figures["gateway"], figures["seed"]
                rows.append(Row(
                    f"upstream requests per job, {watchers} watcher{'s' if watchers > 1 else ''}", "requests",
                    statistics.median(gw["requests"]), statistics.median(seed["requests"]),
                    raw={"gateway": gw["requests"], "seed_loop": seed["requests"]},
                ))
                rows.append(Row(
                    f"notification delay (median), {watchers} watcher{'s' if watchers > 1 else ''}", "ms",
                    statistics.median(gw["delay"]) * 1000, statistics.median(seed["delay"]) * 1000,
                    note=f"worst: gateway {max(gw['delay']) * 1000:.0f} ms, 1 s loop {max(seed['delay']) * 1000:.0f} ms",
                    raw={"gateway_s": gw["delay"], "seed_loop_s": seed["delay"]},
                ))
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    _log(f"upstream jobs: pending {cfg.pending_s} s, running {cfg.running_s} s (drawn per round); "
         f"gateway route defaults (poll 0.2 s backing off to 0.5 s)")
    return asyncio.run(_run(cfg))
