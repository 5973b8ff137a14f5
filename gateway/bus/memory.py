"""The in-process event bus: publish calls every matching subscriber at once, in order."""

from __future__ import annotations

import logging

from gateway.bus.base import Handler, Unsubscribe
from gateway.hub import JobEvent

__all__ = ["MemoryBus"]

log = logging.getLogger(__name__)


class MemoryBus:
    publishes = True  # publish() calls the subscribers

    def __init__(self) -> None:
        self._all: dict[int, Handler] = {}
        self._by_job: dict[str, dict[int, Handler]] = {}
        self._by_tenant: dict[str, dict[int, Handler]] = {}
        self._next = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self._all.clear()
        self._by_job.clear()
        self._by_tenant.clear()

    def publish(self, event: JobEvent) -> None:
        for handlers in (self._all, self._by_job.get(event.job_id), self._by_tenant.get(event.tenant)):
            if not handlers:
                continue
            for handler in list(handlers.values()):
                try:
                    handler(event)
                except Exception:  # one broken subscriber must not starve the others
                    log.exception("an event handler failed")

    def subscribe(self, handler: Handler, *, job_id: str | None = None, tenant: str | None = None) -> Unsubscribe:
        if job_id is not None and tenant is not None:
            raise ValueError("subscribe to a job or to a tenant, not both")
        self._next += 1
        key = self._next
        index: dict[str, dict[int, Handler]] | None = None
        name = job_id if job_id is not None else tenant
        if job_id is not None:
            index = self._by_job
        elif tenant is not None:
            index = self._by_tenant
        table = self._all if index is None or name is None else index.setdefault(name, {})
        table[key] = handler

        def unsubscribe() -> None:
            table.pop(key, None)
            if index is not None and name is not None and not table and index.get(name) is table:
                del index[name]

        return unsubscribe
