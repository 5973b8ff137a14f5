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

Encoder outputs stay where the model computed them (on the GPU with CUDA): each job holds a view of
its rows of the encoded batch. When the windows of a generate batch are the rows of one encoded batch
(the usual case: jobs encoded together decode together), the generate call reads them in place, with
no copy; otherwise their rows are gathered on the host and handed over as one array. A failing
batched call is retried one call at a time, so an error fails only the job whose window caused it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BatchStats", "BatchingModel"]

log = logging.getLogger(__name__)


class _CudaRows:
    """Rows [start, stop) of a CUDA StorageView, as an object with the CUDA array interface, so that
    ``StorageView.from_array`` makes a view of them without a copy (and without torch). It holds the
    StorageView, and the view holds it (from_array keeps its argument alive)."""

    def __init__(self, storage: Any, start: int, stop: int) -> None:
        interface = storage.__cuda_array_interface__
        shape = tuple(interface["shape"])
        row_bytes = np.dtype(interface["typestr"]).itemsize * math.prod(shape[1:])
        self.storage = storage
        self.__cuda_array_interface__ = {
            "shape": (stop - start, *shape[1:]), "typestr": interface["typestr"],
            "data": (interface["data"][0] + start * row_bytes, False), "version": 3, "strides": None,
        }


class _EncodedBatch:
    """The encoder output of one batch, where the model left it (a StorageView on its device)."""

    __slots__ = ("_host", "rows", "storage")

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.rows = int(storage.shape[0])
        self._host: np.ndarray | None = None

    def host(self) -> np.ndarray:
        """The whole batch as a host array (a view of a CPU storage; one copy from a GPU, made once)."""
        if self._host is None:
            storage = self.storage
            if storage.device == "cuda":
                import ctranslate2

                storage = storage.to_device(ctranslate2.Device.cpu)
            self._host = np.asarray(storage)  # numpy keeps the storage alive
        return self._host

    def view(self, start: int, stop: int) -> Any:
        """Rows [start, stop) as a StorageView on the model's device, without a copy."""
        import ctranslate2

        if start == 0 and stop == self.rows:
            return self.storage
        if self.storage.device == "cuda":
            return ctranslate2.StorageView.from_array(_CudaRows(self.storage, start, stop))
        return ctranslate2.StorageView.from_array(self.host()[start:stop])


class _Encoded:
    """What ``encode`` hands a job: its rows of an encoded batch. Passed back as a StorageView."""

    __slots__ = ("batch", "start", "stop")

    def __init__(self, batch: _EncodedBatch, start: int, stop: int) -> None:
        self.batch, self.start, self.stop = batch, start, stop

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stop - self.start, *tuple(self.batch.storage.shape)[1:])

    def storage(self) -> Any:
        return self.batch.view(self.start, self.stop)

    def host(self) -> np.ndarray:
        return self.batch.host()[self.start:self.stop]


def _encoded(value: Any) -> _Encoded:
    """An encoder output from elsewhere (a StorageView or an array) as an _Encoded of its own."""
    if isinstance(value, _Encoded):
        return value
    if isinstance(value, np.ndarray):
        import ctranslate2

        value = ctranslate2.StorageView.from_array(np.ascontiguousarray(value))
    return _Encoded(_EncodedBatch(value), 0, int(value.shape[0]))


def _storage(value: Any) -> Any:
    return _encoded(value).storage()


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
    size: int  # windows in this call
    features: np.ndarray | None  # encode: [n, mels, frames]
    encoded: _Encoded | None  # generate: the encoder output of its n windows
    prompts: list[Any]
    kwargs: dict[str, Any]
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def order(self) -> tuple[int, int]:
        """Generate calls are run in the order of their rows in the encoded batches."""
        assert self.encoded is not None
        return id(self.encoded.batch), self.encoded.start


@dataclass
class BatchStats:
    """What the dispatcher did: batches run and rows in them, by kind (for logs and benchmarks)."""

    batches: dict[str, int] = field(default_factory=lambda: {"encode": 0, "generate": 0})
    rows: dict[str, int] = field(default_factory=lambda: {"encode": 0, "generate": 0})
    busy: dict[str, float] = field(default_factory=lambda: {"encode": 0.0, "generate": 0.0})  # seconds in the model
    split: int = 0  # failed batches run again one call at a time
    gathered: int = 0  # generate batches whose windows came from several encoded batches (copied)
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
        call = _Call("encode", ("encode", rows.shape[1:]), int(rows.shape[0]), rows, None, [], {})
        encoded: _Encoded = self._submit(call)
        return encoded

    def generate(self, encoder_output: Any, prompts: list[Any], **kwargs: Any) -> list[Any]:
        encoded = _encoded(encoder_output)
        # CTranslate2 batches prompts only if <|startoftranscript|> sits at the same index in each and
        # the task tokens after it are the same: windows whose previous text differs in length go apart.
        key = ("generate", encoded.shape[1:], str(encoded.batch.storage.dtype), _key(kwargs),
               tuple(self._prompt_shape(p) for p in prompts))
        return list(self._submit(_Call("generate", key, encoded.shape[0], None, encoded, list(prompts), kwargs)))

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
                    if oldest.kind == "generate":
                        batch.sort(key=_Call.order)
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
        started = time.perf_counter()
        try:
            if batch[0].kind == "encode":
                return self._encode(batch)
            return self._generate(batch)
        finally:
            self.stats.busy[batch[0].kind] += time.perf_counter() - started

    def _encode(self, batch: list[_Call]) -> list[Any]:
        import ctranslate2

        features = [c.features for c in batch if c.features is not None]
        rows = features[0] if len(features) == 1 else np.concatenate(features)
        with self._model_lock:
            encoded = _EncodedBatch(self._model.encode(ctranslate2.StorageView.from_array(rows), to_cpu=False))
        results: list[Any] = []
        start = 0
        for call in batch:
            results.append(_Encoded(encoded, start, start + call.size))
            start += call.size
        return results

    def _generate(self, batch: list[_Call]) -> list[Any]:
        import ctranslate2

        encoded = [c.encoded for c in batch if c.encoded is not None]
        first = encoded[0]
        if all(e.batch is first.batch for e in encoded) and all(
                a.stop == b.start for a, b in itertools.pairwise(encoded)):
            features = first.batch.view(first.start, encoded[-1].stop)  # in place: no copy
        else:
            self.stats.gathered += 1
            features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate([e.host() for e in encoded])))
        prompts = [p for c in batch for p in c.prompts]
        with self._model_lock:
            generated = self._model.generate(features, prompts, **batch[0].kwargs)
        results, start = [], 0
        for call in batch:
            results.append(generated[start:start + call.size])
            start += call.size
        return results
