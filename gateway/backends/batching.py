"""Batching across jobs: the encode and generate calls of several running transcriptions in one model call.

faster-whisper's decoding loop (prompts, timestamps, temperature fallback, VAD, word timestamps)
stays as it is: each job runs ``WhisperModel.transcribe`` in its own thread, as on the one-job path.
What changes is the CTranslate2 model underneath: :class:`BatchingModel` stands in for it, and its
``encode`` and ``generate`` park the calling thread while a single dispatcher thread gathers the
calls of the other jobs, then runs one encode (or one generate) for all of them and hands each
thread its own rows back.

When a batch runs (the two knobs of Triton's dynamic batcher and Ray Serve's ``@serve.batch``):

- at once, when every running job is waiting on a call (nobody else can come: one long file alone
  never waits), or when ``max_batch`` rows of one kind are waiting;
- otherwise when the oldest waiting call has waited ``max_wait`` seconds.

Calls are grouped by kind and by their decoding options (beam size, temperature, length limit...):
windows whose options differ never share a call, so each job decodes exactly as it would alone.
A job counts as running from the start of its transcription to its end: a new job joins at its
next window, a finished or cancelled one leaves without disturbing the batch (continuous batching).

Encoder outputs travel between the two calls as host arrays (``to_cpu``): a window's encoding can
then meet other windows in a later generate batch, whatever batch it was encoded in. A failing
batched call is retried one call at a time, so an error fails only the job whose window caused it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BatchStats", "BatchingModel"]

log = logging.getLogger(__name__)


class _Encoded:
    """One or more windows' encoder output, on the host. Passed back to the model as a StorageView."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def _storage(value: Any) -> Any:
    import ctranslate2

    if isinstance(value, _Encoded):
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(value.array))
    if isinstance(value, np.ndarray):
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(value))
    return value


def _key(value: Any) -> Any:
    """A hashable form of decoding options, so that calls with the same options share a batch."""
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    return value


@dataclass(eq=False)
class _Call:
    kind: str  # "encode" | "generate"
    key: Any
    rows: np.ndarray  # encode: features [n, mels, frames]; generate: encoder output [n, frames, d]
    prompts: list[Any]
    kwargs: dict[str, Any]
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])


@dataclass
class BatchStats:
    """What the dispatcher did: batches run and rows in them, by kind (for logs and benchmarks)."""

    batches: dict[str, int] = field(default_factory=lambda: {"encode": 0, "generate": 0})
    rows: dict[str, int] = field(default_factory=lambda: {"encode": 0, "generate": 0})
    busy: dict[str, float] = field(default_factory=lambda: {"encode": 0.0, "generate": 0.0})  # seconds in the model
    split: int = 0  # failed batches run again one call at a time
    largest: int = 0

    def mean_batch(self, kind: str = "generate") -> float:
        return self.rows[kind] / self.batches[kind] if self.batches[kind] else 0.0


