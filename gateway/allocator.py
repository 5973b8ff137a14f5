"""glibc's allocator, tuned for a process that handles large uploads now and then.

By default glibc serves large allocations from the heap once a large block has been freed (its mmap
threshold rises), and keeps freed heap memory: after a burst of large uploads the process stays at its
peak size. Here large allocations are mapped on their own (freed, they go back to the system), and the
heap is trimmed after large work, at most once a second. Both do nothing where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from typing import Any

__all__ = ["map_large_allocations", "trim"]

_M_MMAP_THRESHOLD = -3
TRIM_INTERVAL_SECONDS = 1.0

_lock = threading.Lock()
_last_trim = 0.0


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
    """Hands freed heap memory back to the system (malloc_trim), unless that was done in the last second."""
    global _last_trim
    now = time.monotonic()
    with _lock:
        if now - _last_trim < TRIM_INTERVAL_SECONDS:
            return
        _last_trim = now
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
