"""Transcripts as subtitles: the one writer (``gateway_client._subtitles``, a copy of
``gateway/subtitles.py``), ``Transcript.to_srt()``/``to_vtt()``/``to_text()`` and ``gateway-client
transcribe --format``. Whatever is written is read back by reference parsers, ``srt`` for SubRip and
``webvtt-py`` for WebVTT, never by our own code."""

from __future__ import annotations

import html
import itertools
import json
import re
import wave
from datetime import timedelta
from typing import Any

import pytest
import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_client import Client, Segment, Transcript
from gateway_client import _subtitles as subtitles
from harness import FIXTURES, ServerProcess, cli

SEASHELLS = FIXTURES / "seashells.wav"
LONG = FIXTURES / "long.ogg"


def wav_seconds(path: Any) -> float:
    with wave.open(str(path)) as audio:
        return audio.getnframes() / audio.getframerate()


def millis(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def vtt_millis(stamp: str) -> int:
    """HH:MM:SS.mmm (hours of any width, as webvtt-py gives them) as milliseconds."""
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d)\.(\d{3})", stamp)
    assert match, stamp
    hours, minutes, secs, ms = map(int, match.groups())
    return ((hours * 60 + minutes) * 60 + secs) * 1000 + ms


def td_millis(delta: timedelta) -> int:
    return delta // timedelta(milliseconds=1)


def expected(segments: list[tuple[float, float, str]]) -> list[tuple[int, int, str]]:
    """What a reader should find: a cue per segment with text, its whitespace collapsed, times in
    milliseconds, clamped to be non-negative and to end no earlier than they start."""
    out = []
    for start, end, text in segments:
        words = " ".join(text.split())
        if words:
            out.append((millis(start), millis(max(max(0.0, start), end)), words))
    return out


def read_srt(document: str) -> list[tuple[int, int, str]]:
    parsed = list(srt.parse(document))
    assert [c.index for c in parsed] == list(range(1, len(parsed) + 1))
    return [(td_millis(c.start), td_millis(c.end), c.content) for c in parsed]


def read_vtt(document: str) -> list[tuple[int, int, str]]:
    assert document.startswith("WEBVTT\n\n")
    # webvtt-py gives the payload as written (entities kept): unescape as a WebVTT renderer would.
    return [(vtt_millis(c.start), vtt_millis(c.end), html.unescape(c.text)) for c in webvtt.from_string(document).captions]


TRICKY = [
    (0.0, 1.25, " She sells seashells"),          # whisper's leading space
    (1.25, 1.25, ""),                              # empty: no cue
    (1.3, 1.4, "  \n\t "),                         # only whitespace: no cue
    (1.5, 2.0, "line one\n\nline two"),            # a blank line would end an SRT cue: collapsed
    (2.0, 3.0, "a --> b"),                         # the cue timing arrow in the text
    (3.0, 4.0, "fish & chips <i>not a tag</i>"),   # WebVTT's escapes
    (3725.5, 3726.125, "over an hour"),            # 01:02:05,500
    (360_000.0, 360_001.0, "a hundred hours"),     # three digits of hours
    (-2.0, -1.0, "before the start"),              # negative: 00:00:00,000 both
    (10.0, 9.0, "backwards"),                      # ends before it starts: zero length
    (0.0004, 0.0006, "sub-millisecond"),           # rounds to 0 and 1 ms
]


def test_tricky_segments_read_back_as_srt() -> None:
    document = subtitles.srt(TRICKY)
    want = expected(TRICKY)
    assert len(want) == len(TRICKY) - 2
    assert read_srt(document) == want
    assert "01:02:05,500 --> 01:02:06,125" in document and "100:00:00,000 --> 100:00:01,000" in document
    assert "\n00:00:00,000 --> 00:00:00,000\nbefore the start\n" in document
    assert "\n00:00:10,000 --> 00:00:10,000\nbackwards\n" in document


def test_tricky_segments_read_back_as_vtt(tmp_path: Any) -> None:
    document = subtitles.vtt(TRICKY)
    assert read_vtt(document) == expected(TRICKY)
    path = tmp_path / "tricky.vtt"  # the file reader too, as a player would open it
    path.write_text(document)
    assert [(vtt_millis(c.start), vtt_millis(c.end), html.unescape(c.text)) for c in webvtt.read(str(path)).captions] == \
        expected(TRICKY)
    timing = re.compile(r"\d{2,}:\d\d:\d\d\.\d{3} --> \d{2,}:\d\d:\d\d\.\d{3}")
    for line in document.splitlines():  # "-->" only in timing lines, and no "<" at all
        assert ("-->" not in line or timing.fullmatch(line)) and "<" not in line, line
    assert "a --&gt; b" in document and "fish &amp; chips &lt;i>" in document
    assert "01:02:05.500 --> 01:02:06.125" in document


def test_nothing_to_say() -> None:
    assert subtitles.srt([]) == "" and subtitles.srt([(0, 1, " ")]) == ""
    assert subtitles.vtt([]) == "WEBVTT\n\n" and webvtt.from_string(subtitles.vtt([])).captions == []
    assert subtitles.text([(0, 1, ""), (1, 2, " ")]) == ""


