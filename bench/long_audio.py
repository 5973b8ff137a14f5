"""Section ``long_audio``: a whisper job's peak memory against the duration of its audio.

Each duration gets a fresh gateway process (whisper route, CPU, tiny.en) and one job: speech made by
repeating the long fixture to the duration, Ogg/Opus at 12 kbit/s (two hours: about 11 MB). The
figure is the process's peak RSS (VmHWM, reset once the route was warm and idle) over the whole job,
less its RSS then; the job runs to the end and its transcript is checked (duration, and the fixture's words
in every section of it).

Baseline: the bare faster-whisper engine on the same file as the route ran it before windowing:
``decode_audio`` of the whole file, then ``WhisperModel.transcribe`` on all of it, whose decoding,
VAD and feature extraction happen before the first segment comes out; its peak is read at the first
segment, less its RSS with the model loaded (a subprocess per file, same machine, same run).

Goals: two hours peaks under 0.6 GB above idle; four hours within 20% of one hour. ``--quick``: 5 and
10 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, GatewayServer, Row, rss_mib, started

NAME = "long_audio"
FULL_MINUTES = (60, 120, 240)
QUICK_MINUTES = (5, 10)
BARE_MINUTES_MAX = 120  # the bare engine holds GBs beyond this: measured up to two hours
GOAL_2H_MIB = 600.0
GOAL_4H_OVER_1H = 1.2
CONFIG = """max_receive_bytes = 67108864
[routes.whisper]
backend = "whisper"
max_audio_bytes = 67108864
max_audio_seconds = 18000
"""
FIXTURE = ROOT / "tests" / "fixtures" / "long.ogg"


def _log(message: str) -> None:
    print(f"[long_audio] {message}", file=sys.stderr, flush=True)


def speech(minutes: int) -> bytes:
    from harness.audio import repeated_speech

    return repeated_speech(FIXTURE.read_bytes(), minutes * 60.0, bit_rate=12_000)


def _reset_peak(pid: int | str) -> None:
    """Resets VmHWM to the current RSS (Linux: 5 > /proc/PID/clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def _gateway_peak(data: bytes, minutes: int) -> dict[str, Any]:
    from bench.whisper import _wait_serving
    from gateway_client import Client

    with started(GatewayServer(CONFIG)) as (server,):
        _wait_serving(server.target)
        time.sleep(1.0)
        idle = server.rss_mib() or 0.0
        _reset_peak(server.pid)  # the job's own peak, not the model's loading
        began = time.perf_counter()
        with Client(server.target, timeout=60) as client:
            transcript = client.transcribe(data).result(timeout=minutes * 60 * 2)
        elapsed = time.perf_counter() - began
        peak = rss_mib(server.pid, "VmHWM") or 0.0
    words = transcript.text.split()
    per_fixture = len((ROOT / "tests" / "fixtures" / "long.txt").read_text().split())
    return {"idle_mib": idle, "peak_mib": peak, "above_idle_mib": peak - idle, "seconds": elapsed,
            "duration": transcript.duration, "segments": len(transcript.segments), "words": len(words),
            "words_expected_about": round(per_fixture * minutes * 60 / 52.6)}


_BARE = """
import sys
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio
from gateway.backends.whisper import default_model_path

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

model = WhisperModel(default_model_path(), device="cpu", compute_type="int8", local_files_only=True)
list(model.transcribe(decode_audio("{warm}"), beam_size=1)[0])
idle = rss()
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on
audio = decode_audio(sys.argv[1], sampling_rate=16000)
segments, info = model.transcribe(audio, beam_size=5, vad_filter=True)
first = next(segments)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
print(idle, peak)
"""


def _bare_peak(path: str) -> dict[str, float]:
    code = _BARE.replace("{warm}", str(ROOT / "tests" / "fixtures" / "seashells.wav"))
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    idle, peak = (float(x) for x in done.stdout.split()[-2:])
    return {"idle_mib": idle, "peak_mib": peak, "above_idle_mib": peak - idle}


def run(args: argparse.Namespace) -> list[Row]:
    import tempfile

    minutes_list = QUICK_MINUTES if args.quick else FULL_MINUTES
    results: dict[int, dict[str, Any]] = {}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in minutes_list:
            data = speech(minutes)
            path = f"{tmp}/speech-{minutes}.ogg"
            with open(path, "wb") as f:
                f.write(data)
            gateway = _gateway_peak(data, minutes)
            bare = _bare_peak(path) if minutes <= BARE_MINUTES_MAX else None
            results[minutes] = {"bytes": len(data), "gateway": gateway, "bare": bare}
            _log(f"{minutes} min ({len(data) / 1e6:.1f} MB): {json.dumps(results[minutes])}")
            goal, met = "-", None
            if minutes == 120:
                goal, met = f"< {GOAL_2H_MIB:.0f} MiB", gateway["above_idle_mib"] < GOAL_2H_MIB
            rows.append(Row(
                f"Peak RSS above idle, one whisper job of {minutes} min of speech", "MiB", gateway["above_idle_mib"],
                bare["above_idle_mib"] if bare else None, goal=goal, met=met,
                note=f"{len(data) / 1e6:.1f} MB Ogg/Opus; job {gateway['seconds']:.0f} s, {gateway['segments']} segments, "
                     f"{gateway['words']} words (about {gateway['words_expected_about']} expected); idle "
                     f"{gateway['idle_mib']:.0f} MiB; baseline: the bare engine on the whole file"
                     + ("" if bare else " (not run beyond two hours)"),
                raw=results[minutes],
            ))
    first, last = minutes_list[0], minutes_list[-1]
    ratio = results[last]["gateway"]["above_idle_mib"] / max(1.0, results[first]["gateway"]["above_idle_mib"])
    rows.append(Row(f"Peak above idle, {last} min / {first} min", "x", ratio, None,
                    goal=f"<= {GOAL_4H_OVER_1H}" if (first, last) == (60, 240) else "-",
                    met=ratio <= GOAL_4H_OVER_1H if (first, last) == (60, 240) else None))
    return rows
