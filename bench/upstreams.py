"""Section ``upstreams``: the hosted profiles that push (Replicate's SSE stream, fal's status stream,
RunPod's /stream long poll), followed once for every watcher, against the same job polled every second
by each party, as the providers' own clients do.

Each provider's faithful fake (harness/fakes) runs in this process; a job yields ``steps`` outputs
``delay`` s apart. Reported per profile, for W = 1 and W = 100 parties: upstream requests per job (every
request the fake counted while the job ran), and the delay from the upstream job's completion (the
fake's own clock) to each party learning of it (median; the worst in the note).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import GatewayServer, Row, abba

NAME = "upstreams"
TOKEN = "bench-token"


@dataclass(frozen=True)
class Config:
    rounds: int = 5
    steps: int = 4
    delay: float = 0.4
    watchers: tuple[int, ...] = (1, 100)
    profiles: tuple[str, ...] = ("replicate", "fal", "runpod", "cog")


FULL = Config()
QUICK = Config(rounds=1, steps=2, delay=0.2, watchers=(1, 20))


def _log(message: str) -> None:
    print(f"[upstreams] {message}", file=sys.stderr, flush=True)


def _fake(profile: str) -> Any:
    if profile == "replicate":
        from harness.fakes.replicate import FakeReplicate

        return FakeReplicate(token=TOKEN)
    if profile == "fal":
        from harness.fakes.fal import FakeFal

        return FakeFal(token=TOKEN)
    from harness.fakes.runpod import FakeRunPod

    return FakeRunPod(token=TOKEN)


_ROUTE = {"replicate": 'model = "acme/streamer"\n', "fal": 'model = "acme/app"\n', "runpod": 'endpoint_id = "ep1"\n'}


def _completed(fake: Any, profile: str) -> float:
    """The last job's completion, on time.monotonic()."""
    if profile == "replicate":  # (each fake's dict keeps its jobs in creation order)
        return float(time.monotonic() - (time.time() - list(fake.predictions.values())[-1].completed))
    if profile == "fal":
        return float(list(fake.requests.values())[-1].completed)
    return float(list(fake.jobs.values())[-1].ended)


def _requests(fake: Any) -> int:
    return sum(fake.stats.requests.values())


