"""The CLI's formats for people and for scripts: ``-o json`` (the API's messages as JSON lines, what a pipe
gets by default), ``-o table`` (what a terminal gets from get and list: a row per job, or a job's fields one
per line) and ``-o id`` (``-q``: the job ids alone, one per line, for ``JOB=$(gateway-client submit ... -q)``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from google.protobuf.message import Message
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._errors import RpcError
from gateway_client.cli.output import emit, state_name

__all__ = ["FORMATS", "add_output", "output_format", "show"]

FORMATS = ("json", "table", "id")
_ERROR_WIDTH = 60


def add_output(parser: argparse.ArgumentParser, table_on_a_terminal: bool) -> None:
    """-o/--output and -q. ``table_on_a_terminal``: without -o, a table when stdout is a terminal (else JSON)."""
    default = "table on a terminal, else json" if table_on_a_terminal else "json"
    parser.add_argument("-o", "--output", choices=FORMATS, default=None,
                        help=f"json: the response as a JSON line; table: for people; id: the job ids alone, one per "
                             f"line (default: {default})")
    parser.add_argument("-q", "--quiet", dest="output", action="store_const", const="id", help="-o id")
    parser.set_defaults(table_on_a_terminal=table_on_a_terminal)


def output_format(args: argparse.Namespace) -> str:
    if args.output:
        return str(args.output)
    return "table" if args.table_on_a_terminal and sys.stdout.isatty() else "json"


def show(message: Message, fmt: str, first: bool = True) -> None:
    """One response in ``fmt``. ``first``: the first page of a list (a table prints its header then)."""
    jobs = _jobs(message)
    if fmt == "json":
        emit(message)
    elif fmt == "id":
        for job in jobs:
            print(job.id)
        sys.stdout.flush()
    elif isinstance(message, pb.ListResponse):
        _rows(jobs, header=first)
    elif jobs:
        _fields(jobs[0], getattr(message, "existing", None))
    else:
        emit(message)  # (no job in it: DeleteResponse)


def _jobs(message: Message) -> list[pb.Job]:
    if isinstance(message, pb.ListResponse):
        return list(message.jobs)
    job = getattr(message, "job", None)
    return [job] if isinstance(job, pb.Job) and job.id else []


def short_state(state: int) -> str:
    return state_name(state).removeprefix("JOB_STATE_")


def failure(job: pb.Job) -> str:
    """"REASON: message" of a job's error ("CODE: message" without a reason), or ""."""
    if not job.HasField("error"):
        return ""
    error = RpcError.from_status(job.error)
    return f"{error.reason or error.code.name}: {error.message}"


def _age(job: pb.Job, now: float) -> str:
    if not job.HasField("create_time"):
        return ""
    seconds = max(0, int(now - job.create_time.ToNanoseconds() / 1e9))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _rows(jobs: Sequence[pb.Job], header: bool) -> None:
    now = time.time()
    rows = [(job.id, job.route, short_state(job.state), f"{job.progress:.0%}", _age(job, now),
             _clip(failure(job), _ERROR_WIDTH)) for job in jobs]
    head = ("ID", "ROUTE", "STATE", "PROGRESS", "AGE", "ERROR")
    widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(len(head) - 1)]
    for row in ([head] if header else []) + rows:
        print(("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]).rstrip())
    sys.stdout.flush()


def _time(message: Message, field: str) -> str:
    if not message.HasField(field):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(getattr(message, field).ToNanoseconds() / 1e9))


def _fields(job: pb.Job, existing: bool | None) -> None:
    state = short_state(job.state)
    if job.state == pb.JOB_STATE_QUEUED and job.queue_position:
        state += f" (position {job.queue_position})"
    fields = [
        ("id", job.id), ("route", job.route), ("state", state), ("error", failure(job)),
        ("progress", f"{job.progress:.0%}"), ("revision", str(job.revision)), ("priority", str(job.priority)),
        ("attempt", str(job.attempt) if job.attempt > 1 else ""),
        ("created", _time(job, "create_time")), ("started", _time(job, "start_time")),
        ("finished", _time(job, "finish_time")), ("expires", _time(job, "expire_time")),
        ("estimated start", _time(job, "estimated_start_time")),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))),
        ("request id", job.request_id), ("retry of", job.retry_of), ("retried by", job.retried_by),
        ("segments", str(len(job.segments)) if job.segments else ""),
        ("existing", "yes" if existing else ""),
    ]
    shown = [(name, value) for name, value in fields if value]
    width = max(len(name) for name, _ in shown) + 1
    for name, value in shown:
        print(f"{name + ':':<{width}} {value}")
    sys.stdout.flush()
