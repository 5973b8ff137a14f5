"""Section ``uploads``: the server's memory while it takes audio by the Upload RPC (chunks spooled to disk).

Thirty Uploads of 20 MiB of WAV at once (10 with --quick), from the Python client (which streams each
file from disk in 1 MiB chunks), to a gateway that runs no jobs (``--workers 0``: the receive path
alone: spool, probe, store). Peak RSS (VmHWM) against the same thirty as unary Submits to the same
gateway, in the same run (the memory section's path: each Submit is received whole, so the in-flight
budget makes them wait their turn). Then one Upload of 1 GB (200 MB with --quick): the peak RSS it
adds over idle, against its own size (what holding it once would cost). Goals: peak under 1 GiB; a
1 GB upload adds under 100 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import GatewayServer, Row, rss_mib, started
from harness.uploads import burst

NAME = "uploads"
PEAK_GOAL_MIB = 1024.0
ADDED_GOAL_MIB = 100.0
MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    uploads: int = 30
    mib: int = 20
    large_mib: int = 1000  # "1 GB"
    rounds: int = 2


FULL = Config()
QUICK = Config(uploads=10, large_mib=200, rounds=1)


def _log(message: str) -> None:
    print(f"[uploads] {message}", file=sys.stderr, flush=True)


def _wav_file(path: Path, size: int) -> Path:
    """A 48 kHz stereo WAV of a quiet hum, ``size`` bytes, written a MiB at a time (never whole in
    memory: the 1 GB one is an hour and a half of audio)."""
    import numpy as np

    frame = (np.full(MiB // 4, 256, dtype="<i2").repeat(2)).tobytes()  # 1 MiB of frames
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(48_000)
        for _ in range(size // MiB):
            out.writeframesraw(frame)
    return path


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM from here on


async def _uploads(target: str, path: Path, count: int) -> int:
    from gateway_client import AsyncClient

    async with AsyncClient(target, upload_above=0, timeout=600) as client:
        done = await asyncio.gather(*(client.upload("whisper", path) for _ in range(count)))
    return len(done)


def _peak_over(server: GatewayServer, action: Any) -> dict[str, Any]:
    time.sleep(1.0)
    idle = server.rss_mib() or 0.0
    _reset_peak(server.pid)
    began = time.perf_counter()
    outcome = action()
    seconds = time.perf_counter() - began
    time.sleep(1.0)
    return {"idle_mib": idle, "peak_mib": rss_mib(server.pid, "VmHWM"), "after_mib": server.rss_mib(),
            "seconds": seconds, "outcome": outcome}


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    config = (f'[routes.whisper]\nbackend = "whisper"\nmax_queue = 1000\nmax_audio_bytes = {2 * cfg.large_mib * MiB}\n'
              'max_audio_seconds = 36000\n')
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
        small = _wav_file(Path(tmp) / "small.wav", cfg.mib * MiB)
        large = _wav_file(Path(tmp) / "large.wav", cfg.large_mib * MiB)
        data = small.read_bytes()
        with started(GatewayServer(config, extra_args=("--workers", "0"))) as (server,):
            assert isinstance(server, GatewayServer)
            burst(server.target, data[:MiB], 1)  # warm both paths, so that idle means idle
            asyncio.run(_uploads(server.target, small, 1))
            streamed, unary = [], []
            for _ in range(cfg.rounds):  # alternating rounds, same server
                streamed.append(_peak_over(server, lambda: asyncio.run(_uploads(server.target, small, cfg.uploads))))
                unary.append(_peak_over(server, lambda: burst(server.target, data, cfg.uploads)))
            one = _peak_over(server, lambda: asyncio.run(_uploads(server.target, large, 1)))
    for name, runs in (("Upload", streamed), ("Submit", unary)):
        for m in runs:
            _log(f"{name} x{cfg.uploads}: idle {m['idle_mib']:.0f} MiB, peak {m['peak_mib']:.0f} MiB, "
                 f"after {m['after_mib']:.0f} MiB, {m['seconds']:.1f} s, {m['outcome']}")
    _log(f"one Upload of {cfg.large_mib} MiB: idle {one['idle_mib']:.0f} MiB, peak {one['peak_mib']:.0f} MiB, "
         f"{one['seconds']:.1f} s ({cfg.large_mib / one['seconds']:.0f} MiB/s)")
    peak = max(m["peak_mib"] or 0.0 for m in streamed)
    peak_unary = max(m["peak_mib"] or 0.0 for m in unary)
    added = (one["peak_mib"] or 0.0) - one["idle_mib"]
    what = f"{cfg.uploads} Uploads of {cfg.mib} MiB at once"
    return [
        Row(f"Peak RSS, {what}", "MiB", peak, peak_unary, goal=f"< {PEAK_GOAL_MIB:.0f} MiB", met=0 < peak < PEAK_GOAL_MIB,
            note="baseline: the same as unary Submits (received whole, a few at a time)",
            raw={"streamed": streamed, "unary": unary}),
        Row(f"RSS added by one Upload of {cfg.large_mib} MiB", "MiB", added, float(cfg.large_mib),
            goal=f"< {ADDED_GOAL_MIB:.0f} MiB", met=added < ADDED_GOAL_MIB,
            note=f"baseline: the file's size; {cfg.large_mib / one['seconds']:.0f} MiB/s over loopback", raw=one),
    ]
