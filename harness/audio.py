"""Test speech and how close a transcript is to it: the fixtures' known sentence, WAV files made to
measure, and the word error rate."""

from __future__ import annotations

import io
import re
import struct
import wave

from harness.process import ROOT

__all__ = ["SEASHELLS", "SENTENCE", "repeated_speech", "silence_wav", "wav_with_codec_tag", "word_error_rate"]

SEASHELLS = ROOT / "tests" / "fixtures" / "seashells.wav"  # flite, kal16
SENTENCE = "She sells seashells by the seashore."


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's length (case and punctuation ignored)."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def silence_wav(seconds: float) -> bytes:
    """A 16 kHz mono 16-bit WAV of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return buffer.getvalue()


def wav_with_codec_tag(tag: int) -> bytes:
    """The seashells WAV claiming another codec (its format tag replaced): readable, not decodable."""
    data = bytearray(SEASHELLS.read_bytes())
    data[20:22] = struct.pack("<H", tag)
    return bytes(data)


def repeated_speech(data: bytes, seconds: float, bit_rate: int = 24_000) -> bytes:
    """The clip's audio repeated to ``seconds``, as Ogg/Opus (mono, 16 kHz in, 24 kbit/s by default)."""
    import av
    import numpy as np

    from gateway.backends.audio import SAMPLE_RATE, decode

    clip = decode(data, 1e9)
    samples = np.tile(clip, int(seconds * SAMPLE_RATE) // clip.size + 1)[: int(seconds * SAMPLE_RATE)]
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    out = io.BytesIO()
    with av.open(out, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.bit_rate = bit_rate
        stream.layout = "mono"  # type: ignore[union-attr]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        step = SAMPLE_RATE * 10
        for start in range(0, pcm.size, step):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + step], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for resampled in resampler.resample(frame):
                container.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return out.getvalue()