class BatchingModel:
    """A stand-in for a ``ctranslate2.models.Whisper`` that batches ``encode`` and ``generate`` across
    threads. Everything else (``align``, ``detect_language``, attributes) goes to the real model, one
    call at a time, with the encoder output turned back into a StorageView."""

    def __init__(self, model: Any, max_batch: int, max_wait: float, sot_id: int | None = None) -> None:
        self._model = model
        self._sot_id = sot_id
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._sessions: set[int] = set()  # the threads of running jobs: their calls are expected
        self._closed = False
        self._model_lock = threading.Lock()  # the dispatcher and pass-through calls take turns
        self._thread = threading.Thread(target=self._dispatch, name="whisper-batcher", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    # -- the jobs' side ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Wraps one job's transcription: a batch waits (at most ``max_wait``) for the calls of the
        jobs inside a session, and never for a job that has left."""
        ident = threading.get_ident()
        with self._cond:
            self._sessions.add(ident)
        try:
            yield
        finally:
            with self._cond:
                self._sessions.discard(ident)
                self._cond.notify_all()

    def encode(self, features: Any, to_cpu: bool = False) -> _Encoded:
        rows = np.asarray(features, dtype=np.float32)
        if rows.ndim == 2:
            rows = rows[None]
        return _Encoded(self._submit(_Call("encode", ("encode", rows.shape[1:]), rows, [], {})))

    def generate(self, encoder_output: Any, prompts: list[Any], **kwargs: Any) -> list[Any]:
        rows = encoder_output.array if isinstance(encoder_output, _Encoded) else np.asarray(encoder_output)
        # CTranslate2 batches prompts only if <|startoftranscript|> sits at the same index in each and
        # the task tokens after it are the same: windows whose previous text differs in length go apart.
        key = ("generate", rows.shape[1:], str(rows.dtype), _key(kwargs), tuple(self._prompt_shape(p) for p in prompts))
        return list(self._submit(_Call("generate", key, rows, list(prompts), kwargs)))

    def _prompt_shape(self, prompt: list[Any]) -> tuple[Any, ...]:
        if self._sot_id is None or self._sot_id not in prompt:
            return (len(prompt), *prompt)
        index = prompt.index(self._sot_id)
        return (index, *prompt[index:])

    def align(self, encoder_output: Any, *args: Any, **kwargs: Any) -> Any:
        with self._model_lock:
            return self._model.align(_storage(encoder_output), *args, **kwargs)

    def detect_language(self, encoder_output: Any, *args: Any, **kwargs: Any) -> Any:
        with self._model_lock:
            return self._model.detect_language(_storage(encoder_output), *args, **kwargs)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _submit(self, call: _Call) -> Any:
        with self._cond:
            if self._closed:
                raise RuntimeError("the whisper batcher is closed")
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    # -- the dispatcher ----------------------------------------------------------------------------

    def _next_batch(self) -> list[_Call] | None:
        """Waits until a batch should run; returns its calls (oldest first), None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    for call in self._pending:
                        call.error = RuntimeError("the whisper batcher is closed")
                        call.done.set()
                    self._pending.clear()
                    return None
                if not self._pending:
                    self._cond.wait()
                    continue
                oldest = self._pending[0]
                group = [c for c in self._pending if c.key == oldest.key]
                rows = sum(c.size for c in group)
                everyone_waiting = len(self._pending) >= len(self._sessions)
                waited = time.monotonic() - oldest.arrived
                if rows >= self.max_batch or everyone_waiting or waited >= self.max_wait:
                    batch: list[_Call] = []
                    total = 0
                    for call in group:
                        if batch and total + call.size > self.max_batch:
                            break
                        batch.append(call)
                        total += call.size
                    for call in batch:
                        self._pending.remove(call)
                    return batch
                self._cond.wait(timeout=self.max_wait - waited)

    def _dispatch(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # pragma: no cover - _run hands errors to the calls
                for call in batch:
                    if not call.done.is_set():
                        call.error = exc
                        call.done.set()

    def _run(self, batch: list[_Call]) -> None:
        kind = batch[0].kind
        self.stats.batches[kind] += 1
        self.stats.rows[kind] += sum(c.size for c in batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        try:
            results = self._call_model(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done.set()
                return
            log.warning("whisper batcher: a %s batch of %d failed (%s); running its calls one by one",
                        kind, len(batch), exc)
            self.stats.split += 1
            for call in batch:
                try:
                    call.result = self._call_model([call])[0]
                except Exception as one:
                    call.error = one
                call.done.set()
            return
        for call, result in zip(batch, results, strict=True):
            call.result = result
            call.done.set()

    def _call_model(self, batch: list[_Call]) -> list[Any]:
        """One model call for the batch; the result of each call, in order."""
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([c.rows for c in batch])
        started = time.perf_counter()
        try:
            return self._call_model_locked(batch, rows)
        finally:
            self.stats.busy[batch[0].kind] += time.perf_counter() - started

    def _call_model_locked(self, batch: list[_Call], rows: np.ndarray) -> list[Any]:
        with self._model_lock:
            if batch[0].kind == "encode":
                output = self._model.encode(_storage(rows), to_cpu=True)
                array = np.array(output)  # a host copy; the StorageView is freed
                results: list[Any] = []
                start = 0
                for call in batch:
                    results.append(array[start:start + call.size])
                    start += call.size
                return results
            prompts = [p for c in batch for p in c.prompts]
            generated = self._model.generate(_storage(rows), prompts, **batch[0].kwargs)
        results, start = [], 0
        for call in batch:
            results.append(generated[start:start + call.size])
            start += call.size
        return results
