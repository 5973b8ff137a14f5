"""The job a log line is about: the route runner binds the job it runs (id, route, tenant) to its
task's context, and every line logged from that task, the backend's included, carries them (in the
JSON log format as ``job_id``, ``route`` and ``tenant``; in the text format after the message)."""

from __future__ import annotations

import contextvars
import logging

__all__ = ["JobLogFilter", "bind", "unbind"]

_JOB: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar("gateway_job", default=None)
FIELDS = ("job_id", "route", "tenant")


def bind(job_id: str, route: str, tenant: str) -> contextvars.Token[tuple[str, str, str] | None]:
    return _JOB.set((job_id, route, tenant))


def unbind(token: contextvars.Token[tuple[str, str, str] | None]) -> None:
    _JOB.reset(token)


class JobLogFilter(logging.Filter):
    """Adds job_id, route and tenant to records logged where a job is bound."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _JOB.get()
        if bound is not None:
            record.job_id, record.route, record.tenant = bound
        return True
