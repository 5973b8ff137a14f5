"""Durable storage of jobs: the contract (``base``) and the embedded SQLite engine (``sqlite``); the
shared engine is ``gateway.redis``."""

from gateway.store.base import (
    CreateOutcome,
    JobFilter,
    JobStore,
    QueueFull,
    ReportsWritability,
    ResumableJob,
    RevisionConflict,
    Store,
    WebhookStore,
)
from gateway.store.sqlite import SqliteStore

__all__ = ["CreateOutcome", "JobFilter", "JobStore", "QueueFull", "ReportsWritability", "ResumableJob", "RevisionConflict",
           "SqliteStore", "Store", "WebhookStore"]
