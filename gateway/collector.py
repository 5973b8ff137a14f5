"""Python's cyclic garbage collector, set for a server that makes many short-lived objects per call.

CPython collects its youngest generation every 700 container objects made (net of those freed), and the
older ones every tenth time. A Submit and its echo job make enough that a collection ran every ten jobs,
and each scanned every object still young, with a full collection of the whole heap (the gRPC server,
the settings, protobuf's descriptors: some 80,000 objects) now and then: 95 us per job measured, a fifth
of the event loop's time per Submit (issue 27). Once a process serves, what it made to start is moved out
of the collector's sight (``gc.freeze``: it lives as long as the process anyway), and the youngest
generation is collected every 20,000 objects instead: 5 us per job.

Memory held only by reference cycles now waits longer to be freed, at most those 20,000 objects' worth;
the large buffers that matter (a request's audio, kept by a finished call's frames) are collected as soon
as the large work ends (``gateway.allocator.trim``).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "before_shutdown", "settle_after_startup"]

YOUNG_THRESHOLD = 20_000


def settle_after_startup() -> None:
    """Called once, when the process has started serving (not by a library user's process)."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def before_shutdown() -> None:
    """Called once the process stops serving: what startup made is the collector's again, so that the
    objects of it in reference cycles are finalized at exit as they would be without the freeze."""
    gc.unfreeze()
