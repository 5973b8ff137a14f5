"""GPU check of the whisper route's engine: float16, sequential and batched, beside the bare engine.

Section ``engine``: the route's own engine code (gateway.backends.whisper.WhisperEngine, as the route
builds it from its settings) and a bare faster-whisper model with the same settings, alternating
rounds on the same audio, asserts correct transcripts (the seashells sentence exactly, the long
fixture within a word error rate), and prints real-time factors (seconds of audio per second of
compute) side by side.

Section ``jobs``: many short jobs (32 clips of 3-6 s cut from the fixtures, harness/clips.py) run the
way the route's worker runs them (one thread per job, ``engine.session()`` around each
transcription): the bare engine one clip after another, the one-job-at-a-time engine, and the
batcher across jobs at several ``max_batch`` / ``max_wait_ms``; clips/s and real-time factor; job
latency p50/p99 at a fixed arrival rate (half the one-at-a-time throughput); one long file alone,
batcher against the one-job path; transcripts of the batcher and the one-job path compared (word
error rate 0, timestamps within 0.1 s).

    python bench/gpu_whisper.py --model MODEL_DIR --audio-dir DIR [--device cuda] [--compute-type float16]

DIR holds seashells.pcm and long.pcm (16 kHz mono signed 16-bit little-endian, made from the test
fixtures by ``--export DIR`` on a machine with PyAV) and long.txt: the GPU machine has no PyAV.
It also runs on the CPU (``--device cpu --compute-type int8``), which is how it is tested here.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.audio import SENTENCE, word_error_rate  # noqa: E402 (after the path)


def export(directory: Path) -> None:
    """Writes the fixtures as raw 16 kHz mono s16le, for a machine without PyAV."""
    from gateway.backends.audio import decode
    from harness.clips import pcm16

    directory.mkdir(parents=True, exist_ok=True)
    fixtures = ROOT / "tests" / "fixtures"
    for name, source in (("seashells", "seashells.wav"), ("long", "long.ogg")):
        samples = decode((fixtures / source).read_bytes(), 3600)
        (directory / f"{name}.pcm").write_bytes(pcm16(samples))
    (directory / "long.txt").write_text((fixtures / "long.txt").read_text())


def load_pcm(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype="<i2").astype(np.float32) / 32768.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a CTranslate2 model directory (default: the bundled tiny.en)")
    parser.add_argument("--audio-dir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compute-type", default="float16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--export", type=Path, help="write the PCM fixtures to this folder and stop")
    parser.add_argument("--sections", default="engine,jobs", help="comma-separated: engine, jobs")
    parser.add_argument("--clips", type=int, default=32, help="short clips in the jobs section")
    parser.add_argument("--max-batch", default="8,16,32,64", help="max_batch values tried in the jobs section")
    parser.add_argument("--max-wait-ms", default="0,2,5", help="max_wait_ms values tried (at the largest max_batch)")
    parser.add_argument("--arrivals", type=int, default=64, help="jobs in the fixed-rate latency run")
    parser.add_argument("--vad", default="on", choices=("on", "off"), help="the VAD filter in the jobs section")
    parser.add_argument("--timestamps", default="auto", choices=("auto", "on", "off"),
                        help="timestamp tokens in the jobs section (auto: the route's default for the device)")
    args = parser.parse_args()
    if args.export:
        export(args.export)
        return 0
    sections = args.sections.split(",")
    if "ct2" in sections:
        ct2_section(args)
    if "jobs" in sections:
        jobs_section(args)
    if "engine" not in sections:
        return 0

    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from gateway.backends.whisper import WhisperEngine
    from gateway.jobs import TranscriptionInput
    from gateway.settings import WhisperRoute

    model = str(args.model) if args.model else ""
    seashells = load_pcm(args.audio_dir / "seashells.pcm")
    long = load_pcm(args.audio_dir / "long.pcm")
    reference = (args.audio_dir / "long.txt").read_text()
    seconds = long.size / 16000

    results: list[dict[str, Any]] = []
    for batched in (True, False):
        settings = WhisperRoute(model=model, device=args.device, compute_type=args.compute_type, batched=batched,
                                batch_size=args.batch_size)
        engine = WhisperEngine(settings)
        started = time.perf_counter()
        engine.load()
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        engine.warm_up()
        warm = time.perf_counter() - started

        bare_model = WhisperModel(engine.config.model, device=args.device, compute_type=args.compute_type,
                                  cpu_threads=engine.config.cpu_threads)
        bare_pipeline = BatchedInferencePipeline(bare_model) if batched else None

        def bare(samples: np.ndarray, bare_model: Any = bare_model, bare_pipeline: Any = bare_pipeline) -> str:
            if bare_pipeline is not None:
                segments, _ = bare_pipeline.transcribe(samples, batch_size=args.batch_size, beam_size=5, vad_filter=True)
            else:
                segments, _ = bare_model.transcribe(samples, beam_size=5, vad_filter=True)
            return "".join(s.text for s in segments).strip()

        def gateway(samples: np.ndarray, engine: WhisperEngine = engine) -> str:
            segments, _ = engine.transcribe(samples, TranscriptionInput(audio=b""))
            return "".join(s.text for s in segments).strip()

        bare(seashells)  # the bare model's own one-off warm-up, untimed
        checks = {"gateway_seashells": gateway(seashells), "bare_seashells": bare(seashells)}
        times: dict[str, list[float]] = {"gateway": [], "bare": []}
        texts: dict[str, str] = {}
        for _ in range(args.rounds):
            for name, fn in (("gateway", gateway), ("bare", bare)):
                started = time.perf_counter()
                texts[name] = fn(long)
                times[name].append(time.perf_counter() - started)
        row = {
            "mode": f"batched x{args.batch_size}" if batched else "sequential beam 5",
            "device": f"{args.device} {args.compute_type}",
            "load_s": round(loaded, 2),
            "warmup_s": round(warm, 2),
            "gateway_s": round(statistics.median(times["gateway"]), 3),
            "bare_s": round(statistics.median(times["bare"]), 3),
            "gateway_rtf": round(seconds / statistics.median(times["gateway"]), 1),
            "bare_rtf": round(seconds / statistics.median(times["bare"]), 1),
            "ratio": round(statistics.median(times["gateway"]) / statistics.median(times["bare"]), 3),
            "wer_gateway": round(word_error_rate(reference, texts["gateway"]), 3),
            "wer_bare": round(word_error_rate(reference, texts["bare"]), 3),
            "seashells_gateway": checks["gateway_seashells"],
            "seashells_bare": checks["bare_seashells"],
        }
        results.append(row)
        assert texts["gateway"], "empty transcript from the gateway engine"
        # Sequential decoding gives the sentence exactly; the batched pipeline may split a compound
        # ("sea shore"), so it is compared letter for letter.
        letters = re.sub(r"[^a-z]", "", checks["gateway_seashells"].lower())
        assert checks["gateway_seashells"] == SENTENCE or (batched and letters == re.sub(r"[^a-z]", "", SENTENCE.lower())), checks
        assert row["wer_gateway"] < 0.1, (row["wer_gateway"], texts["gateway"])

    print(f"whisper engine on {args.device} {args.compute_type}, {seconds:.1f} s of speech, median of {args.rounds}")
    header = f"{'mode':<20} {'gateway s':>10} {'bare s':>8} {'ratio':>6} {'gw x RT':>8} {'bare x RT':>9} {'WER':>6} {'warm-up s':>9}"
    print(header)
    for r in results:
        print(f"{r['mode']:<20} {r['gateway_s']:>10} {r['bare_s']:>8} {r['ratio']:>6} {r['gateway_rtf']:>8} "
              f"{r['bare_rtf']:>9} {r['wer_gateway']:>6} {r['warmup_s']:>9}")
    print(json.dumps({"gpu_whisper": results}))
    return 0


def _timed_jobs(engine: Any, clips: list[np.ndarray], threads: int, arrivals: list[float] | None = None,
                ) -> tuple[float, list[list[Any]], list[float]]:
    """Runs each clip as a job on ``threads`` worker threads, the way the whisper route's worker does;
    with ``arrivals`` (seconds from the start), job i is submitted at arrivals[i]. Returns (seconds
    from the first submission to the last end, each job's segments, each job's latency)."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.jobs import TranscriptionInput

    def one(samples: np.ndarray, submitted: float) -> tuple[list[Any], float]:
        with engine.session():
            segments, _ = engine.transcribe(samples, TranscriptionInput(audio=b""))
            out = list(segments)
        return out, time.perf_counter() - submitted

    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        futures = []
        for i, clip in enumerate(clips):
            if arrivals is not None:
                delay = started + arrivals[i] - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            futures.append(pool.submit(one, clip, time.perf_counter()))
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
    return elapsed, [r[0] for r in results], [r[1] for r in results]


