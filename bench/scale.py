"""Section ``scale``: the Redis store and shared queue against the embedded SQLite store, same run.

1. Submit throughput: echo jobs with no delay, closed-loop from one load process (bench/load.py's
   ``submit`` mode, every job checked SUCCEEDED after the window), against one gateway on SQLite and
   one on a Redis store (its own redis-server here, append-only, fsync every second), alternating
   rounds. Goal: Redis >= 0.7x SQLite.
2. Redis memory per queued job: an API replica without workers (``--workers 0``) takes N echo jobs
   (small JSON inputs) that nobody runs; Redis' used_memory before and after, per job.
3. A killed worker's job running again: a ``gateway worker`` runs a long echo job; it is killed
   (SIGKILL); the time until a second worker's first revision of the job (its lease taken over).
   Goal: within the lease + 2 s.
4. Push latency across replicas: 1,000 watchers (200 with --quick) on replica B of an echo job
   submitted through replica A (both ``--workers 0``) and run by a ``gateway worker`` process, from
   the job's finish time (the worker's clock, same machine) to each watcher's receipt of its terminal
   revision; against one SQLite gateway running the job itself (the core section's figure),
   alternating rounds. Goal: p99 <= 1.5x the single process's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ECHO_CONFIG, GatewayServer, Row, Server, abba, median, started
from bench.core import Config as CoreConfig
from bench.core import _fmt, _submit_round, _Watch
from harness.redis import RedisProcess

NAME = "scale"
SUBMIT_GOAL = 0.7
PUSH_GOAL = 1.5
LEASE_S = 3.0


@dataclass(frozen=True)
class Config:
    rounds: int = 5
    queued_jobs: int = 2000
    push_rounds: int = 3
    push_watchers: int = 1000


FULL = Config()
QUICK = Config(rounds=1, queued_jobs=200, push_rounds=1, push_watchers=200)


class WorkerServer(Server):
    """``gateway worker`` on a free port: the routes' workers only, on the shared store."""

    label = "worker"

    def __init__(self, config: str) -> None:
        super().__init__()
        self.config_path = self.workdir / "gateway.toml"
        self.config_path.write_text(config)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", "worker", "--listen", "127.0.0.1:0", "--config",
                str(self.config_path)]


def _log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def _redis_config(url: str, extra: str = "") -> str:
    return f'store = "{url}"\nlease_seconds = {LEASE_S}\n{extra}' + ECHO_CONFIG


def bench_submit(redis: RedisProcess, cfg: Config, quick: bool) -> Row:
    core = CoreConfig(warmup_s=0.5 if quick else 1.0, duration_s=1.0 if quick else 4.0)
    rounds: dict[str, list[dict[str, Any]]] = {"sqlite": [], "redis": []}
    with started(GatewayServer(), GatewayServer(_redis_config(redis.url))) as (sqlite, shared):
        for r in range(cfg.rounds):
            for kind, server in abba((("sqlite", sqlite), ("redis", shared)), r):
                result = _submit_round(server, "gateway", core, f"scale-{kind}-{r}")
                rounds[kind].append(result)
                _log(f"submit round {r + 1}/{cfg.rounds} {kind}: {result['throughput']:,.0f}/s, "
                     f"{result['succeeded']}/{result['submitted_ok']} SUCCEEDED")
    redis_tp = median([x["throughput"] for x in rounds["redis"]])
    sqlite_tp = median([x["throughput"] for x in rounds["sqlite"]])
    verified = all(x["succeeded"] == x["submitted_ok"] and not x["errors"] for x in rounds["redis"])
    paired = [a["throughput"] / b["throughput"] for a, b in zip(rounds["redis"], rounds["sqlite"], strict=True)]
    row = Row("Submit throughput, Redis store vs SQLite", "jobs/s", redis_tp, sqlite_tp,
              goal=f">= {SUBMIT_GOAL}x SQLite",
              note=f"per-round ratios {', '.join(f'{p:.2f}' for p in paired)}; every job verified SUCCEEDED: {verified}",
              raw={"redis_rounds": rounds["redis"], "sqlite_rounds": rounds["sqlite"]})
    row.met = verified and row.ratio is not None and row.ratio >= SUBMIT_GOAL
    return row


def _client(target: str) -> Any:
    import grpc
    from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.GatewayServiceStub(channel)


def _echo(stub: Any, **inputs: Any) -> Any:
    from google.protobuf import struct_pb2
    from inferencegateway.gateway.v1 import gateway_pb2 as pb

    struct = struct_pb2.Struct()
    struct.update(inputs)
    return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct), timeout=30).job


