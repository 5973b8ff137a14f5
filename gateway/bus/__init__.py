"""The event bus: committed revisions out to every replica's hub (``base``: the contract; ``memory``:
one process)."""

from gateway.bus.base import EventBus, Handler
from gateway.bus.memory import MemoryBus

__all__ = ["EventBus", "Handler", "MemoryBus"]