def _text(segments: list[Any]) -> str:
    return "".join(s.text for s in segments).strip()


def ct2_section(args: argparse.Namespace) -> None:
    """CTranslate2 alone: encode + generate of the clips' first windows in batches of 1, 8 and 32, with
    the prompt faster-whisper uses (timestamps) and with <|notimestamps|>; and the CPU work of a job
    (VAD, features) one after another and on 32 threads. Says where a batch's time goes."""
    from concurrent.futures import ThreadPoolExecutor

    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from harness.clips import cut_clips

    model_dir = str(args.model) if args.model else __import__("gateway.backends.whisper").backends.whisper.default_model_path()
    model = WhisperModel(model_dir, device=args.device, compute_type=args.compute_type)
    clips = cut_clips(load_pcm(args.audio_dir / "long.pcm"), load_pcm(args.audio_dir / "seashells.pcm"), args.clips)
    features = np.stack([pad_or_trim(model.feature_extractor(c)[..., :-1]) for c in clips]).astype(np.float32)
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
    prompts = {"timestamps": list(tokenizer.sot_sequence),
               "no timestamps": [*tokenizer.sot_sequence, tokenizer.no_timestamps]}
    options = {"beam_size": 5, "patience": 1, "length_penalty": 1, "repetition_penalty": 1, "no_repeat_ngram_size": 0,
               "max_length": 448, "return_scores": True, "return_no_speech_prob": True, "suppress_blank": True,
               "suppress_tokens": [-1], "max_initial_timestamp_index": 50}
    ct = model.model
    ct.generate(ct.encode(ctranslate2.StorageView.from_array(features[:1])), [prompts["timestamps"]], **options)
    for name, prompt in prompts.items():
        for n in (1, 8, 32):
            timings = {"encode": 0.0, "generate": 0.0}
            for _ in range(2):  # the second round counts
                timings = {"encode": 0.0, "generate": 0.0}
                for i in range(0, len(clips), n):
                    t0 = time.perf_counter()
                    encoded = ct.encode(ctranslate2.StorageView.from_array(features[i:i + n]), to_cpu=False)
                    t1 = time.perf_counter()
                    ct.generate(encoded, [prompt] * min(n, len(clips) - i), **options)
                    timings["encode"] += t1 - t0
                    timings["generate"] += time.perf_counter() - t1
            total = timings["encode"] + timings["generate"]
            print(json.dumps({"ct2": name, "batch": n, "clips_per_s": round(len(clips) / total, 1),
                              "encode_s": round(timings["encode"], 3), "generate_s": round(timings["generate"], 3)}), flush=True)

    def vad(clip: np.ndarray) -> None:
        get_speech_timestamps(clip, VadOptions())

    def mel(clip: np.ndarray) -> None:
        model.feature_extractor(clip)

    for name, work in (("vad", vad), ("features", mel)):
        work(clips[0])
        for threads in (1, 32):
            with ThreadPoolExecutor(threads) as pool:
                t0 = time.perf_counter()
                list(pool.map(work, clips))
            print(json.dumps({"cpu_work": name, "per_clip_ms": round((time.perf_counter() - t0) / len(clips) * 1000, 2),
                              "threads": threads}), flush=True)