def bench_queued_memory(redis: RedisProcess, cfg: Config) -> Row:
    redis.command("FLUSHALL")
    with started(GatewayServer(_redis_config(redis.url), extra_args=("--workers", "0"))) as (api,):
        channel, stub = _client(api.target)
        with channel:
            _echo(stub, warm=True)
            before = redis.used_memory()
            for i in range(cfg.queued_jobs):
                _echo(stub, i=i, note="a queued job's small JSON inputs")
            after = redis.used_memory()
    per_job = (after - before) / cfg.queued_jobs
    _log(f"redis memory: {before:,} -> {after:,} bytes for {cfg.queued_jobs} queued jobs ({per_job:,.0f} B each)")
    return Row("Redis memory per queued job", "bytes", per_job, None,
               note=f"{cfg.queued_jobs} echo jobs queued with no worker; used_memory {before:,} -> {after:,}")


def bench_takeover(redis: RedisProcess) -> Row:
    from inferencegateway.gateway.v1 import gateway_pb2 as pb

    redis.command("FLUSHALL")
    config = _redis_config(redis.url, "heartbeat_seconds = 0.2\n")
    workers = [GatewayServer(config, extra_args=("--workers", "1")) for _ in range(2)]
    with started(GatewayServer(config, extra_args=("--workers", "0")), workers[0]) as (api, first):
        channel, stub = _client(api.target)
        with channel:
            job = _echo(stub, delay_ms=60_000, steps=600)
            for response in stub.Watch(pb.WatchRequest(job_id=job.id), timeout=60):
                if response.update.job.state == pb.JOB_STATE_RUNNING:
                    break
            assert first.proc is not None
            first.proc.kill()
            killed = time.monotonic()
            last = response.update.job.revision
            with started(workers[1]):
                for response in stub.Watch(pb.WatchRequest(job_id=job.id, after_revision=last), timeout=120):
                    if response.WhichOneof("event") == "update":
                        break
                again = time.monotonic() - killed
            stub.Cancel(pb.CancelRequest(job_id=job.id), timeout=10)
    _log(f"takeover: the job ran again {again:.2f} s after its worker was killed (lease {LEASE_S} s)")
    return Row("A killed worker's job running again", "s", again, LEASE_S, goal=f"<= lease ({LEASE_S:.0f} s) + 2 s",
               met=again <= LEASE_S + 2.0,
               note="from SIGKILL of the worker running it to the first revision written by another worker; "
                    "the baseline column is the lease")


def bench_cross_replica_push(redis: RedisProcess, cfg: Config, quick: bool) -> list[Row]:
    redis.command("FLUSHALL")
    config = _redis_config(redis.url)
    core = CoreConfig(watch_timeout_s=60.0 if quick else 120.0)
    rounds: dict[str, list[dict[str, Any]]] = {"single": [], "replicas": []}
    w = cfg.push_watchers
    with started(GatewayServer(), GatewayServer(config, extra_args=("--workers", "0")),
                 GatewayServer(config, extra_args=("--workers", "0")), WorkerServer(config)) as (single, a, b, _worker):
        runners = {"single": _Watch(single, "gateway", core), "replicas": _Watch(b, "gateway", core, submit_target=a.target)}
        for r in range(cfg.push_rounds):
            for kind in abba(("single", "replicas"), r):
                result = runners[kind].round(1, w, 10, f"xpush-{kind}-{r}")
                rounds[kind].append(result)
                _log(f"push 1x{w} round {r + 1}/{cfg.push_rounds} {kind}: p50 {_fmt(result['p50_ms'], 1)} ms, "
                     f"p99 {_fmt(result['p99_ms'], 1)} ms (attach {result['attach_s']:.2f} s)")
    rows = []
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        row = Row(f"Push latency {label}, 1 job x {w} watchers on replica B (submitted through A, run by a worker)", "ms",
                  median([x[key] for x in rounds["replicas"]]), median([x[key] for x in rounds["single"]]),
                  note="baseline: one SQLite gateway running the job and serving the watchers",
                  raw={"replicas_rounds": rounds["replicas"], "single_rounds": rounds["single"]} if key == "p99_ms" else {})
        if key == "p99_ms":
            row.goal = f"<= {PUSH_GOAL}x one process"
            row.met = row.ratio is not None and row.ratio <= PUSH_GOAL
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    redis = RedisProcess(workdir, appendfsync="everysec", die_with_parent=True).start()  # append-only, fsync every second
    try:
        rows = [bench_submit(redis, cfg, args.quick), bench_queued_memory(redis, cfg), bench_takeover(redis),
                *bench_cross_replica_push(redis, cfg, args.quick)]
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    _log(json.dumps([r.to_json() for r in rows])[:200])
    return rows
