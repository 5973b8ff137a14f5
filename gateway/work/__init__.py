"""Running jobs: work queues (``queue``) and the route runners whose workers take jobs from them (``runner``)."""

from gateway.work.queue import MemoryQueue, QueueClosed, WorkQueue
from gateway.work.runner import RouteRunner, health_name

__all__ = ["MemoryQueue", "QueueClosed", "RouteRunner", "WorkQueue", "health_name"]
