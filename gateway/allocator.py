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

_M_MMAP_THRESHOLD = -3
TRIM_INTERVAL_SECONDS = 1.0

_lock = threading.Lock()
_last_trim = 0.0
_pending: threading.Timer | None = None


@functools.cache
def _glibc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def map_large_allocations(threshold: int = 1 << 20) -> None:
    """Allocations of ``threshold`` bytes and more are mapped on their own."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)


def trim() -> None:
    """Hands freed heap memory back to the system (malloc_trim), at most once a second: a call within
    the second after the last trim schedules one for when the second is over (so the last of a burst
    of large requests is always followed by a trim)."""
    global _last_trim, _pending
    now = time.monotonic()
    with _lock:
        wait = _last_trim + TRIM_INTERVAL_SECONDS - now
        if wait > 0:
            if _pending is None:
                _pending = threading.Timer(wait, _trailing_trim)
                _pending.daemon = True
                _pending.start()
            return
        _last_trim = now
    _malloc_trim()


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
