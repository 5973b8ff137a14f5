"""GPU check of the whisper route's engine: float16, sequential and batched, beside the bare engine.

Runs the route's own engine code (gateway.backends.whisper.WhisperEngine, as the route builds it from
its settings) and a bare faster-whisper model with the same settings, alternating rounds on the same
audio, asserts correct transcripts (the seashells sentence exactly, the long fixture within a word
error rate), and prints real-time factors (seconds of audio per second of compute) side by side.

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

SENTENCE = "She sells seashells by the seashore."


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def export(directory: Path) -> None:
    """Writes the fixtures as raw 16 kHz mono s16le, for a machine without PyAV."""
    from gateway.backends.audio import decode

    directory.mkdir(parents=True, exist_ok=True)
    fixtures = ROOT / "tests" / "fixtures"
    for name, source in (("seashells", "seashells.wav"), ("long", "long.ogg")):
        samples = decode((fixtures / source).read_bytes(), 3600)
        (directory / f"{name}.pcm").write_bytes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
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
    args = parser.parse_args()
    if args.export:
        export(args.export)
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


if __name__ == "__main__":
    sys.exit(main())
