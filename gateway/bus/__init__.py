"""The event bus: committed revisions out to every replica's hub (``base``: the contract; ``memory``:
one process; the shared bus is ``gateway.redis.bus``)."""

from gateway.bus.base import EventBus, Handler, Resyncs
from gateway.bus.memory import MemoryBus

__all__ = ["EventBus", "Handler", "MemoryBus", "Resyncs"]
