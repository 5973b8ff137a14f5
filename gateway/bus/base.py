"""The event bus contract: committed revisions, published once, delivered to every subscriber.

The job service publishes a revision once the store has committed it (so no watcher sees an event
that is not stored); every replica's hub subscribes once and fans the events out to its own
watchers. Where the store's commit itself publishes (the Redis engine: its scripts PUBLISH in the
same atomic step that stores the revision), the bus only subscribes: ``publishes`` is False and
``publish`` sends nothing. A subscription may ask for one job's or one tenant's events only. Delivery is in commit
order per job; a shared bus (Redis) may lose events across a reconnect, which subscribers repair
from the store (each event carries its job's revision and the store keeps every revision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from gateway.hub import JobEvent

__all__ = ["EventBus", "Handler", "Resyncs", "Unsubscribe"]

Handler = Callable[[JobEvent], None]
Unsubscribe = Callable[[], None]


class EventBus(Protocol):
    publishes: bool  # publish() delivers; False: the store's commit published the event already

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, event: JobEvent) -> None:
        """Hands a committed revision to every subscriber (on every replica, for a shared bus); a bus
        that does not publish (``publishes`` False) sends nothing, its store having sent it."""
        ...

    def subscribe(self, handler: Handler, *, job_id: str | None = None, tenant: str | None = None) -> Unsubscribe:
        """Calls ``handler`` (on the event loop) with every event, or only one job's or tenant's;
        answers the function that ends the subscription."""
        ...


@runtime_checkable
class Resyncs(Protocol):
    """A bus that may lose events (a shared one, across a reconnection) and says when it may have."""

    def on_resync(self, listener: Callable[[], None]) -> None:
        """``listener()`` after the bus was connected again: events may have been lost meanwhile, and
        subscribers read what they missed from the store."""
        ...
