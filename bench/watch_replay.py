"""Section ``watch_replay``: what a Watch that replays a long transcription's revisions costs, against its length.

A finished whisper job of N segments, one revision per segment (as a whisper route writes them: a two-hour
recording makes about 2,000), is written into a SQLite data dir with the store's own API; a real gateway
serves that data dir, and the Python client watches the job from its first revision (``after_revision=1``:
every revision replayed from the store, then the end), rebuilding the transcript. The figure is the time per
revision at the longest input; the baseline is the same at the shortest, so the ratio is how the cost of one
revision grows with the transcript: 1 for a linear replay, the ratio of the lengths for a quadratic one. The
largest input is about a two-hour recording's (2,000 segments; ``--quick``: 1,000).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from bench.common import GatewayServer, Row

NAME = "watch_replay"
CONFIG = '[routes.whisper]\nbackend = "echo"\n'  # the job's route, by name (nothing runs)
WORDS = "the quick brown fox jumps over the lazy dog and then it runs away".split()


def _log(message: str) -> None:
    print(f"[watch_replay] {message}", file=sys.stderr, flush=True)


async def _write_job(data_dir: Path, segments: int) -> str:
    """A finished job of ``segments`` segments, one revision per segment, as the whisper route stores them."""
    from gateway.jobs import Job, JobOutput, JobState, Segment, Word, new_job_id
    from gateway.store import SqliteStore

    now = time.time()
    job = Job(id=new_job_id(now), tenant="default", route="whisper", state=JobState.QUEUED, revision=1, created=now)
    async with SqliteStore(data_dir / "gateway.sqlite3") as store:
        await store.create_job(job, "", b'{"inputs":{}}\n')
        job = job.evolve(revision=2, state=JobState.RUNNING, started=now)
        await store.save_revision(job)
        for i in range(segments):
            start = i * 3.5
            words = tuple(Word(start + k * 0.3, start + k * 0.3 + 0.25, f" {w}", 0.9) for k, w in enumerate(WORDS))
            segment = Segment(start, start + 3.4, "".join(w.word for w in words), -0.2, 0.01, words)
            job = job.evolve(revision=job.revision + 1, segments=(*job.segments, segment), progress=i / segments)
            await store.save_revision(job, (segment,))
        job = job.evolve(revision=job.revision + 1, state=JobState.SUCCEEDED, progress=1.0, finished=time.time(),
                         expires=time.time() + 86400)
        await store.save_revision(job, result=JobOutput({"segments": segments}))
    return job.id


def _replay(target: str, job_id: str) -> tuple[float, int]:
    """Seconds to watch the job from revision 1 to its end (the transcript rebuilt), and the segments seen."""
    from gateway_client import Client

    with Client(target, timeout=600) as client:
        started = time.perf_counter()
        jobs = list(client.watch(job_id, after_revision=1))
        seconds = time.perf_counter() - started
    last = jobs[-1] if jobs else None
    assert last is not None and last.done and len(last.segments) == len(jobs) - 2  # (running, then one each)
    return seconds, len(last.segments)


def run(args: argparse.Namespace) -> list[Row]:
    sizes = (250, 1000) if args.quick else (250, 2000)
    per_revision: dict[int, float] = {}
    for size in sizes:
        server = GatewayServer(CONFIG)
        (server.workdir / "data").mkdir(parents=True, exist_ok=True)
        job_id = asyncio.run(_write_job(server.workdir / "data", size))
        with server:
            best = min(_replay(server.target, job_id)[0] for _ in range(2 if args.quick else 3))
        per_revision[size] = best / size * 1e6
        _log(f"{size} segments: {best:.3f} s, {per_revision[size]:.0f} us per revision")
    small, large = sizes
    grows = per_revision[large] / per_revision[small]
    return [Row(f"Watch replay, us per revision: {large} segments (vs {small})", "us", per_revision[large],
                per_revision[small], goal="<= 1.5x (linear)", met=grows <= 1.5,
                note=f"{large // small}x the segments; a quadratic replay would be ~{large // small}x per revision",
                raw={"per_revision_us": per_revision})]
