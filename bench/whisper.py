"""Section ``whisper``: the whisper route against the bare faster-whisper engine, same model, settings, run.

1. Latency: one job at a time, from the Submit call to the receipt of the terminal revision on the
   Watch stream, against the bare engine decoding and transcribing the same file in this process
   (same model: the bundled tiny.en; same settings: int8 on the CPU, threads = the cores, beam 5,
   VAD on). Rounds alternate. Goal: the gateway adds at most 5% (ratio <= 1.05).
2. Throughput: several jobs submitted at once (a mix of short and long clips), from the first Submit to
   the last terminal revision, against the bare engine transcribing the same clips one after another
   (what one engine on these cores can do). Reported as real-time factors (seconds of audio per second).
3. Many short jobs (32 clips of 2.5-6 s cut from the fixtures, harness/clips.py; 8 with --quick) submitted
   at once to gateways with three route settings: one job at a time (``workers = 1``), the CPU
   default (``workers = 0``: two jobs, one CTranslate2 thread each), and the batcher across jobs
   (``batching = true``); clips/s against the bare engine one clip after another; then p50/p99 job
   latency at a fixed arrival rate (half what one job at a time sustains), one at a time against
   the default. The GPU version of this table is bench/gpu_whisper.py (bench/figures/).

The gateway runs as its own process with only the whisper route; the bare engine is loaded in this
process, and waits idle while the gateway works (and the other way round).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from bench.common import ROOT, GatewayServer, Row, abba, median, wait_route_serving

NAME = "whisper"
FIXTURES = ROOT / "tests" / "fixtures"
CONFIG = '[routes.whisper]\nbackend = "whisper"\n'
LATENCY_GOAL = 1.05


@dataclass(frozen=True)
class Config:
    rounds: int = 5
    clips: tuple[str, ...] = ("long.ogg",) * 2 + ("seashells.wav", "seashells_44k_stereo.wav") * 3
    throughput_rounds: int = 2


FULL = Config()
QUICK = Config(rounds=1, clips=("seashells.wav", "long.ogg"), throughput_rounds=1)


def _log(message: str) -> None:
    print(f"[whisper] {message}", file=sys.stderr, flush=True)


def _duration(data: bytes) -> float:
    from gateway.backends.audio import SAMPLE_RATE, decode

    return decode(data, 1e9).size / SAMPLE_RATE


def _bare_worker(conn: Connection) -> None:
    """The bare engine's process: faster-whisper as the route configures it by default, no gateway."""
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    from gateway.backends.whisper import WhisperEngine, default_model_path
    from gateway.settings import WhisperRoute

    config = WhisperEngine(WhisperRoute()).config  # the route's own resolution of 'auto'
    model = WhisperModel(config.model or default_model_path(), device=config.device, compute_type=config.compute_type,
                         cpu_threads=config.cpu_threads)
    conn.send(repr(config))
    while (data := conn.recv()) is not None:
        samples = decode_audio(io.BytesIO(data), sampling_rate=16000)
        segments, _ = model.transcribe(samples, beam_size=5, vad_filter=True)
        conn.send("".join(s.text for s in segments))


class BareEngine:
    """The bare engine in a process of its own, like the gateway's (no shared GIL or event loop)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_bare_worker, args=(child,), daemon=True)
        self._proc.start()
        self.config = self._conn.recv()

    def transcribe(self, data: bytes) -> str:
        self._conn.send(data)
        return str(self._conn.recv())

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(10)


def _gateway_one(client: object, data: bytes) -> float:
    from gateway_client import Client

    assert isinstance(client, Client)
    started = time.perf_counter()
    job, _ = client.submit_job("whisper", audio=data)
    last = None
    for update in client.watch(job.id, after_revision=job.revision):
        last = update
        if update.done:  # type: ignore[union-attr]
            break
    elapsed = time.perf_counter() - started
    # Only a job that succeeded with a transcript is a sample: a failed job is not a fast one.
    from gateway_client import JobState, Transcript

    if last is None or last.state is not JobState.SUCCEEDED:  # type: ignore[union-attr]
        raise RuntimeError(f"whisper job {job.id} ended {getattr(last, 'state', None)}, not SUCCEEDED")
    result = client.fetch(job.id).result
    if not isinstance(result, Transcript) or not result.text.strip():
        raise RuntimeError(f"whisper job {job.id} succeeded without a transcript: {result!r}")
    return elapsed


def _gateway_many(client: object, clips: list[bytes]) -> float:
    from gateway_client import Client

    assert isinstance(client, Client)
    started = time.perf_counter()
    futures = [client.transcribe(data) for data in clips]
    done = threading.Event()
    remaining = [len(futures)]

    def finished(_: object) -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    for future in futures:
        future.add_done_callback(finished)
    done.wait(600)
    elapsed = time.perf_counter() - started
    for future in futures:
        future.result(0)
    return elapsed


def _at_rate(client: object, clips: list[bytes], rate: float) -> list[float]:
    """Submits clip i at i / rate seconds; each job's latency, Submit to its terminal revision."""
    from gateway_client import Client

    assert isinstance(client, Client)
    latencies: list[float] = []
    started = time.perf_counter()
    threads = []
    for i, data in enumerate(clips):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=lambda d=data: latencies.append(_gateway_one(client, d)))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(600)
    return latencies


SHORT_JOB_ROUTES = {
    "one job at a time": "workers = 1\nbatching = false\n",
    "CPU default (2 jobs x 1 thread)": "",
    "batcher across jobs (max_batch 8)": "batching = true\nmax_batch = 8\n",
}


