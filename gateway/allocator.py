"""glibc's allocator, tuned for a process that handles large uploads now and then.

By default glibc serves large allocations from the heap once a large block has been freed (its mmap
threshold rises), and keeps freed heap memory: after a burst of large uploads the process stays at its
peak size. Here large allocations are mapped on their own (freed, they go back to the system), and the
heap is trimmed after large work, at most once a second. Both do nothing where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import threading
import time
from typing import Any

__all__ = ["map_large_allocations", "trim"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_INTERVAL_SECONDS = 1.0
TRIM_DELAY_SECONDS = 0.2

_lock = threading.Lock()
_last_trim = 0.0
_pending: threading.Timer | None = None


@functools.cache
def _glibc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def map_large_allocations(threshold: int = 1 << 20, trim_threshold: int | None = None) -> None:
    """Allocations of ``threshold`` bytes and more are mapped on their own (an upload's buffers: freed,
    they go back to the system at once). Setting it fixes glibc's trim threshold too, which would then
    hand the heap's top back after every large free and take it again at the next allocation. Both cost
    inference: CTranslate2 allocates many buffers of 1-4 MiB, and a transcription was 33% slower with a
    1 MiB threshold (13% was ascribed to trim churn alone: not reproduced on a shared 2-core machine,
    issue 27). So a process that runs whisper jobs maps from 4 MiB, and an API replica from 1 MiB; both
    keep glibc's eager trimming, which is what returns their memory after a burst of uploads. A high
    ``trim_threshold`` keeps it: most of a burst's transient memory is in the per-thread arenas, whose
    heaps (64 MiB at most) shrink only when a free leaves ``trim_threshold`` at their top, and which
    malloc_trim() never shrinks (glibc trims only the main arena's top)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        if trim_threshold is not None:
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)


def trim() -> None:
    """Hands freed heap memory back to the system (malloc_trim), soon after: a moment later (the caller's
    buffers are usually still referenced when it asks: a request's, until its handler returns), and at
    most once a second, however many ask."""
    global _pending
    with _lock:
        if _pending is not None:
            return
        wait = max(TRIM_DELAY_SECONDS, _last_trim + TRIM_INTERVAL_SECONDS - time.monotonic())
        _pending = threading.Timer(wait, _trailing_trim)
        _pending.daemon = True
        _pending.start()


def _trailing_trim() -> None:
    global _last_trim, _pending
    with _lock:
        _pending = None
        _last_trim = time.monotonic()
    _malloc_trim()


def _malloc_trim() -> None:
    gc.collect()  # large buffers held only by reference cycles (a finished call's frames) go first
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
