"""Audio in: a cheap probe at Submit, and decoding to 16 kHz mono float32 when the job runs (PyAV).

PyAV bundles FFmpeg, so any container and codec FFmpeg reads is accepted (WAV, FLAC, MP3, Ogg,
M4A, WebM, ...). The probe opens the container from memory and reads its header only: empty input,
text, a truncated header or random bytes are refused at Submit with a reason; what only decoding
can reveal fails the job with a reason that names the decoding problem.
"""

from __future__ import annotations

import gc
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

from gateway.errors import Code, FieldViolation, InvalidArgument, JobError

__all__ = ["SAMPLE_RATE", "AudioInfo", "Sections", "decode", "probe", "stream"]

SAMPLE_RATE = 16_000
_GROUP_SAMPLES = 500_000  # input samples resampled at once (decode_audio's grouping; about 10 s at 48 kHz)

logging.getLogger("libav").setLevel(logging.ERROR)
# The header is enough to tell a readable audio file: FFmpeg's default probe analyses 5 s of
# audio (30 ms for a 44.1 kHz stereo WAV), this analyses 0.2 s of it (4 ms).
_PROBE_OPTIONS = {"probesize": "262144", "analyzeduration": "200000"}


@dataclass(frozen=True, slots=True)
class AudioInfo:
    container: str
    codec: str
    duration: float | None  # seconds, when the container says


def _refuse(field: str, reason: str, description: str) -> InvalidArgument:
    return InvalidArgument.fields(FieldViolation(field, description), reason=reason)


Source = bytes | Path  # the audio in memory, or in a file (fetched from a URL): never read whole


def _open(source: Source) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # (the caller closes it)


def size_of(source: Source) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


def probe(data: Source, field: str, max_bytes: int, max_seconds: float) -> AudioInfo:
    """Reads the container's header; raises InvalidArgument with a reason for what it can tell."""
    size = size_of(data)
    if not size:
        raise _refuse(field, "AUDIO_EMPTY", "the audio is empty")
    if size > max_bytes:
        too_large = _refuse(field, "AUDIO_TOO_LARGE", f"{size} bytes of audio, over this route's limit of {max_bytes}")
        too_large.metadata = {"limit_bytes": str(max_bytes), "size_bytes": str(size)}  # as REQUEST_TOO_LARGE
        raise too_large
    try:
        with _open(data) as file, av.open(file, mode="r", metadata_errors="ignore", options=_PROBE_OPTIONS) as container:
            streams = container.streams.audio
            if not streams:
                raise _refuse(field, "AUDIO_NO_STREAM", f"no audio stream in this {container.format.name} data")
            stream = streams[0]
            if stream.codec_context is None:
                raise _refuse(field, "AUDIO_UNSUPPORTED_CODEC", f"no decoder for the audio codec in this {container.format.name} data")
            duration = None
            if container.duration:
                duration = container.duration / av.time_base
            elif stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            info = AudioInfo(container.format.name, stream.codec_context.name, duration)
    except InvalidArgument:
        raise
    except (av.error.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise _refuse(field, "AUDIO_UNREADABLE", f"not a readable audio file: {_ffmpeg_message(exc)}") from None
    if info.duration is not None and info.duration > max_seconds:
        raise _refuse(
            field, "AUDIO_TOO_LONG", f"{info.duration:.0f} s of audio, over this route's limit of {max_seconds:.0f} s"
        )
    return info


def stream(data: Source, max_seconds: float) -> Iterator[np.ndarray]:
    """The audio as consecutive blocks of 16 kHz mono float32 samples (about 10 s each), decoded as
    they are asked for: what ``decode`` returns whole, sample for sample (the same frames through the
    same resampler as faster-whisper's ``decode_audio``), without ever holding all of it. Raises
    JobError (AUDIO_DECODE_FAILED, AUDIO_TOO_LONG) when the problem shows, possibly after some blocks."""
    from av.audio.fifo import AudioFifo
    from av.audio.resampler import AudioResampler

    limit = int(max_seconds * SAMPLE_RATE)
    total = 0
    try:
        with _open(data) as file, av.open(file, mode="r", metadata_errors="ignore") as container:
            resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            fifo = AudioFifo()

            def resampled(frame: Any) -> Iterator[np.ndarray]:
                nonlocal total
                for out in resampler.resample(frame):
                    block = out.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                    total += block.size
                    if total > limit:
                        raise JobError(f"over {max_seconds:.0f} s of audio, this route's limit", "AUDIO_TOO_LONG",
                                       Code.INVALID_ARGUMENT)
                    yield block

            for frame in _valid_frames(container.decode(audio=0)):
                frame.pts = None  # grouped regardless of timestamps, as decode_audio does
                fifo.write(frame)
                if fifo.samples >= _GROUP_SAMPLES:
                    yield from resampled(fifo.read())
            if fifo.samples:
                yield from resampled(fifo.read())
            yield from resampled(None)  # flushes the resampler
    except JobError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, EOFError, RuntimeError) as exc:
        raise JobError(
            f"the audio could not be decoded: {_ffmpeg_message(exc)}", "AUDIO_DECODE_FAILED", Code.INVALID_ARGUMENT
        ) from None
    finally:
        # PyAV's resampler graph is freed by the collector only (faster-whisper issue 390); the young
        # generations hold it, and collecting them costs about a millisecond, where a full collection
        # of a gateway's heap cost tens: a tenth of a short job's latency.
        gc.collect(1)
    if total == 0:
        raise JobError(
            f"the {_describe(data)} decoded to no audio: the file is corrupt or mislabelled",
            "AUDIO_DECODE_FAILED", Code.INVALID_ARGUMENT,
        )