def jobs_section(args: argparse.Namespace) -> None:
    from faster_whisper import WhisperModel

    from gateway.backends.whisper import WhisperEngine
    from gateway.settings import WhisperRoute
    from harness.clips import cut_clips
    from harness.stats import percentile

    model = str(args.model) if args.model else ""
    seashells = load_pcm(args.audio_dir / "seashells.pcm")
    long = load_pcm(args.audio_dir / "long.pcm")
    clips = cut_clips(long, seashells, args.clips)
    audio = sum(c.size for c in clips) / 16000
    long3 = np.concatenate([long, long, long])
    print(f"jobs: {len(clips)} clips, {audio:.1f} s of audio ({min(c.size for c in clips) / 16000:.1f}-"
          f"{max(c.size for c in clips) / 16000:.1f} s); long file {long3.size / 16000:.1f} s", flush=True)

    # Both paths decode with the same settings: the batcher's default for this device, or as asked.
    without = {"auto": None, "on": False, "off": True}[args.timestamps]
    if without is None:
        without = WhisperEngine(WhisperRoute(model=model, device=args.device, batching=True)).config.without_timestamps
    print(f"jobs: decoding {'without' if without else 'with'} timestamp tokens", flush=True)

    default_wait = WhisperRoute().max_wait_ms

    def engine_for(batching: bool, max_batch: int = 32, max_wait_ms: float = default_wait) -> Any:
        engine = WhisperEngine(WhisperRoute(model=model, device=args.device, compute_type=args.compute_type,
                                            batching=batching, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                            workers=0 if batching else 1,  # one replica on all the threads, like the batcher
                                            without_timestamps=without, vad_filter=args.vad == "on"))
        engine.load()
        engine.warm_up()
        return engine

    rows: list[dict[str, Any]] = []

    def row(name: str, elapsed: float, **extra: Any) -> dict[str, Any]:
        r = {"mode": name, "seconds": round(elapsed, 3), "clips_per_s": round(len(clips) / elapsed, 1),
             "x_rt": round(audio / elapsed, 1), **extra}
        rows.append(r)
        print(json.dumps(r), flush=True)
        return r

    # The bare engine, one clip after another (what a caller gets from faster-whisper alone).
    one = engine_for(False)
    bare_model = WhisperModel(one.config.model, device=args.device, compute_type=args.compute_type,
                              cpu_threads=one.config.cpu_threads)
    list(bare_model.transcribe(seashells, beam_size=5)[0])  # its own warm-up, untimed
    started = time.perf_counter()
    bare_texts = [_text(list(bare_model.transcribe(c, beam_size=5, vad_filter=args.vad == "on",
                                                   without_timestamps=without)[0]))
                  for c in clips]
    bare = row("bare engine, one clip after another", time.perf_counter() - started)
    del bare_model

    elapsed, single_segments, _ = _timed_jobs(one, clips, 1)
    single = row("gateway engine, one job at a time", elapsed)
    single_texts = [_text(s) for s in single_segments]
    # Checks are recorded, not asserted, so that one run on a lent device reports everything.
    problems: list[str] = []
    if not all(single_texts):
        problems.append("an empty transcript from the one-job path")
    if single_texts != bare_texts:
        differ = sum(a != b for a, b in zip(single_texts, bare_texts, strict=True))
        problems.append(f"the one-job path differs from the bare engine: {differ} clips")

    sizes = [int(v) for v in args.max_batch.split(",")]
    waits = [float(v) for v in args.max_wait_ms.split(",")]
    batcher = engine_for(True, max(sizes), waits[0])
    assert batcher.batcher is not None
    best: dict[str, Any] | None = None
    for size, wait in [(s, default_wait) for s in sizes] + [(max(sizes), w) for w in waits if w != default_wait]:
        batcher.batcher.max_batch, batcher.batcher.max_wait = size, wait / 1000
        before = (dict(batcher.batcher.stats.batches), dict(batcher.batcher.stats.rows), dict(batcher.batcher.stats.busy),
                  batcher.batcher.stats.gathered)
        elapsed, segments, _ = _timed_jobs(batcher, clips, size)
        stats = batcher.batcher.stats
        mean_batch = (stats.rows["generate"] - before[1]["generate"]) / max(1, stats.batches["generate"] - before[0]["generate"])
        r = row(f"batcher max_batch={size} max_wait_ms={wait:g}", elapsed, mean_batch=round(mean_batch, 1),
                busy_s={k: round(v - before[2][k], 3) for k, v in stats.busy.items()}, split=stats.split,
                gathered=stats.gathered - before[3],
                vs_one_at_a_time=round(single["seconds"] / elapsed, 2), vs_bare=round(bare["seconds"] / elapsed, 2))
        # Same transcripts as the one-job path: word error rate 0, timestamps within 0.1 s.
        for mine, theirs in zip(segments, single_segments, strict=True):
            if word_error_rate(_text(theirs), _text(mine)) != 0:
                problems.append(f"max_batch={size}: words differ: {_text(theirs)!r} / {_text(mine)!r}")
            elif len(mine) != len(theirs) or not all(
                    abs(a.start - b.start) <= 0.1 and abs(a.end - b.end) <= 0.1 for a, b in zip(mine, theirs, strict=False)):
                problems.append(f"max_batch={size}: timestamps differ: {mine} / {theirs}")
        if best is None or r["clips_per_s"] > best["clips_per_s"]:
            best = {**r, "size": size, "wait": wait}
    assert best is not None

    def _p(values: list[float], q: float) -> float:
        found = percentile(values, q)
        assert found is not None
        return found

    # Latency at a fixed arrival rate: half of what one job at a time sustains.
    rate = single["clips_per_s"] / 2
    arrivals = [i / rate for i in range(args.arrivals)]
    stream = [clips[i % len(clips)] for i in range(args.arrivals)]
    _e, _s, lat_one = _timed_jobs(one, stream, 1, arrivals)
    defaults = WhisperRoute()
    batcher.batcher.max_batch, batcher.batcher.max_wait = defaults.max_batch, defaults.max_wait_ms / 1000
    _e, _s, lat_batch = _timed_jobs(batcher, stream, defaults.max_batch, arrivals)
    latency = {
        "rate_per_s": round(rate, 2),
        "one_at_a_time_p50": round(_p(lat_one, 0.50), 3), "one_at_a_time_p99": round(_p(lat_one, 0.99), 3),
        "batcher_p50": round(_p(lat_batch, 0.50), 3), "batcher_p99": round(_p(lat_batch, 0.99), 3),
    }
    latency["p99_ratio"] = round(latency["batcher_p99"] / latency["one_at_a_time_p99"], 2)
    print(json.dumps({"latency": latency}), flush=True)

    # One long file alone: the batcher must not slow it (nobody else to wait for).
    long_times: dict[str, list[float]] = {"one": [], "batcher": []}
    long_text = ""
    for _ in range(3):
        for name, engine in (("one", one), ("batcher", batcher)):
            elapsed, segs, _ = _timed_jobs(engine, [long3], 1)
            long_times[name].append(elapsed)
            if name == "batcher" and _text(segs[0]) != long_text:
                problems.append("the long file's transcript differs between the batcher and the one-job path")
            long_text = _text(segs[0])
    long_row = {"one_s": round(statistics.median(long_times["one"]), 3),
                "batcher_s": round(statistics.median(long_times["batcher"]), 3)}
    long_row["ratio"] = round(long_row["batcher_s"] / long_row["one_s"], 3)
    print(json.dumps({"long_file": long_row}), flush=True)

    print(f"\nmany short jobs on {args.device} {args.compute_type}: {len(clips)} clips, {audio:.1f} s of audio")
    print(f"{'mode':<42} {'clips/s':>8} {'x RT':>7} {'vs 1-at-a-time':>15} {'mean batch':>10}")
    for r in rows:
        print(f"{r['mode']:<42} {r['clips_per_s']:>8} {r['x_rt']:>7} {r.get('vs_one_at_a_time', ''):>15} "
              f"{r.get('mean_batch', ''):>10}")
    print(f"latency at {latency['rate_per_s']} jobs/s: one at a time p50 {latency['one_at_a_time_p50']} s p99 "
          f"{latency['one_at_a_time_p99']} s; batcher p50 {latency['batcher_p50']} s p99 {latency['batcher_p99']} s "
          f"(p99 ratio {latency['p99_ratio']})")
    print(f"one long file ({long3.size / 16000:.0f} s): one-job path {long_row['one_s']} s, batcher {long_row['batcher_s']} s "
          f"(ratio {long_row['ratio']})")
    print("checks:", "all passed" if not problems else f"{len(problems)} FAILED")
    for problem in problems[:20]:
        print("  ", problem[:400])
    print(json.dumps({"gpu_jobs": {"rows": rows, "latency": latency, "long_file": long_row, "best": best,
                                   "problems": problems}}), flush=True)
    batcher.close()


if __name__ == "__main__":
    sys.exit(main())
