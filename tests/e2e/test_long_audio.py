"""Long audio: the whisper route decodes and transcribes a section at a time (``section_seconds``), so a
job's memory does not grow with its duration (measured in ``make bench``, section ``long_audio``).
Here: the streamed decoding gives exactly the samples faster-whisper's whole-file decoding gives, and a
job several sections long comes out whole: every part of the audio transcribed once, in order, with
word times in their segments, progress rising, and the transcript growing while it runs."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from gateway.backends import audio as audio_io
from gateway.errors import JobError
from gateway_client import Client, JobState, Transcript
from harness import FIXTURES, ServerProcess
from harness.audio import repeated_speech, word_error_rate

LONG = FIXTURES / "long.ogg"


@pytest.mark.parametrize("name", ["long.ogg", "seashells.wav", "seashells_44k_stereo.wav"])
def test_streamed_decoding_gives_the_samples_of_whole_file_decoding(name: str) -> None:
    path = FIXTURES / name
    blocks = list(audio_io.stream(path.read_bytes(), max_seconds=3600))
    whole = decode_audio(str(path), sampling_rate=audio_io.SAMPLE_RATE)
    assert np.array_equal(np.concatenate(blocks), whole)
    assert max(b.size for b in blocks) <= 32 * audio_io.SAMPLE_RATE  # blocks of 500,000 input samples at most


def test_streamed_decoding_stops_at_the_duration_limit() -> None:
    blocks = audio_io.stream(LONG.read_bytes(), max_seconds=20)
    with pytest.raises(JobError) as raised:
        for _ in blocks:
            pass
    assert raised.value.reason == "AUDIO_TOO_LONG"


@pytest.mark.parametrize("block", [1, 7, 100, 333, 1000, 2000])
@pytest.mark.parametrize("first", [0, 5, 333, 999])
def test_sections_give_the_samples_from_each_start_and_say_where_the_audio_ends(block: int, first: int) -> None:
    """The whisper route's window over the decoded blocks, whatever their size and wherever a resumed
    job starts: each section's samples are exactly the audio's from its start, and the last says so."""
    audio = np.arange(1000, dtype=np.float32)
    sections = audio_io.Sections(iter([audio[i:i + block] for i in range(0, audio.size, block)]))
    start = first
    while True:
        samples, last = sections.read(start, 120)
        assert np.array_equal(samples, audio[start:start + 120])
        assert last is (start + 120 >= audio.size)
        if last:
            break
        start += 97
    assert sections.total() == audio.size


@pytest.mark.slow
def test_a_job_of_several_sections_is_transcribed_whole_and_in_order(
    make_server: Callable[..., ServerProcess],
) -> None:
    clip_seconds = decode_audio(str(LONG)).size / audio_io.SAMPLE_RATE
    audio = repeated_speech(LONG.read_bytes(), 3 * clip_seconds)  # three times the fixture: 158 s
    reference = " ".join([(FIXTURES / "long.txt").read_text()] * 3)
    server = make_server('[routes.whisper]\nbackend = "whisper"\nsection_seconds = 60\n')
    server.wait_serving("route/whisper")
    with Client(server.target, timeout=60) as client:
        job, _ = client.submit_job("whisper", audio=audio, word_timestamps=True)
        updates = list(client.watch(job.id))
        result = client.fetch(job.id).result
    assert isinstance(result, Transcript)
    assert abs(result.duration - 3 * clip_seconds) < 0.5
    wer = word_error_rate(reference, result.text)
    assert wer < 0.1, (wer, result.text)

    segments = result.segments
    assert segments[0].start < 1.0 and segments[-1].end > result.duration - 5  # from the start to the end
    for earlier, later in itertools.pairwise(segments):  # once each, in order: no part twice, none skipped
        assert later.start >= earlier.end - 0.05, (earlier, later)
        assert later.start - earlier.end < 10, (earlier, later)
    assert sum(s.start >= 60 for s in segments) >= 10  # most of it came from the sections after the first
    for segment in segments:  # word times are times in the file, inside their segment
        assert segment.words
        assert all(segment.start - 0.5 <= w.start <= w.end <= segment.end + 0.5 for w in segment.words), segment

    running = [u for u in updates if u.state is JobState.RUNNING and u.segments]
    assert len(running) >= 10 and len(running[0].segments) < len(segments)  # it grew while it ran
    progress = [u.progress for u in running]
    assert progress == sorted(progress) and progress[-1] > 0.8
    assert updates[-1].segments == segments