def test_transcript_methods_use_the_writer() -> None:
    transcript = Transcript(
        text="She sells seashells by the seashore.",
        segments=(Segment(0.0, 1.2, " She sells seashells"), Segment(1.2, 1.2, " "),
                  Segment(1.2, 2.4, " by the\nseashore.")),
        language="en", language_probability=1.0, duration=2.49,
    )
    triples = [(s.start, s.end, s.text) for s in transcript.segments]
    assert transcript.to_srt() == subtitles.srt(triples)
    assert transcript.to_vtt() == subtitles.vtt(triples)
    assert read_srt(transcript.to_srt()) == [(0, 1200, "She sells seashells"), (1200, 2400, "by the seashore.")]
    assert read_vtt(transcript.to_vtt()) == read_srt(transcript.to_srt())
    assert transcript.to_text() == transcript.text
    empty = Transcript("", (), "en", 1.0, 0.0)
    assert (empty.to_srt(), empty.to_vtt(), empty.to_text()) == ("", "WEBVTT\n\n", "")


_times = st.floats(min_value=-10.0, max_value=400_000.0, allow_nan=False)
_pieces = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8) | st.sampled_from(
    ["-->", "&", "<", ">", "\n", "\n\n", "\r\n", "\t", " ", "&amp;", "1", "00:00:01,000 --> 00:00:02,000"])
_texts = st.lists(_pieces, max_size=5).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_times, _times, _texts), max_size=6))
def test_any_segments_read_back(segments: list[tuple[float, float, str]]) -> None:
    want = expected(segments)
    assert read_srt(subtitles.srt(segments)) == want
    assert read_vtt(subtitles.vtt(segments)) == want
    assert subtitles.text(segments) == " ".join(text for _s, _e, text in want)


# -- a real whisper gateway ------------------------------------------------------------------------


def transcribe(server: ServerProcess, *args: str, expect: int = 0) -> str:
    done = cli(server.target, "transcribe", str(SEASHELLS), "--quiet", "--language", "en", *args, timeout=180)
    assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stderr == ""
    return done.stdout


def check_cues(cues: list[tuple[int, int, str]], duration: float) -> None:
    assert cues, "no cue"
    assert "seashells" in " ".join(text for _s, _e, text in cues).lower()
    for (start, end, _text), (next_start, _next_end, _) in itertools.pairwise(cues):
        assert start <= end and start <= next_start, cues  # in order
    assert cues[0][0] >= 0 and cues[-1][0] <= cues[-1][1] <= (duration + 0.5) * 1000, (cues, duration)


@pytest.fixture(scope="module")
def duration(whisper_server: ServerProcess) -> float:
    """The audio's length, as the server reports it (--format json), checked against the WAV header."""
    [response] = [json.loads(line) for line in transcribe(whisper_server, "--format", "json").splitlines()]
    seconds = float(response["transcript"]["durationSeconds"])
    assert seconds == pytest.approx(wav_seconds(SEASHELLS), abs=0.05)
    return seconds


def test_cli_srt(whisper_server: ServerProcess, duration: float) -> None:
    document = transcribe(whisper_server, "--format", "srt")
    check_cues(read_srt(document), duration)
    assert document.endswith("\n") and not document.endswith("\n\n")


def test_cli_vtt(whisper_server: ServerProcess, duration: float) -> None:
    document = transcribe(whisper_server, "--format", "vtt")
    check_cues(read_vtt(document), duration)


def test_cli_text_is_the_default(whisper_server: ServerProcess) -> None:
    assert transcribe(whisper_server, "--format", "text") == "She sells seashells by the seashore.\n"


def test_cli_formats_are_exclusive() -> None:
    done = cli("127.0.0.1:1", "transcribe", str(SEASHELLS), "--json", "--format", "srt")
    assert done.returncode == 2 and "not allowed with" in done.stderr and done.stdout == ""
    done = cli("127.0.0.1:1", "transcribe", str(SEASHELLS), "--format", "ass")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_client_api_to_srt_and_to_vtt(whisper_server: ServerProcess, duration: float) -> None:
    with Client(whisper_server.target) as client:
        transcript = client.transcribe(str(SEASHELLS), language="en").result(timeout=180)
    assert transcript.duration == pytest.approx(duration)
    check_cues(read_srt(transcript.to_srt()), transcript.duration)
    check_cues(read_vtt(transcript.to_vtt()), transcript.duration)
    assert read_vtt(transcript.to_vtt()) == read_srt(transcript.to_srt())
    assert transcript.to_text() == transcript.text == "She sells seashells by the seashore."


def test_cli_vtt_at_timeout_prints_what_it_has(whisper_server: ServerProcess) -> None:
    done = cli(whisper_server.target, "transcribe", str(LONG), "--quiet", "--format", "vtt", "--timeout", "0.2")
    match = re.search(r"timed out after 0.2 s: job ([0-9a-f]{32}) is still", done.stderr)
    try:
        assert done.returncode == 5 and match, done.stderr
        assert done.stdout.startswith("WEBVTT\n\n")
        cues = read_vtt(done.stdout)  # the cues so far, however many
        assert all(start <= end for start, end, _ in cues)
    finally:
        if match:
            assert cli(whisper_server.target, "cancel", match.group(1)).returncode == 0
