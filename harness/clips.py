"""Short clips of speech for the throughput benchmarks, cut from the committed fixtures (numpy only).

Many short jobs are what batching across jobs is for: callers' voice commands, phone prompts, chat
voice notes. The clips are cut from the long fixture at its quietest 20 ms frame within each 3-6 s
span (so that few words are cut in two), starting at several offsets so that 32 clips are all
different, plus the seashells sentence. The same function runs on the GPU machine (from PCM) and
here (from the decoded fixtures), so both tables time the same audio.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_RATE", "cut_clips", "pcm16", "quietest_cut", "wav_bytes"]

SAMPLE_RATE = 16_000
_FRAME = SAMPLE_RATE // 50  # 20 ms


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono float samples as a WAV file, in memory."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm16(samples))
    return buffer.getvalue()


def quietest_cut(samples: np.ndarray, start: int, low: float, high: float) -> int:
    """The sample index of the quietest 20 ms frame between ``start + low`` and ``start + high`` seconds."""
    lo, hi = start + int(low * SAMPLE_RATE), min(samples.size, start + int(high * SAMPLE_RATE))
    if hi - lo < _FRAME:
        return hi
    frames = samples[lo:hi - (hi - lo) % _FRAME].reshape(-1, _FRAME)
    return lo + int(np.argmin((frames ** 2).mean(axis=1))) * _FRAME + _FRAME // 2


def cut_clips(long: np.ndarray, sentence: np.ndarray, count: int = 32, low: float = 3.0,
              high: float = 6.0) -> list[np.ndarray]:
    """``count`` clips of ``low`` to ``high`` seconds: the sentence first, then cuts of ``long``."""
    clips = [sentence[: int(high * SAMPLE_RATE)]]
    offsets = (0.0, 1.1, 2.3, 0.6, 1.7, 2.9)
    for offset in offsets:
        start = int(offset * SAMPLE_RATE)
        while len(clips) < count and start + int(low * SAMPLE_RATE) < long.size:
            end = quietest_cut(long, start, low, high)
            if (end - start) / SAMPLE_RATE >= low:
                clips.append(long[start:end])
            start = end
        if len(clips) >= count:
            break
    return clips[:count]
