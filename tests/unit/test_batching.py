"""The whisper batcher across jobs, on the CPU: same transcripts as the one-job path, jobs joining and
leaving window by window, cancel and failure of one job leaving the others alone.

Engine-level tests run the route's own engine (gateway.backends.whisper.WhisperEngine) the way its
worker does (a thread per job, ``engine.session()`` around each transcription); the others run a real
gateway process with a batching whisper route and talk to it with the client.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from gateway.backends.audio import decode
from gateway.backends.batching import BatchingModel
from gateway.backends.whisper import WhisperEngine
from gateway.jobs import Segment, TranscriptionInput
from gateway.settings import WhisperRoute
from gateway_client import Client, JobCancelledError, JobFailedError, JobState, Transcript
from harness import FIXTURES, ServerProcess
from harness.audio import SENTENCE, wav_with_codec_tag
from harness.clips import cut_clips

BATCHING_CONFIG = """
[routes.whisper]
backend = "whisper"
batching = true
max_batch = 4
max_wait_ms = 20
"""


def _load(path: str) -> np.ndarray:
    return decode((FIXTURES / path).read_bytes(), 3600)


@pytest.fixture(scope="module")
def audio() -> dict[str, np.ndarray]:
    long = _load("long.ogg")
    clips = cut_clips(long, _load("seashells.wav"), 4)
    return {"seashells": _load("seashells.wav"), "stereo": _load("seashells_44k_stereo.wav"), "long": long,
            **{f"clip{i}": c for i, c in enumerate(clips[1:])}}


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[WhisperEngine, WhisperEngine]]:
    one = WhisperEngine(WhisperRoute(batching=False, workers=1))
    batched = WhisperEngine(WhisperRoute(batching=True, max_batch=4, max_wait_ms=20))
    for engine in (one, batched):
        engine.load()
    assert batched.batcher is not None and one.batcher is None
    yield one, batched
    batched.close()


def _transcribe(engine: WhisperEngine, samples: np.ndarray, request: TranscriptionInput | None = None,
                on_segment: Any = None, stop: threading.Event | None = None) -> list[Segment]:
    out: list[Segment] = []
    with engine.session():
        segments, _info = engine.transcribe(samples, request or TranscriptionInput(audio=b""), stop)
        for segment in segments:
            out.append(segment)
            if on_segment is not None:
                on_segment(segment)
    return out


def _same(batched: list[Segment], alone: list[Segment]) -> None:
    """Word error rate 0 and timestamps within 0.1 s, segment by segment."""
    assert [s.text for s in batched] == [s.text for s in alone]
    for a, b in zip(batched, alone, strict=True):
        assert abs(a.start - b.start) <= 0.1 and abs(a.end - b.end) <= 0.1, (a, b)


def test_batched_transcripts_equal_the_one_job_path(engines: tuple[WhisperEngine, WhisperEngine],
                                                    audio: dict[str, np.ndarray]) -> None:
    one, batched = engines
    # Different options in one batch: word timestamps, another beam size; they never share a call.
    requests = {name: TranscriptionInput(audio=b"") for name in audio}
    requests["stereo"] = TranscriptionInput(audio=b"", word_timestamps=True)
    requests["clip0"] = TranscriptionInput(audio=b"", beam_size=2)
    alone = {name: _transcribe(one, samples, requests[name]) for name, samples in audio.items()}
    before = batched.batcher.stats.rows["encode"], batched.batcher.stats.batches["encode"]  # type: ignore[union-attr]
    with ThreadPoolExecutor(len(audio)) as pool:
        futures = {name: pool.submit(_transcribe, batched, samples, requests[name]) for name, samples in audio.items()}
        together = {name: f.result(timeout=300) for name, f in futures.items()}
    for name in audio:
        assert together[name], name
        _same(together[name], alone[name])
    assert together["seashells"][0].text.strip() == SENTENCE
    words = [w.word.strip(" .") for s in together["stereo"] for w in s.words]
    assert words == [w.word.strip(" .") for s in alone["stereo"] for w in s.words] and len(words) == 6
    stats = batched.batcher.stats  # type: ignore[union-attr]
    rows, batches = stats.rows["encode"] - before[0], stats.batches["encode"] - before[1]
    assert rows / batches > 1.5, (rows, batches)  # windows really were encoded together


def test_a_job_submitted_while_a_batch_runs_joins_a_later_window(engines: tuple[WhisperEngine, WhisperEngine],
                                                                 audio: dict[str, np.ndarray]) -> None:
    one, batched = engines
    long = np.concatenate([audio["long"]] * 3)  # six 30 s windows
    first_segment = threading.Event()
    finished: dict[str, float] = {}

    def run(name: str, samples: np.ndarray, on_segment: Any = None) -> list[Segment]:
        segments = _transcribe(batched, samples, on_segment=on_segment)
        finished[name] = time.monotonic()
        return segments

    with ThreadPoolExecutor(2) as pool:
        long_job = pool.submit(run, "long", long, lambda _s: first_segment.set())
        assert first_segment.wait(timeout=120)
        short_job = pool.submit(run, "short", audio["seashells"])
        short = short_job.result(timeout=120)
        long_segments = long_job.result(timeout=300)
    # The short job did not wait for the long one to end: it joined at the long job's next window.
    assert finished["short"] < finished["long"]
    assert short[0].text.strip() == SENTENCE
    _same(long_segments, _transcribe(one, long))


def test_cancel_of_one_job_at_its_next_window_leaves_the_others_intact(
        engines: tuple[WhisperEngine, WhisperEngine], audio: dict[str, np.ndarray]) -> None:
    one, batched = engines
    long = np.concatenate([audio["long"]] * 2)
    stop = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        cancelled = pool.submit(_transcribe, batched, long, None, lambda _s: stop.set(), stop)
        others = [pool.submit(_transcribe, batched, audio["long"]), pool.submit(_transcribe, batched, audio["clip1"])]
        with pytest.raises(Exception) as stopped:
            cancelled.result(timeout=300)
        assert type(stopped.value).__name__ == "Stopped"
        results = [f.result(timeout=300) for f in others]
    _same(results[0], _transcribe(one, audio["long"]))
    _same(results[1], _transcribe(one, audio["clip1"]))


class _FakeWhisper:
    """Stands in for CTranslate2's Whisper under a BatchingModel: a generate call fails when any prompt in
    it holds token 666 (a window that breaks the model), as a real batch would fail for all its rows."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate(self, features: Any, prompts: list[list[int]], **_kwargs: Any) -> list[str]:
        self.calls.append(len(prompts))
        if any(666 in p for p in prompts):
            raise ValueError("this window breaks the model")
        return [f"ok:{p[1]}" for p in prompts]


