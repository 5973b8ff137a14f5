"""The commands of one call each: submit, get, fetch, cancel, retry, delete, list."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import json_format
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client.cli.args import (
    AddCommand,
    UsageError,
    add_filters,
    add_labels,
    add_timeout,
    add_transcription,
    count,
    inputs,
    seconds,
    transcription,
    webhook_events,
)
from gateway_client.cli.connection import Session
from gateway_client.cli.output import EXITS_OF_A_CALL, EXITS_OF_A_JOB, ExitCode, emit, ending, timed_out
from gateway_client.cli.table import add_output, output_format, show

__all__ = ["MAX_FETCH_WAIT", "add_cancel", "add_delete", "add_fetch", "add_get", "add_list", "add_retry", "add_submit"]

# The server waits at most an hour in Fetch; --wait asks for all of it.
MAX_FETCH_WAIT = 3600.0


async def _submit(session: Session, args: argparse.Namespace) -> ExitCode:
    transcription_options = (args.language, args.task, args.beam_size, args.vad_filter)
    if args.audio is None and (args.word_timestamps or any(o is not None for o in transcription_options)):
        raise UsageError("--language, --task, --beam-size, --word-timestamps and --vad-filter apply to --audio only")
    request = pb.SubmitRequest(route=args.route, labels=dict(args.label), request_id=args.request_id or "")
    if args.webhook_events and args.webhook is None:
        raise UsageError("--webhook-events needs --webhook")
    if args.webhook is not None:
        request.webhook.url = args.webhook
        request.webhook.events.extend(args.webhook_events)
    for name in ("queue_timeout", "run_timeout"):
        value = getattr(args, name)
        if value is not None:
            getattr(request, name).FromNanoseconds(int(value * 1e9))
    if args.priority is not None:
        request.priority = args.priority
    if args.audio is not None:
        request.transcription.CopyFrom(transcription(args, b""))
    else:
        request.inputs.SetInParent()  # {} is an input too
        json_format.ParseDict(inputs(args), request.inputs)
    show(await session.submit(request, args.audio), output_format(args))
    return ExitCode.OK


async def _get(session: Session, args: argparse.Namespace) -> ExitCode:
    show(await session.call("Get", pb.GetRequest(job_id=args.job_id)), output_format(args))
    return ExitCode.OK


async def _cancel(session: Session, args: argparse.Namespace) -> ExitCode:
    show(await session.call("Cancel", pb.CancelRequest(job_id=args.job_id)), output_format(args))
    return ExitCode.OK


async def _retry(session: Session, args: argparse.Namespace) -> ExitCode:
    show(await session.call("Retry", pb.RetryRequest(job_id=args.job_id)), output_format(args))
    return ExitCode.OK


async def _delete(session: Session, args: argparse.Namespace) -> ExitCode:
    emit(await session.call("Delete", pb.DeleteRequest(job_id=args.job_id, force=args.force)))
    return ExitCode.OK


async def _fetch(session: Session, args: argparse.Namespace) -> ExitCode:
    wait = MAX_FETCH_WAIT if args.wait else (args.timeout or 0.0)
    request = pb.FetchRequest(job_id=args.job_id)
    if wait:
        request.timeout.FromNanoseconds(int(wait * 1e9))
    response = await session.call("Fetch", request, wait=wait)
    emit(response)
    if not response.job.done:
        return timed_out(args.job_id, response.job, wait)
    return ending(response.job)


async def _list(session: Session, args: argparse.Namespace) -> ExitCode:
    request = pb.ListRequest(page_size=args.page_size, page_token=args.page_token or "", states=args.state,
                             route=args.route or "", labels=dict(args.label))
    pages = 0
    fmt = output_format(args)
    while True:
        response = await session.call("List", request)
        show(response, fmt, first=pages == 0)
        pages += 1
        if not response.next_page_token or pages == args.pages:
            return ExitCode.OK
        request.page_token = response.next_page_token


def add_submit(command: AddCommand) -> None:
    submit = command("submit", "submit a job; print the SubmitResponse",
                     "Submits a job and prints the SubmitResponse (the job, QUEUED at revision 1, and whether "
                     "--request-id matched an existing job). Inputs are a JSON object (echo, upstream routes) "
                     "or an audio file (the typed transcription request of a whisper route).", EXITS_OF_A_CALL)
    submit.add_argument("--route", required=True, metavar="NAME", help="the route that runs the job")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", metavar="JSON", help="the inputs, a JSON object")
    source.add_argument("--inputs-file", metavar="FILE", help="a file holding the JSON inputs (-: stdin)")
    source.add_argument("--audio", metavar="FILE", help="an audio file in any container FFmpeg reads (-: stdin)")
    add_transcription(submit, " (with --audio)")
    add_labels(submit, "a label of the job; repeatable")
    submit.add_argument("--request-id", metavar="ID", help="idempotency key: the same request answers the same job")
    submit.add_argument("--webhook", metavar="URL",
                        help="POST the job to this URL as it changes (signed, Standard Webhooks; the server allows "
                             "some URL prefixes only); Get shows how the deliveries went")
    submit.add_argument("--queue-timeout", type=seconds, metavar="SECONDS",
                        help="the longest the job may wait queued (then it fails, QUEUE_TIMEOUT); default: the route's")
    submit.add_argument("--run-timeout", type=seconds, metavar="SECONDS",
                        help="the longest the job may run (then it is stopped and fails, RUN_TIMEOUT); default: the route's")
    submit.add_argument("--priority", type=int, choices=range(1, 6), metavar="1-5",
                        help="1 (most urgent) to 5, among your jobs waiting on the route; default: 3")
    submit.add_argument("--webhook-events", type=webhook_events, default=[], metavar="EVENT[,EVENT]...",
                        help="which changes: start, progress, completed (default: completed); comma-separated")
    add_output(submit, table_on_a_terminal=False)
    submit.set_defaults(run=_submit)


def _job_command(command: AddCommand, name: str, summary: str, description: str, run: Any,
                 table_on_a_terminal: bool = False) -> None:
    """A command of one call on one job (JOB_ID), printing its response as -o says."""
    parser = command(name, summary, description, EXITS_OF_A_CALL)
    parser.add_argument("job_id", metavar="JOB_ID")
    add_output(parser, table_on_a_terminal=table_on_a_terminal)
    parser.set_defaults(run=run)


def add_get(command: AddCommand) -> None:
    _job_command(command, "get", "print a job (GetResponse)", "Prints the job now (GetResponse), every segment "
                 "included.", _get, table_on_a_terminal=True)


def add_fetch(command: AddCommand) -> None:
    fetch = command("fetch", "print a job's result (FetchResponse)",
                    "Prints the FetchResponse: the job and, once it SUCCEEDED, its result. Without --timeout a "
                    "job still running is an RPC error (FAILED_PRECONDITION JOB_NOT_DONE). Exits by how the job "
                    "ended.", EXITS_OF_A_JOB)
    fetch.add_argument("job_id", metavar="JOB_ID")
    waits = fetch.add_mutually_exclusive_group()
    add_timeout(waits, "the server waits up to this long for the job to end; after it, the job as it is (exit 5)")
    waits.add_argument("--wait", action="store_true", help=f"--timeout {MAX_FETCH_WAIT:g} (the server's longest wait)")
    fetch.set_defaults(run=_fetch)


def add_cancel(command: AddCommand) -> None:
    _job_command(command, "cancel", "cancel a job (CancelResponse)",
                 "Asks the job to stop; prints the CancelResponse at once (a queued job is CANCELLED already, a "
                 "running one ends CANCELLED soon: watch it).", _cancel)


def add_retry(command: AddCommand) -> None:
    _job_command(command, "retry", "run a failed or cancelled job again (RetryResponse)",
                 "Runs a FAILED or CANCELLED job again as a new job (the same inputs, route, labels, priority, "
                 "deadlines and webhook; its retryOf names the old job) and prints the RetryResponse. A job is "
                 "retried once: retrying it again prints the same new job (existing true).", _retry)


def add_delete(command: AddCommand) -> None:
    delete = command("delete", "forget a finished job (DeleteResponse)",
                     "Forgets a finished job now; prints the DeleteResponse ({}).", EXITS_OF_A_CALL)
    delete.add_argument("job_id", metavar="JOB_ID")
    delete.add_argument("--force", action="store_true", help="a job still queued or running too (cancelled first)")
    delete.set_defaults(run=_delete)


def add_list(command: AddCommand) -> None:
    list_ = command("list", "list jobs, newest first (ListResponse lines)",
                    "Prints one ListResponse per page, newest jobs first, following the page tokens to the last "
                    "page (nextPageToken empty) unless --pages stops earlier.", EXITS_OF_A_CALL)
    add_filters(list_)
    list_.add_argument("--page-size", type=count, default=0, metavar="N", help="jobs per page (default: the server's, 50)")
    list_.add_argument("--page-token", metavar="TOKEN", help="start at this page (a nextPageToken)")
    list_.add_argument("--pages", type=count, default=0, metavar="N", help="print at most N pages (default: all)")
    add_output(list_, table_on_a_terminal=True)
    list_.set_defaults(run=_list)
