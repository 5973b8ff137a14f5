"""Section ``memory``: the gateway's memory under many large Submits at once.

Thirty whisper Submits of 20 MiB of WAV each (10 with --quick), all at once, twice, to a gateway that
runs no jobs (``--workers 0``: the Submit path alone: receive, parse, probe, store). Peak RSS (VmHWM)
and RSS two seconds after, against the idle RSS. Baseline: the same gateway with the in-flight Submit
budget lifted (``max_inflight_submit_bytes`` at 32 GiB), same run. Goals: peak under 1 GiB, and RSS
back within 20% of idle after. Clients retry refused Submits after the server's RetryInfo delay, as
the Python client does, so every Submit is accepted in the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import GatewayServer, Row, rss_mib, started
from harness.uploads import burst

NAME = "memory"
PEAK_GOAL_MIB = 1024.0
AFTER_GOAL = 1.2


@dataclass(frozen=True)
class Config:
    uploads: int = 30
    mib: int = 20
    rounds: int = 2


FULL = Config()
QUICK = Config(uploads=10, rounds=1)


def _log(message: str) -> None:
    print(f"[memory] {message}", file=sys.stderr, flush=True)


def _wav(mib: int) -> bytes:
    import numpy as np

    from harness.clips import wav_bytes

    return wav_bytes(np.full(mib * 1024 * 1024 // 2 - 32, 0.0078, dtype=np.float32))  # a quiet hum, mib MiB


def _measure(config: str, data: bytes, cfg: Config) -> dict[str, Any]:
    with started(GatewayServer(config, extra_args=("--workers", "0"))) as (server,):
        time.sleep(1.0)
        idle = server.rss_mib()
        outcomes = [burst(server.target, data, cfg.uploads) for _ in range(cfg.rounds)]
        time.sleep(2.0)
        return {"idle_mib": idle, "peak_mib": rss_mib(server.pid, "VmHWM"), "after_mib": server.rss_mib(),
                "outcomes": outcomes}


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    data = _wav(cfg.mib)
    route = '[routes.whisper]\nbackend = "whisper"\nmax_queue = 1000\n'
    bounded = _measure(route, data, cfg)
    unbounded = _measure(f"max_inflight_submit_bytes = {32 << 30}\n" + route, data, cfg)
    for name, m in (("bounded", bounded), ("unbounded", unbounded)):
        _log(f"{name}: idle {m['idle_mib']:.0f} MiB, peak {m['peak_mib']:.0f} MiB, after {m['after_mib']:.0f} MiB, "
             f"{m['outcomes']}")
    what = f"{cfg.uploads} Submits of {cfg.mib} MiB at once, x{cfg.rounds}"
    peak = Row(f"Peak RSS, {what}", "MiB", bounded["peak_mib"], unbounded["peak_mib"],
               goal=f"< {PEAK_GOAL_MIB:.0f} MiB", met=bounded["peak_mib"] is not None and bounded["peak_mib"] < PEAK_GOAL_MIB,
               note="baseline: the same with the in-flight Submit budget lifted",
               raw={"bounded": bounded, "unbounded": unbounded})
    idle = bounded["idle_mib"] or 1.0
    after = Row("RSS after the bursts / idle RSS", "x", (bounded["after_mib"] or 0) / idle,
                (unbounded["after_mib"] or 0) / (unbounded["idle_mib"] or 1.0), goal=f"<= {AFTER_GOAL}",
                met=(bounded["after_mib"] or 0) / idle <= AFTER_GOAL,
                note=f"idle {idle:.0f} MiB, after {bounded['after_mib']:.0f} MiB")
    return [peak, after]
