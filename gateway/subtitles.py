"""Transcripts as text, SubRip (SRT) and WebVTT: the one writer of the OpenAI-compatible face, the
Python client (``Transcript.to_srt()``, ``to_vtt()``) and ``gateway-client transcribe --format``.

Pure Python on (start, end, text) triples, so that the client carries the same file: the client's
``gateway_client/_subtitles.py`` is this module, copied by ``scripts/gen_protos.py`` (never edit it).

Cues keep the transcript's own segments, their text stripped; times are clamped to be non-negative
and each cue to end no earlier than it starts. Empty segments make no cue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["Cue", "cues", "srt", "text", "timestamp", "vtt"]

Cue = tuple[float, float, str]


def timestamp(seconds: float, separator: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or, with ``separator="."``, HH:MM:SS.mmm (WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def cues(segments: Iterable[Cue]) -> list[Cue]:
    out = []
    for start, end, words in segments:
        words = " ".join(words.split())
        if words:
            start = max(0.0, float(start))
            out.append((start, max(start, float(end)), words))
    return out


def srt(segments: Iterable[Cue]) -> str:
    blocks = [f"{i}\n{timestamp(start)} --> {timestamp(end)}\n{words}\n"
              for i, (start, end, words) in enumerate(cues(segments), 1)]
    return "\n".join(blocks)


def vtt(segments: Iterable[Cue]) -> str:
    blocks = [f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{_vtt_text(words)}\n"
              for start, end, words in cues(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def text(segments: Sequence[Cue]) -> str:
    """The whole text, one line (as OpenAI's ``response_format=text``)."""
    return " ".join(words for _start, _end, words in cues(segments))


def _vtt_text(words: str) -> str:
    """A cue's payload may not hold "-->" nor a bare "&" or "<" (WebVTT's cue text rules)."""
    return words.replace("&", "&amp;").replace("<", "&lt;").replace("-->", "--&gt;")
