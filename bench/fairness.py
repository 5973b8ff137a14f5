"""Section ``fairness``: a light tenant's wait behind a heavy tenant's backlog, and Submit's cost of scheduling.

1. Tenant ``heavy`` queues a backlog of 160 echo jobs (50 ms each; 40 with --quick) on a route of 4 workers;
   then tenant ``light`` submits 20 jobs, one every 50 ms, while the backlog drains. Its jobs' wait
   (start_time - create_time, the server's clocks), p50 and p99, against the same jobs submitted with heavy's
   token (one tenant: first come, first served, what every job had before fair share), in alternating
   rounds on one gateway. Goal: p99 within two job run times (a worker frees every 12.5 ms here).
2. Submit throughput (the core section's closed loop) on this commit against the commit before the scheduler
   (``git worktree``, the same virtualenv), alternating rounds. Goal: no more than 5% slower.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import GatewayServer, Row, Server, abba, median, started

NAME = "fairness"
RUN_MS = 50
WORKERS = 4
P99_GOAL_MS = 2 * RUN_MS
THROUGHPUT_GOAL = 0.95
ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"heavy": "heavy-token", "light": "light-token"}
CONFIG = (
    "[auth]\nenabled = true\n[auth.tokens]\n" + "".join(f'{t} = "{n}"\n' for n, t in TOKENS.items())
    + f'[routes.echo]\nbackend = "echo"\nworkers = {WORKERS}\nmax_queue = 100000\n'
)


@dataclass(frozen=True)
class Config:
    backlog: int = 160
    light: int = 20
    rounds: int = 2
    submit_rounds: int = 3


FULL = Config()
QUICK = Config(backlog=40, light=5, rounds=1, submit_rounds=1)


def _log(message: str) -> None:
    print(f"[fairness] {message}", file=sys.stderr, flush=True)


async def _round(target: str, cfg: Config, light_token: str) -> list[float]:
    """The light jobs' waits in ms, submitted with ``light_token`` behind heavy's backlog."""
    from gateway_client import AsyncClient

    async with AsyncClient(target, token=TOKENS["heavy"]) as heavy, AsyncClient(target, token=light_token) as light:
        backlog = await asyncio.gather(*(heavy.submit_job("echo", {"delay_ms": RUN_MS}) for _ in range(cfg.backlog)))
        mine = []
        for _ in range(cfg.light):
            mine.append((await light.submit_job("echo", {"delay_ms": 1})).job)
            await asyncio.sleep(RUN_MS / 1000)
        waits = []
        for job in mine:
            await asyncio.wait_for(await light.future(job.id), 600)
            done = await light.get(job.id)
            assert done.start_time is not None and done.create_time is not None
            waits.append((done.start_time - done.create_time).total_seconds() * 1000)
        for submitted in backlog:  # drained before the next round
            await asyncio.wait_for(await heavy.future(submitted.job.id), 600)
    return waits


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_wait(cfg: Config) -> list[Row]:
    waits: dict[str, list[list[float]]] = {"fair": [], "fifo": []}
    with started(GatewayServer(CONFIG)) as (server,):
        for r in range(cfg.rounds):
            for mode in abba(("fair", "fifo"), r):
                token = TOKENS["light"] if mode == "fair" else TOKENS["heavy"]
                got = asyncio.run(_round(server.target, cfg, token))
                waits[mode].append(got)
                _log(f"round {r + 1}/{cfg.rounds} {mode}: wait p50 {statistics.median(got):.0f} ms, "
                     f"max {max(got):.0f} ms")

    def stat(mode: str, q: float) -> float | None:
        return median([_percentile(w, q) for w in waits[mode]])

    what = f"behind a backlog of {cfg.backlog} ({WORKERS} workers, {RUN_MS} ms jobs)"
    p99 = stat("fair", 0.99)
    return [
        Row(f"Light tenant's wait {what}, p50", "ms", stat("fair", 0.5), stat("fifo", 0.5),
            note="baseline: the same jobs from the heavy tenant (one tenant: first come, first served)",
            raw={"waits": waits}),
        Row(f"Light tenant's wait {what}, p99", "ms", p99, stat("fifo", 0.99), goal=f"< {P99_GOAL_MS} ms",
            met=p99 is not None and p99 < P99_GOAL_MS),
    ]


class _PreviousGateway(GatewayServer):
    """``gateway serve`` of another commit: its checkout first on sys.path (``-m`` from its root)."""

    label = "gateway-before"

    def __init__(self, checkout: Path) -> None:
        super().__init__()
        self.cwd = checkout


def _before_scheduling() -> str | None:
    """The commit before the scheduler landed (the subject of the commit that brought it)."""
    found = subprocess.run(["git", "log", "--format=%H", "-1", "--grep=^Fair share between tenants and priority"],
                           cwd=ROOT, capture_output=True, text=True, check=False)
    return f"{found.stdout.strip()}~1" if found.returncode == 0 and found.stdout.strip() else None


def bench_submit(cfg: Config) -> list[Row]:
    from bench.core import Config as CoreConfig
    from bench.core import _submit_round

    core = CoreConfig(duration_s=2.0 if cfg.submit_rounds == 1 else 4.0)
    revision = _before_scheduling()
    if revision is None:
        return [Row("Submit throughput against the commit before the scheduler", "jobs/s", None,
                    note="no such commit in this checkout's history")]
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        checkout = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(checkout), revision], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rounds: dict[str, list[dict[str, Any]]] = {"now": [], "before": []}
            with started(GatewayServer(), _PreviousGateway(checkout)) as (now, before):
                servers: dict[str, Server] = {"now": now, "before": before}
                for r in range(cfg.submit_rounds):
                    for variant in abba(("now", "before"), r):
                        result = _submit_round(servers[variant], "gateway", core, f"fair-{variant}-{r}")
                        rounds[variant].append(result)
                        _log(f"submit round {r + 1}/{cfg.submit_rounds} {variant}: {result['throughput']:,.0f}/s")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT, check=False,
                           capture_output=True)
    tp_now = median([x["throughput"] for x in rounds["now"]])
    tp_before = median([x["throughput"] for x in rounds["before"]])
    row = Row("Submit throughput with the scheduler", "jobs/s", tp_now, tp_before,
              goal=f">= {THROUGHPUT_GOAL:.2f}x before", note=f"baseline: {revision} (before the scheduler), same venv",
              raw=rounds)
    row.met = row.ratio is not None and row.ratio >= THROUGHPUT_GOAL
    return [row]


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    began = time.perf_counter()
    rows = bench_wait(cfg) + bench_submit(cfg)
    _log(f"done in {time.perf_counter() - began:.0f} s")
    return rows