class Sections:
    """Sections of a stream of blocks (``stream``): ``read(start, length)`` gives the samples from
    ``start`` on (at most ``length``), reading blocks only as far as that needs and keeping nothing
    from before ``start`` (which only moves forward): at most a section and a block in memory."""

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self._blocks = blocks
        self._kept = np.zeros(0, np.float32)  # samples from ``_base`` on
        self._base = 0
        self._exhausted = False

    def read(self, start: int, length: int) -> tuple[np.ndarray, bool]:
        """(samples from ``start``, whether they run to the end of the audio)."""
        drop = min(max(0, start - self._base), self._kept.size)  # what lies before the section goes
        self._kept, self._base = self._kept[drop:], self._base + drop
        parts, have = [self._kept], self._kept.size  # samples [_base, _base + have); _base <= start
        while not self._exhausted and self._base + have <= start + length:  # one more than needed: the end?
            block = next(self._blocks, None)
            if block is None:
                self._exhausted = True
                continue
            if not have and self._base < start:  # a resumed job: what comes before its start is not kept
                skip = min(start - self._base, block.size)
                block, self._base = block[skip:], self._base + skip
            parts.append(block)
            have += block.size
        if len(parts) > 1:
            self._kept = np.concatenate(parts)
        return self._kept[:length], self._exhausted and self._kept.size <= length

    def total(self) -> int:
        """How many samples the audio has (reads what is left of it)."""
        return self._base + self._kept.size + sum(block.size for block in self._blocks)


def _valid_frames(frames: Iterator[Any]) -> Iterator[Any]:
    """Skips frames FFmpeg cannot decode, as decode_audio does."""
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def decode(data: bytes, max_seconds: float) -> np.ndarray:
    """The whole audio as 16 kHz mono float32 samples; JobError (AUDIO_DECODE_FAILED...) if it cannot be.
    For short audio and tools: the whisper route transcribes from ``stream``, a section at a time."""
    blocks = list(stream(data, max_seconds))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _describe(data: Source) -> str:
    try:
        with _open(data) as file, av.open(file, mode="r", metadata_errors="ignore") as container:
            return f"{container.streams.audio[0].codec_context.name} stream in this {container.format.name} file"
    except Exception:
        return "audio"


def _ffmpeg_message(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.split(": '<")[0].strip()
