"""Durable storage of jobs: the contract and the embedded SQLite implementation."""

from gateway.store.base import CreateOutcome, JobFilter, QueueFull, ResumableJob, RevisionConflict, Store
from gateway.store.sqlite import SqliteStore

__all__ = ["CreateOutcome", "JobFilter", "QueueFull", "ResumableJob", "RevisionConflict", "SqliteStore", "Store"]