def test_a_failing_window_fails_its_own_job_only() -> None:
    fake = _FakeWhisper()
    batcher = BatchingModel(fake, max_batch=8, max_wait=0.5, sot_id=1)
    features = np.zeros((1, 1500, 4), dtype=np.float32)
    # Previous text, then <|startoftranscript|> (1) at the same index and the same task tokens: one batch.
    prompts = [[50, 10, 1, 2], [50, 666, 1, 2], [50, 30, 1, 2]]
    results: dict[int, Any] = {}
    ready = threading.Barrier(len(prompts))

    def job(i: int) -> None:
        with batcher.session():
            ready.wait()
            try:
                results[i] = batcher.generate(features, [prompts[i]])
            except ValueError as exc:
                results[i] = exc

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    batcher.close()
    assert fake.calls[0] == 3  # one call for the three jobs, which failed...
    assert results[0] == ["ok:10"] and results[2] == ["ok:30"]  # ...then each alone: two succeed
    assert isinstance(results[1], ValueError)
    assert batcher.stats.split == 1


# -- through a gateway process -------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("batching"), BATCHING_CONFIG).start()
    server.wait_serving("route/whisper")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def long_alone(batching_server: ServerProcess) -> list[str]:
    """The long fixture's segments transcribed by the same server with nothing else running: the
    reference for jobs that shared batches. (The engine-level tests above compare the batcher with the
    one-job path; here the server's own process settings, OpenBLAS threads included, stay the same.)"""
    with Client(batching_server.target) as client:
        result = client.transcribe(FIXTURES / "long.ogg").result(timeout=300)
    assert isinstance(result, Transcript) and len(result.segments) >= 5
    return [s.text for s in result.segments]


def test_every_job_in_a_batch_streams_its_own_progress_in_order(batching_server: ServerProcess,
                                                                 long_alone: list[str]) -> None:
    files = {"long": FIXTURES / "long.ogg", "seashells": FIXTURES / "seashells.wav",
             "stereo": FIXTURES / "seashells_44k_stereo.wav"}
    with Client(batching_server.target) as client:
        jobs = {name: client.submit_job("whisper", audio=path)[0].id for name, path in files.items()}
        with ThreadPoolExecutor(len(jobs)) as pool:
            streams = dict(zip(jobs, pool.map(lambda job_id: list(client.watch(job_id)), jobs.values()), strict=True))
        assert {name: client.get(job_id).state for name, job_id in jobs.items()} == dict.fromkeys(jobs, JobState.SUCCEEDED)
        info = client.get(jobs["long"])
    for name, updates in streams.items():
        assert updates[-1].state is JobState.SUCCEEDED
        running = [u for u in updates if u.state is JobState.RUNNING and u.segments]
        assert running, f"{name}: no segment before the end"
        counts = [len(u.segments) for u in updates]
        progress = [u.progress for u in updates]
        assert counts == sorted(counts) and progress == sorted(progress), name
        for earlier, later in itertools.pairwise(updates):
            assert later.segments[: len(earlier.segments)] == earlier.segments
    assert [s.text for s in info.segments] == long_alone
    assert len([u for u in streams["long"] if u.state is JobState.RUNNING and u.segments]) >= 5


def test_cancel_and_a_malformed_job_in_a_batch_leave_the_others_intact(batching_server: ServerProcess,
                                                                        long_alone: list[str]) -> None:
    with Client(batching_server.target) as client:
        doomed = client.transcribe(FIXTURES / "long.ogg")
        broken = client.transcribe(wav_with_codec_tag(0x0055))  # says MP3, holds PCM: fails when decoded
        others = [client.transcribe(FIXTURES / "long.ogg"), client.transcribe(FIXTURES / "seashells.wav")]
        for job in client.watch(doomed.job_id):
            if job.segments:
                break
        client.cancel(doomed.job_id)
        with pytest.raises(JobCancelledError):
            doomed.result(timeout=120)
        with pytest.raises(JobFailedError) as failed:
            broken.result(timeout=120)
        assert failed.value.reason == "AUDIO_DECODE_FAILED"
        results = [f.result(timeout=300) for f in others]
    assert all(isinstance(r, Transcript) for r in results)
    assert [s.text for s in results[0].segments] == long_alone
    assert results[1].text == SENTENCE
