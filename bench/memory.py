"""Section ``memory``: the gateway's memory under many large Submits at once.

1. Thirty whisper Submits of 20 MiB of WAV each (10 with --quick), all at once, twice, to a gateway that
   runs no jobs (``--workers 0``: the Submit path alone: receive, parse, probe, store). Peak RSS (VmHWM)
   and RSS two seconds after, against the idle RSS. Baseline: the same gateway with the in-flight Submit
   budget lifted (``max_inflight_submit_bytes`` at 32 GiB), same run. Goals: peak under 1 GiB, and RSS
   back within 20% of idle after.
2. One process that runs the whisper jobs too (the route's defaults, as ``make run``): three bursts of 24
   Submits of 16 MiB (a spoken sentence, then silence; 6 with --quick), each burst's jobs transcribed to
   the end before the next; RSS two seconds after each burst, against the idle RSS with the model loaded.
   Goals (issue 27): within 20% of idle plus 60 MiB after each burst, and no growth from one burst to the
   next (the last within 5% plus 8 MiB of the first).

Clients retry refused Submits after the server's RetryInfo delay, as the Python client does, so every
Submit is accepted in the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import ROOT, GatewayServer, Row, rss_mib, started, wait_route_serving
from harness.uploads import burst, padded_wav

NAME = "memory"
PEAK_GOAL_MIB = 1024.0
AFTER_GOAL = 1.2


AFTER_SLACK_MIB = 60.0  # the fixed allowance over 20% of idle
GROWTH = 1.05
GROWTH_SLACK_MIB = 8.0


@dataclass(frozen=True)
class Config:
    uploads: int = 30
    mib: int = 20
    rounds: int = 2
    whisper_uploads: int = 24
    whisper_mib: int = 16
    whisper_bursts: int = 3


FULL = Config()
QUICK = Config(uploads=10, rounds=1, whisper_uploads=6)


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


def _ended(target: str, timeout: float = 900.0) -> None:
    """Waits until none of the gateway's jobs is QUEUED or RUNNING."""
    from gateway_client import Client

    deadline = time.monotonic() + timeout
    with Client(target, timeout=30) as client:
        while client.list(states=["QUEUED", "RUNNING"], page_size=1).jobs:
            if time.monotonic() > deadline:
                raise TimeoutError("the burst's jobs did not end")
            time.sleep(0.5)


def _measure_running(cfg: Config) -> dict[str, Any]:
    """RSS after each burst, in a process that transcribes the jobs (section 2 of the docstring)."""
    speech = padded_wav((ROOT / "tests" / "fixtures" / "seashells.wav").read_bytes(), cfg.whisper_mib * 1024 * 1024)
    with started(GatewayServer('[routes.whisper]\nbackend = "whisper"\n')) as (server,):
        wait_route_serving(server.target, "whisper", timeout=300)
        burst(server.target, speech[: 64 * 1024], 1)  # a first job: what a first transcription loads, loaded
        _ended(server.target)
        time.sleep(2.0)
        idle = server.rss_mib()
        after = []
        for _ in range(cfg.whisper_bursts):
            outcome = burst(server.target, speech, cfg.whisper_uploads)
            _ended(server.target)
            time.sleep(2.0)
            after.append(server.rss_mib())
            _log(f"whisper process: after a burst ({outcome}): {after[-1]:.0f} MiB (idle {idle:.0f} MiB)")
        return {"idle_mib": idle, "after_mib": after}


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
    running = _measure_running(cfg)
    idle_running = running["idle_mib"] or 0.0
    afters = [a or 0.0 for a in running["after_mib"]]
    limit = idle_running * AFTER_GOAL + AFTER_SLACK_MIB
    worst = max(afters)
    grown = afters[-1] - afters[0]
    what = f"{cfg.whisper_uploads} Submits of {cfg.whisper_mib} MiB transcribed, x{cfg.whisper_bursts}"
    back = Row(f"RSS after each burst, whisper running here ({what})", "MiB", worst, idle_running,
               goal=f"<= 1.2x idle + {AFTER_SLACK_MIB:.0f} MiB ({limit:.0f})", met=worst <= limit,
               note="baseline: idle with the model loaded; after each burst: " + ", ".join(f"{a:.0f}" for a in afters),
               raw=running)
    growth = Row("RSS growth from the first burst to the last, whisper running here", "MiB", grown, None,
                 goal=f"<= 5% + {GROWTH_SLACK_MIB:.0f} MiB", met=afters[-1] <= afters[0] * GROWTH + GROWTH_SLACK_MIB)
    return [peak, after, back, growth]
