"""The whisper route, end to end: a real gateway process running real faster-whisper (tiny.en, CPU)."""

from __future__ import annotations

import base64
import itertools
import time
from pathlib import Path

import grpc
import pytest

from gateway_client import (
    NO_RETRY,
    Client,
    GatewayError,
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    JobState,
    ResourceExhaustedError,
    Transcript,
)
from harness import FIXTURES, ServerProcess, cli
from harness.audio import SEASHELLS, SENTENCE, silence_wav, wav_with_codec_tag, word_error_rate


def test_seashells_exact(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        result = client.transcribe(SEASHELLS).result(timeout=120)
    assert isinstance(result, Transcript)
    assert result.text == SENTENCE
    assert result.language == "en" and 2.4 < result.duration < 2.6  # a BCP-47 code; seconds
    assert len(result.segments) == 1 and result.segments[0].text.strip() == SENTENCE
    assert result.segments[0].end <= result.duration + 0.5


def test_cli_transcribe_prints_the_sentence(whisper_server: ServerProcess) -> None:
    done = cli(whisper_server.target, "transcribe", str(SEASHELLS))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == SENTENCE
    assert "100%" in done.stderr  # the progress bar
    as_json = cli(whisper_server.target, "transcribe", str(SEASHELLS), "--json", "--quiet")
    assert as_json.returncode == 0 and '"segments"' in as_json.stdout and SENTENCE in as_json.stdout


def test_octoai_style_json_inputs(whisper_server: ServerProcess) -> None:
    audio = base64.b64encode(SEASHELLS.read_bytes()).decode()
    with Client(whisper_server.target) as client:
        future = client.submit("whisper", {"audio": audio, "language": "en", "task": "transcribe"}, result_type=Transcript)
        result = future.result(timeout=120)
        assert isinstance(result, Transcript) and result.text == SENTENCE
        # Typed as an Output (submit's default), a Transcript ends the future with a clear TypeError.
        with pytest.raises(TypeError, match="result_type=Transcript"):
            client.submit("whisper", {"audio": audio}).result(timeout=120)
        with pytest.raises(GatewayError) as bad:
            client.submit_job("whisper", {"audio": "not base64!!"})
        assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT and bad.value.reason == "AUDIO_NOT_BASE64"
        with pytest.raises(GatewayError) as unknown:
            client.submit_job("whisper", {"audio": audio, "colour": "blue"})
        assert unknown.value.field_violations[0][0] == "inputs.colour"


def test_stereo_44k_input(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        result = client.transcribe(FIXTURES / "seashells_44k_stereo.wav").result(timeout=120)
    assert isinstance(result, Transcript) and result.text == SENTENCE


def test_long_fixture_wer_and_growing_transcript(whisper_server: ServerProcess) -> None:
    reference = (FIXTURES / "long.txt").read_text()
    with Client(whisper_server.target) as client:
        job, _ = client.submit_job("whisper", audio=FIXTURES / "long.ogg")
        updates = [u for u in client.watch(job.id)]
        result = client.fetch(job.id).result
        # Watching from a revision in the middle: the stream sends only what each later revision added,
        # and the client still hands out the whole transcript of each revision.
        middle = next(u for u in updates if len(u.segments) >= 3)
        replay = list(client.watch(job.id, after_revision=middle.revision))
        assert [(u.revision, u.segments) for u in replay] == [
            (u.revision, u.segments) for u in updates if u.revision > middle.revision
        ]
    assert isinstance(result, Transcript)
    assert 52 < result.duration < 53.5
    wer = word_error_rate(reference, result.text)
    assert wer < 0.08, (wer, result.text)
    running = [u for u in updates if u.state is JobState.RUNNING and u.segments]
    assert len(running) >= 5  # the transcript grew while the job ran
    counts = [len(u.segments) for u in running]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    progress = [u.progress for u in running]
    assert progress == sorted(progress) and 0 < progress[0] < 0.5 and progress[-1] > 0.8
    assert updates[-1].state is JobState.SUCCEEDED and len(updates[-1].segments) == len(result.segments)
    assert [s.text for s in running[-1].segments] == [s.text for s in result.segments[: counts[-1]]]
    # Each update carries the whole transcript so far (rebuilt from the stream's increments).
    for earlier, later in itertools.pairwise(updates):
        assert later.segments[: len(earlier.segments)] == earlier.segments
    assert updates[-1].segments == result.segments


def test_word_timestamps(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        result = client.transcribe(SEASHELLS, word_timestamps=True).result(timeout=120)
    assert isinstance(result, Transcript)
    words = [w for s in result.segments for w in s.words]
    assert [w.word.strip(" .") for w in words] == SENTENCE.rstrip(".").split()
    assert all(0 <= w.start <= w.end <= result.duration + 0.5 for w in words)


def test_silence_gives_an_empty_transcript(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        result = client.transcribe(silence_wav(120)).result(timeout=300)
    assert isinstance(result, Transcript)
    assert result.text == "" and result.segments == () and 119 < result.duration < 121


@pytest.mark.parametrize(
    ("audio", "reason"),
    [
        (b"", "AUDIO_EMPTY"),
        (bytes(range(256)) * 40, "AUDIO_UNREADABLE"),  # random-looking bytes
        (SEASHELLS.read_bytes()[:30], "AUDIO_UNREADABLE"),  # a truncated header
        (b"This is a text file, not audio.\n" * 100, "AUDIO_UNREADABLE"),
        (b"1\n00:00:01,000 --> 00:00:02,000\nsubtitles\n\n", "AUDIO_NO_STREAM"),
        (wav_with_codec_tag(0x6750), "AUDIO_UNSUPPORTED_CODEC"),
    ],
)
def test_malformed_audio_is_refused_at_submit(whisper_server: ServerProcess, audio: bytes, reason: str) -> None:
    with Client(whisper_server.target) as client:
        with pytest.raises(GatewayError) as refused:
            client.submit_job("whisper", audio=audio)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT and isinstance(refused.value, InvalidArgumentError)
    assert refused.value.reason == reason
    assert refused.value.field_violations[0][0] == "transcription.audio"


def test_undecodable_audio_fails_the_job_with_a_reason(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        future = client.transcribe(wav_with_codec_tag(0x0055))  # says MP3, holds PCM: only decoding can tell
        with pytest.raises(JobFailedError) as failed:
            future.result(timeout=60)
        assert failed.value.reason == "AUDIO_DECODE_FAILED" and "mp3" in failed.value.message
        assert client.transcribe(SEASHELLS).result(timeout=120).text == SENTENCE  # still healthy


def test_bad_options_are_refused(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        with pytest.raises(GatewayError) as french:
            client.submit_job("whisper", audio=SEASHELLS, language="fr")
        assert french.value.field_violations[0][0] == "transcription.language_code"  # the proto's field name
        with pytest.raises(GatewayError) as klingon:
            client.submit_job("whisper", audio=SEASHELLS, language="xx")
        assert "unknown language" in klingon.value.field_violations[0][1]
        with pytest.raises(GatewayError) as malformed:
            client.submit_job("whisper", audio=SEASHELLS, language="english please")
        assert "not a BCP-47" in malformed.value.field_violations[0][1]
        with pytest.raises(GatewayError) as beam:
            client.submit_job("whisper", audio=SEASHELLS, beam_size=99)
        assert beam.value.field_violations[0][0] == "transcription.beam_size"


def test_a_bcp47_code_with_a_region_is_its_language(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        transcript = client.transcribe(SEASHELLS, language="en-US").result(timeout=120)
    assert transcript.text == SENTENCE and transcript.language == "en"


def test_cancel_mid_job_frees_the_worker(whisper_server: ServerProcess) -> None:
    with Client(whisper_server.target) as client:
        future = client.transcribe(FIXTURES / "long.ogg")
        for job in client.watch(future.job_id):
            if job.segments:
                break
        started = time.monotonic()
        client.cancel(future.job_id)  # answers at once; the job ends CANCELLED on its stream
        with pytest.raises(JobCancelledError):
            future.result(timeout=30)
        assert time.monotonic() - started < 10  # at the next segment or window
        cancelled = client.get(future.job_id)
        assert cancelled.state is JobState.CANCELLED and 0 < len(cancelled.segments) < 10
        assert client.transcribe(SEASHELLS).result(timeout=120).text == SENTENCE


def test_queue_full_and_queue_position(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server('[routes.whisper]\nbackend = "whisper"\nmax_queue = 1\nworkers = 1\n')
    server.wait_serving("route/whisper")
    with Client(server.target) as client:
        running = client.transcribe(FIXTURES / "long.ogg")
        while client.get(running.job_id).state is not JobState.RUNNING:
            time.sleep(0.05)
        queued = client.transcribe(SEASHELLS)
        assert queued.job.state is JobState.QUEUED and queued.job.queue_position == 1
        with Client(server.target, retry=NO_RETRY) as impatient, pytest.raises(ResourceExhaustedError) as full:
            impatient.submit_job("whisper", audio=SEASHELLS)
        assert full.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and full.value.reason == "QUEUE_FULL"
        assert full.value.retry_delay is not None and full.value.retry_delay >= 1
        client.cancel(running.job_id)
        assert queued.result(timeout=120).text == SENTENCE


def test_route_that_cannot_load_its_model(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(
        f'[routes.echo]\nbackend = "echo"\n[routes.whisper]\nbackend = "whisper"\nmodel = "{tmp_path / "none"}"\n'
    )
    deadline = time.monotonic() + 30
    with Client(server.target) as client:
        while True:
            try:
                client.submit_job("whisper", audio=SEASHELLS)
            except GatewayError as exc:
                assert exc.code is grpc.StatusCode.FAILED_PRECONDITION and exc.reason == "ROUTE_FAILED"
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert server.health("route/whisper") != 1  # not SERVING
        assert client.submit("echo", {"ok": True}).result(timeout=10).value == {"ok": True}


def test_the_batched_pipeline_mode_on_the_cpu(make_server) -> None:  # type: ignore[no-untyped-def]
    """batched = true (faster-whisper's BatchedInferencePipeline: a file's windows in one call), end to end."""
    server: ServerProcess = make_server('[routes.whisper]\nbackend = "whisper"\nbatched = true\nbatch_size = 4\n')
    server.wait_serving("route/whisper")
    with Client(server.target) as client:
        short = client.transcribe(SEASHELLS).result(timeout=120)
        long = client.transcribe(FIXTURES / "long.ogg").result(timeout=300)
    assert isinstance(short, Transcript) and short.text == SENTENCE
    assert isinstance(long, Transcript) and 52 < long.duration < 53.5
    assert word_error_rate((FIXTURES / "long.txt").read_text(), long.text) < 0.1
    assert "BatchedInferencePipeline" in server.log() or "batched x4" in server.log()