def _short_jobs(bare: BareEngine, quick: bool) -> list[Row]:
    from gateway.backends.audio import SAMPLE_RATE, decode
    from gateway_client import Client
    from harness.clips import cut_clips, wav_bytes
    from harness.stats import percentile

    long = decode((FIXTURES / "long.ogg").read_bytes(), 3600)
    samples = cut_clips(long, decode((FIXTURES / "seashells.wav").read_bytes(), 60), 8 if quick else 32)
    clips = [wav_bytes(c) for c in samples]
    audio = sum(c.size for c in samples) / SAMPLE_RATE
    started = time.perf_counter()
    for data in clips:
        bare.transcribe(data)
    bare_s = time.perf_counter() - started
    rows: list[Row] = []
    per_s: dict[str, float] = {}
    latency: dict[str, list[float]] = {}
    for label, extra in SHORT_JOB_ROUTES.items():
        with GatewayServer(CONFIG + extra) as gateway:
            _wait_serving(gateway.target)
            with Client(gateway.target) as client:
                _gateway_one(client, clips[0])  # warm
                elapsed = _gateway_many(client, clips)
                per_s[label] = len(clips) / elapsed
                rows.append(Row(f"{len(clips)} short jobs at once: {label}", "clips/s", per_s[label], len(clips) / bare_s,
                                note=f"x real time {audio / elapsed:.1f}; baseline: the bare engine one clip after another",
                                raw={"gateway_s": elapsed, "bare_s": bare_s, "audio_s": audio}))
                _log(f"short jobs, {label}: {per_s[label]:.2f} clips/s (bare {len(clips) / bare_s:.2f})")
                if label != "batcher across jobs (max_batch 8)":
                    rate = len(clips) / bare_s / 2  # half what one job at a time sustains
                    latency[label] = _at_rate(client, clips, rate)
    one, default = "one job at a time", "CPU default (2 jobs x 1 thread)"
    gain = per_s[default] / per_s[one]
    rows.append(Row("short jobs: CPU default / one at a time", "x", gain, 1.0, goal=">= 1.5x", met=gain >= 1.5))
    for q in (50, 99):
        rows.append(Row(f"short jobs at a fixed rate: latency p{q}, CPU default vs one at a time", "s",
                        percentile(latency[default], q / 100), percentile(latency[one], q / 100),
                        raw={"default_s": latency[default], "one_at_a_time_s": latency[one]}))
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    from gateway_client import Client

    cfg = QUICK if args.quick else FULL
    long_clip = (FIXTURES / "long.ogg").read_bytes()
    short_clip = (FIXTURES / "seashells.wav").read_bytes()
    clips = [(FIXTURES / name).read_bytes() for name in cfg.clips]
    audio_seconds = {id(c): _duration(c) for c in {id(c): c for c in [long_clip, short_clip, *clips]}.values()}
    total_audio = sum(_duration(c) for c in clips)

    rows: list[Row] = []
    bare = BareEngine()
    _log(f"bare engine: {bare.config}")
    with GatewayServer(CONFIG) as gateway, contextlib.closing(bare):
        _wait_serving(gateway.target)
        with Client(gateway.target) as client:
            bare.transcribe(short_clip)  # warm both before timing
            _gateway_one(client, short_clip)
            for label, data in (("long (52.6 s)", long_clip), ("short (2.5 s)", short_clip)):
                gw_times, bare_times = [], []
                for r in range(cfg.rounds):
                    for kind in abba(("gateway", "bare"), r):
                        if kind == "gateway":
                            gw_times.append(_gateway_one(client, data))
                        else:
                            started = time.perf_counter()
                            bare.transcribe(data)
                            bare_times.append(time.perf_counter() - started)
                gw, base = median(gw_times), median(bare_times)
                assert gw is not None and base is not None
                seconds = audio_seconds[id(data)]
                rows.append(Row(
                    f"latency, {label}", "s", gw, base, goal=f"<= {LATENCY_GOAL}x bare",
                    met=gw / base <= LATENCY_GOAL,
                    note=f"x real time: gateway {seconds / gw:.1f}, bare {seconds / base:.1f}",
                    raw={"gateway_s": gw_times, "bare_s": bare_times, "audio_s": seconds},
                ))
                _log(f"{label}: gateway {gw:.3f} s, bare {base:.3f} s")
            gw_many, bare_many = [], []
            for r in range(cfg.throughput_rounds):
                for kind in abba(("gateway", "bare"), r):
                    if kind == "gateway":
                        gw_many.append(_gateway_many(client, clips))
                    else:
                        started = time.perf_counter()
                        for data in clips:
                            bare.transcribe(data)
                        bare_many.append(time.perf_counter() - started)
            gw_t, bare_t = median(gw_many), median(bare_many)
            assert gw_t is not None and bare_t is not None
            rows.append(Row(
                f"throughput, {len(clips)} jobs at once", "x real time", total_audio / gw_t, total_audio / bare_t,
                note=f"{total_audio:.0f} s of audio; gateway {gw_t:.2f} s, bare one after another {bare_t:.2f} s",
                raw={"gateway_s": gw_many, "bare_s": bare_many, "audio_s": total_audio},
            ))
        rows.extend(_short_jobs(bare, args.quick))
    return rows


def _wait_serving(target: str, timeout: float = 120.0) -> None:
    wait_route_serving(target, "whisper", timeout)

