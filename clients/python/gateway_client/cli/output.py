"""What the CLI prints, and how it exits: API messages on stdout, notes and errors on stderr."""

from __future__ import annotations

import enum
import json
import sys

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # noqa: F401  (registers the Any details of Job.error for the JSON mapping)
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._errors import GatewayError, RpcError

__all__ = ["EXITS_OF_A_CALL", "EXITS_OF_A_JOB", "PROG", "ExitCode", "emit", "ending", "error_head", "note", "print_error",
           "state_name", "timed_out"]

PROG = "gateway-client"


class ExitCode(enum.IntEnum):
    OK = 0
    RPC_ERROR = 1
    USAGE = 2
    JOB_FAILED = 3
    JOB_CANCELLED = 4
    TIMED_OUT = 5
    INTERRUPTED = 130
    STDOUT_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a pipe's reader gone


# The --help epilogs of the commands.
EXITS_OF_A_JOB = """exit codes: 0 the job SUCCEEDED, 1 RPC error, 2 usage, 3 the job FAILED, 4 the job was CANCELLED,
5 --timeout passed before the job ended, 130 interrupted"""
EXITS_OF_A_CALL = "exit codes: 0 ok, 1 RPC error, 2 usage, 130 interrupted"


def emit(message: Message) -> None:
    """One response message as one line of the canonical protobuf JSON mapping."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    print(json.dumps(data, separators=(",", ":"), ensure_ascii=False), flush=True)


def note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def state_name(state: int) -> str:
    try:
        return pb.JobState.Name(state)
    except ValueError:
        return str(state)  # a state added after this client was built


def error_head(code: str, reason: str) -> str:
    """"CODE REASON", or the code alone when there is no reason or it only says the code again (CANCELLED)."""
    return f"{code} {reason}" if reason and reason != code else code


def print_error(exc: GatewayError) -> None:
    head = error_head(exc.code.name, exc.reason)
    print(f"{head}: {exc.message}", file=sys.stderr)
    if exc.metadata:
        print(json.dumps(exc.metadata, separators=(",", ":"), ensure_ascii=False, sort_keys=True), file=sys.stderr)
    for field, description in exc.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    sys.stderr.flush()


def ending(job: pb.Job) -> ExitCode:
    """The exit code of a job that is done, with a note on stderr when it did not succeed."""
    if job.state == pb.JOB_STATE_SUCCEEDED:
        return ExitCode.OK
    cancelled = job.state == pb.JOB_STATE_CANCELLED or (
        job.state != pb.JOB_STATE_FAILED and job.HasField("error") and job.error.code == grpc.StatusCode.CANCELLED.value[0]
    )
    if job.state != pb.JOB_STATE_FAILED and not cancelled and not job.HasField("error"):
        return ExitCode.OK  # a terminal state added later, without an error
    how = "was cancelled" if cancelled else "failed"
    if job.HasField("error"):
        error = RpcError.from_status(job.error)
        note(f"job {job.id} {how}: {error_head(error.code.name, error.reason)}: {error.message}")
    else:
        note(f"job {job.id} {how}")
    return ExitCode.JOB_CANCELLED if cancelled else ExitCode.JOB_FAILED


def timed_out(job_id: str, job: pb.Job | None, timeout: float) -> ExitCode:
    where = f"is still {state_name(job.state)} at revision {job.revision}" if job is not None else "has not ended"
    note(f"timed out after {timeout:g} s: job {job_id} {where}")
    return ExitCode.TIMED_OUT