async def _polling(fake: Any, profile: str, inputs: dict[str, Any], watchers: int) -> list[float]:
    """One create, then each party polls the status every second until the job ends (and reads the result)."""
    import aiohttp

    auth = {"Authorization": f"Key {TOKEN}" if profile == "fal" else f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        if profile == "replicate":
            async with session.post(f"{fake.url}/v1/models/acme/streamer/predictions", json={"input": inputs}) as r:
                status_url, result_url = (await r.json())["urls"]["get"], None
        elif profile == "fal":
            async with session.post(f"{fake.url}/acme/app", json=inputs) as r:
                body = await r.json()
                status_url, result_url = body["status_url"], body["response_url"]
        else:
            async with session.post(f"{fake.url}/ep1/run", json={"input": inputs}) as r:
                status_url, result_url = f"{fake.url}/ep1/status/{(await r.json())['id']}", None

        async def party() -> float:
            while True:
                async with session.get(status_url) as r:
                    status = (await r.json()).get("status")
                if status in ("succeeded", "failed", "canceled", "aborted", "COMPLETED", "FAILED", "CANCELLED",
                              "TIMED_OUT"):
                    break
                await asyncio.sleep(1.0)
            if result_url:
                async with session.get(result_url) as r:
                    await r.read()
            return time.monotonic()

        return list(await asyncio.gather(*(party() for _ in range(watchers))))


async def _gateway(target: str, inputs: dict[str, Any], watchers: int) -> list[float]:
    import grpc
    from inferencegateway.gateway.v1 import gateway_pb2 as pb
    from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, watchers // 25))]
    try:
        stubs = [pb_grpc.GatewayServiceStub(c) for c in channels]
        request = pb.SubmitRequest(route="up")
        request.inputs.update(inputs)
        job = (await stubs[0].Submit(request)).job

        async def party(i: int) -> float:
            async for response in stubs[i % len(stubs)].Watch(pb.WatchRequest(job_id=job.id)):
                if response.HasField("update") and response.update.job.done:
                    return time.monotonic()
            raise RuntimeError("the stream ended before the job did")

        return list(await asyncio.gather(*(party(i) for i in range(watchers))))
    finally:
        for channel in channels:
            await channel.close()


async def _profile(cfg: Config, profile: str) -> list[Row]:
    rows: list[Row] = []
    inputs = {"steps": cfg.steps, "delay": cfg.delay}
    async with _fake(profile) as fake:
        config = f'[routes.up]\nbackend = "{profile}"\nurl = "{fake.url}"\ntoken = "{TOKEN}"\n' + _ROUTE[profile]
        with GatewayServer(config) as gateway:
            for watchers in cfg.watchers:
                figures: dict[str, dict[str, list[float]]] = {
                    "gateway": {"requests": [], "delay": []}, "polling": {"requests": [], "delay": []}}
                for r in range(cfg.rounds):
                    for name in abba(("gateway", "polling"), r):
                        before = _requests(fake)
                        if name == "gateway":
                            done = await _gateway(gateway.target, inputs, watchers)
                        else:
                            done = await _polling(fake, profile, inputs, watchers)
                        completed = _completed(fake, profile)
                        figures[name]["requests"].append(_requests(fake) - before)
                        figures[name]["delay"].extend(t - completed for t in done)
                gw, poll = figures["gateway"], figures["polling"]
                _log(f"{profile}, {watchers} watchers: requests {gw['requests']} vs {poll['requests']}")
                plural = "s" if watchers > 1 else ""
                rows.append(Row(f"{profile}: upstream requests per job, {watchers} watcher{plural}", "requests",
                                statistics.median(gw["requests"]), statistics.median(poll["requests"]),
                                raw={"gateway": gw["requests"], "polling_1s": poll["requests"]}))
                q = statistics.quantiles
                rows.append(Row(
                    f"{profile}: delay to the watchers (p50), {watchers} watcher{plural}", "ms",
                    statistics.median(gw["delay"]) * 1000, statistics.median(poll["delay"]) * 1000,
                    note=(f"p99: gateway {q(gw['delay'], n=100)[-1] * 1000:.0f} ms, polling every 1 s "
                          f"{q(poll['delay'], n=100)[-1] * 1000:.0f} ms") if len(gw["delay"]) > 1 else "",
                    raw={"gateway_s": gw["delay"], "polling_1s_s": poll["delay"]},
                ))
    return rows


async def _cog(cfg: Config) -> list[Row]:
    """Cog pushes by webhook and has no status to poll: its own way to wait is one blocking
    ``POST /predictions`` per party (a prediction each: with one slot, the parties queue behind each
    other). The gateway's delay is counted from Cog's final webhook reaching a relay in front of it."""
    import tempfile
    from pathlib import Path

    import aiohttp

    from harness.cog_server import CogServer
    from harness.webhook_relay import RelayProcess

    rows: list[Row] = []
    inputs = {"steps": cfg.steps, "delay": cfg.delay}
    with tempfile.TemporaryDirectory(prefix="bench-cog-") as tmp:
        cog = CogServer("stream", Path(tmp)).start()
        relay = RelayProcess()
        try:
            config = (f'public_url = "{relay.url}"\n[routes.up]\nbackend = "cog"\nurl = "{cog.url}"\n')
            with GatewayServer(config, extra_args=["--http-listen", "127.0.0.1:0"]) as gateway:
                relay.control(target=f"http://{gateway.http}")
                for watchers in cfg.watchers:
                    requests: list[int] = []
                    delays: list[float] = []
                    for _ in range(cfg.rounds):
                        relay.control(reset_stats=True)
                        health_before = _cog_requests(gateway, cog)
                        done = await _gateway(gateway.target, inputs, watchers)
                        final_at = relay.stats()["final_at"][0]
                        requests.append(_cog_requests(gateway, cog) - health_before)
                        offset = time.time() - time.monotonic()
                        delays.extend(t + offset - final_at for t in done)
                    async with aiohttp.ClientSession() as session:  # the baseline: one party, its sync POST
                        started = time.monotonic()
                        async with session.post(f"{cog.url}/predictions", json={"input": inputs}) as r:
                            await r.read()
                        sync_seconds = time.monotonic() - started
                    plural = "s" if watchers > 1 else ""
                    rows.append(Row(f"cog: upstream requests per job, {watchers} watcher{plural}", "requests",
                                    statistics.median(requests), float(watchers),
                                    note="baseline: one blocking POST /predictions per party (a prediction each)",
                                    raw={"gateway": requests}))
                    q = statistics.quantiles
                    rows.append(Row(
                        f"cog: delay from Cog's final webhook to the watchers (p50), {watchers} watcher{plural}", "ms",
                        statistics.median(delays) * 1000, None,
                        note=(f"p99 {q(delays, n=100)[-1] * 1000:.0f} ms; one sync POST took {sync_seconds:.2f} s "
                              "for the same job") if len(delays) > 1 else "",
                        raw={"gateway_s": delays}))
        finally:
            relay.stop()
            cog.stop()
    return rows


def _cog_requests(gateway: Any, cog: Any) -> int:
    """The gateway's requests to the Cog server, from its own metrics (health checks included)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{gateway.http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    host = cog.url.split("//", 1)[1]
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_upstream_requests_total") and f'"{host}"' in line))


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    _log(f"jobs of {cfg.steps} outputs {cfg.delay} s apart; the gateway's routes at their defaults")

    async def all_profiles() -> list[Row]:
        rows: list[Row] = []
        for profile in cfg.profiles:
            rows += await (_cog(cfg) if profile == "cog" else _profile(cfg, profile))
        return rows

    return asyncio.run(all_profiles())
