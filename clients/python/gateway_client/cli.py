"""`gateway-client`: the command line of the gateway.

Synopsis:

  gateway-client [--target HOST:PORT] [--token-file PATH | --token TOKEN] [--rpc-timeout SECONDS]
                 [--tls] [--ca-file PATH] [--cert-file PATH --key-file PATH] COMMAND ...

  gateway-client submit --route NAME (--inputs JSON | --inputs-file FILE | --audio FILE)
                        [--language CODE] [--task {transcribe,translate}] [--beam-size N]
                        [--word-timestamps] [--vad-filter | --no-vad-filter]
                        [--label KEY=VALUE]... [--request-id ID]
                        [--webhook URL [--webhook-events EVENT[,EVENT]...]]
  gateway-client get JOB_ID
  gateway-client watch JOB_ID [--after-revision N] [--timeout SECONDS]
  gateway-client fetch JOB_ID [--timeout SECONDS | --wait]
  gateway-client cancel JOB_ID
  gateway-client delete JOB_ID [--force]
  gateway-client list [--state STATE]... [--route NAME] [--label KEY=VALUE]...
                      [--page-size N] [--page-token TOKEN] [--pages N]
  gateway-client watch-jobs [--state STATE]... [--route NAME] [--label KEY=VALUE]...
                            [--resume-token TOKEN] [--timeout SECONDS] [--limit N]
  gateway-client transcribe FILE [--route NAME] [--language CODE] [--task {transcribe,translate}]
                            [--beam-size N] [--word-timestamps] [--vad-filter | --no-vad-filter]
                            [--label KEY=VALUE]... [--request-id ID] [--timeout SECONDS] [--json] [--quiet]

Output:
  stdout carries only response messages of the API, one per line, in the canonical protobuf JSON
  mapping (lowerCamelCase names, enums by name, int64 as strings, RFC 3339 times, fields at
  their zero value printed too), compact: submit a SubmitResponse, get a GetResponse, watch one
  WatchResponse per message (updates and heartbeats), fetch a FetchResponse, cancel a
  CancelResponse, delete a DeleteResponse ({}), list one ListResponse per page, watch-jobs one
  WatchJobsResponse per message (each with its resume token), transcribe --json the
  FetchResponse (plain transcribe: the transcript's text). Messages are printed as received: read
  Job.done, not Job.state, to tell whether a job has ended (states may be added in v1).
  stderr carries errors, notes and transcribe's progress. An RPC error prints
  "CODE REASON: <the server's message>", then the ErrorInfo metadata as one JSON object, keys
  sorted (when there is any), then "  FIELD: DESCRIPTION" per invalid field.

Exit codes:
  0    ok (watch, fetch, transcribe: the job SUCCEEDED)
  1    an RPC failed (the error is on stderr)
  2    usage: bad arguments, an unreadable file, a token set twice
  3    the job FAILED (watch, fetch, transcribe)
  4    the job was CANCELLED (watch, fetch, transcribe)
  5    --timeout passed before the job ended; the job is still queued or running
       (watch, fetch, transcribe; watch-jobs ends with 0 at its --timeout)
  130  interrupted (Ctrl-C); a submitted job keeps running on the server
  141  stdout was closed early (`| head`)

Timeouts:
  --timeout SECONDS bounds how long a blocking command waits for the job (fetch: the server waits
  up to it, in the Fetch request); --rpc-timeout SECONDS (default 30) is each unary call's deadline.

Credentials:
  The first found of --token TOKEN, --token-file PATH, $GATEWAY_TOKEN, $GATEWAY_TOKEN_FILE (setting
  both variables is a usage error). Prefer a file or the environment: a command line is visible to
  the other users of the machine. $GATEWAY_TARGET sets the default of --target.

TLS:
  --tls connects with TLS, verifying the gateway's certificate against the system's roots, or
  against --ca-file PATH (which implies --tls). --cert-file PATH and --key-file PATH present this
  client's certificate to a gateway that asks for one (mTLS; both, and they imply --tls).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import os
import re
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # noqa: F401  (registers the Any details of Job.error for the JSON mapping)
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway_client._aio import CHANNEL_OPTIONS, DEFAULT_TARGET, tls_credentials, webhook_event
from gateway_client._errors import GatewayError, RpcError, translate_errors
from gateway_client._retry import DEFAULT_RETRY, stream_resumable

__all__ = ["ExitCode", "main"]

PROG = "gateway-client"
DEFAULT_RPC_TIMEOUT = 30.0
# The server waits at most an hour in Fetch; --wait asks for all of it.
MAX_FETCH_WAIT = 3600.0
_TASKS = {"transcribe": pb.TRANSCRIPTION_TASK_TRANSCRIBE, "translate": pb.TRANSCRIPTION_TASK_TRANSLATE}


class ExitCode(enum.IntEnum):
    OK = 0
    RPC_ERROR = 1
    USAGE = 2
    JOB_FAILED = 3
    JOB_CANCELLED = 4
    TIMED_OUT = 5
    INTERRUPTED = 130
    STDOUT_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a pipe's reader gone


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


class _TimedOut(Exception):
    """--timeout passed."""


# -- output -------------------------------------------------------------------------------------


def _emit(message: Message) -> None:
    """One response message as one line of the canonical protobuf JSON mapping."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    print(json.dumps(data, separators=(",", ":"), ensure_ascii=False), flush=True)


def _note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _state_name(state: int) -> str:
    try:
        return pb.JobState.Name(state)
    except ValueError:
        return str(state)  # a state added after this client was built


def _print_error(exc: GatewayError) -> None:
    head = f"{exc.code.name} {exc.reason}" if exc.reason else exc.code.name
    print(f"{head}: {exc.message}", file=sys.stderr)
    if exc.metadata:
        print(json.dumps(exc.metadata, separators=(",", ":"), ensure_ascii=False, sort_keys=True), file=sys.stderr)
    for field, description in exc.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    sys.stderr.flush()


def _ending(job: pb.Job) -> ExitCode:
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
        head = f"{error.code.name} {error.reason}" if error.reason else error.code.name
        _note(f"job {job.id} {how}: {head}: {error.message}")
    else:
        _note(f"job {job.id} {how}")
    return ExitCode.JOB_CANCELLED if cancelled else ExitCode.JOB_FAILED


def _timed_out(job_id: str, job: pb.Job | None, timeout: float) -> ExitCode:
    where = f"is still {_state_name(job.state)} at revision {job.revision}" if job is not None else "has not ended"
    _note(f"timed out after {timeout:g} s: job {job_id} {where}")
    return ExitCode.TIMED_OUT


# -- arguments ----------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _state(text: str) -> int:
    """'succeeded', 'SUCCEEDED', 'JOB_STATE_SUCCEEDED', or the number of a state added later."""
    if text.strip().isdigit():
        return int(text)
    name = text.strip().upper()
    try:
        value = pb.JobState.Value(name if name.startswith("JOB_STATE_") else f"JOB_STATE_{name}")
    except ValueError:
        value = pb.JOB_STATE_UNSPECIFIED
    if value == pb.JOB_STATE_UNSPECIFIED:
        known = ", ".join(n.removeprefix("JOB_STATE_").lower() for n in pb.JobState.keys() if pb.JobState.Value(n))
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; one of {known}")
    return value


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"wants KEY=VALUE, got {text!r}")
    return key, value


def _read_bytes(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_token(path: str, source: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file of {source} ({path}): {exc}") from None
    if not token:
        raise UsageError(f"the token file of {source} ({path}) is empty")
    return token


def resolve_token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """--token, --token-file, $GATEWAY_TOKEN, $GATEWAY_TOKEN_FILE: the first one set."""
    if args.token is not None:
        return str(args.token)
    if args.token_file is not None:
        return _read_token(args.token_file, "--token-file")
    value, path = environ.get("GATEWAY_TOKEN"), environ.get("GATEWAY_TOKEN_FILE")
    if value and path:
        raise UsageError("GATEWAY_TOKEN and GATEWAY_TOKEN_FILE are both set; unset one")
    if value:
        return value
    if path:
        return _read_token(path, "GATEWAY_TOKEN_FILE")
    return None


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    origin = "--inputs" if args.inputs_file is None else args.inputs_file
    text: str | bytes = args.inputs if args.inputs_file is None else _read_bytes(args.inputs_file)
    try:
        value = json.loads(text)  # bytes: UTF-8 (or -16, -32), as RFC 8259 allows
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{origin} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{origin} must hold a JSON object")
    return value


def _transcription(args: argparse.Namespace, audio: bytes) -> pb.TranscriptionRequest:
    request = pb.TranscriptionRequest(
        audio=audio, language_code=args.language or "", beam_size=args.beam_size or 0,
        word_timestamps=args.word_timestamps,
        task=_TASKS[args.task] if args.task else pb.TRANSCRIPTION_TASK_UNSPECIFIED,
    )
    if args.vad_filter is not None:
        request.vad_filter = args.vad_filter
    return request


# -- the calls ----------------------------------------------------------------------------------


@dataclass
class _Session:
    """The generated stub, with the caller's metadata and deadline on every call. The CLI prints
    the API's own messages, so it calls the stub rather than the typed client."""

    stub: Any
    metadata: tuple[tuple[str, str], ...]
    rpc_timeout: float

    async def call(self, method: str, request: Message, *, wait: float = 0.0) -> Any:
        with translate_errors():
            return await getattr(self.stub, method)(request, timeout=wait + self.rpc_timeout, metadata=self.metadata)

    def stream(self, method: str, request: Message) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


async def _read(call: Any, deadline: float | None) -> Any:
    """The stream's next message, None at its end; _TimedOut once the deadline has passed."""
    if deadline is None:
        message = await call.read()
    else:
        # asyncio.wait rather than wait_for: no TimeoutError, whose asyncio alias differs before 3.11.
        read = asyncio.ensure_future(call.read())
        try:
            done, _ = await asyncio.wait({read}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        finally:
            if not read.done():
                read.cancel()
        if not done:
            raise _TimedOut
        message = read.result()
    return None if message is grpc.aio.EOF else message


async def _watch(session: _Session, job_id: str, after_revision: int, deadline: float | None) -> AsyncIterator[Any]:
    """The job's WatchResponses. A stream cut by UNAVAILABLE (the server restarting or recycling the
    connection) after it has delivered something is reopened after the last revision seen, with the
    client library's backoff and patience (DEFAULT_RETRY)."""
    loop = asyncio.get_running_loop()
    last, failures, received = after_revision, 0, False
    give_up_at = loop.time() + DEFAULT_RETRY.resume_timeout
    while True:
        call = session.stream("Watch", pb.WatchRequest(job_id=job_id, after_revision=last))
        try:
            with translate_errors():
                while (response := await _read(call, deadline)) is not None:
                    received, failures = True, 0
                    give_up_at = loop.time() + DEFAULT_RETRY.resume_timeout
                    if response.HasField("update"):
                        last = response.update.job.revision
                    yield response
            return
        except GatewayError as exc:
            if not stream_resumable(exc) or not received or loop.time() > give_up_at:
                raise
            _note(f"the stream was cut ({exc}); resuming after revision {last}")
        finally:
            call.cancel()
        failures += 1
        delay = DEFAULT_RETRY.backoff(failures)
        if deadline is not None and loop.time() + delay >= deadline:
            raise _TimedOut
        await asyncio.sleep(delay)


def _webhook_events(text: str) -> list[pb.WebhookEvent.ValueType]:
    events = []
    for name in (part.strip() for part in text.split(",")):
        try:
            events.append(webhook_event(name))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return events


# -- the commands -------------------------------------------------------------------------------


async def _submit(session: _Session, args: argparse.Namespace) -> ExitCode:
    transcription_options = (args.language, args.task, args.beam_size, args.vad_filter)
    if args.audio is None and (args.word_timestamps or any(o is not None for o in transcription_options)):
        raise UsageError("--language, --task, --beam-size, --word-timestamps and --vad-filter apply to --audio only")
    request = pb.SubmitRequest(route=args.route, labels=dict(args.label), request_id=args.request_id or "")
    if args.webhook_events and args.webhook is None:
        raise UsageError("--webhook-events needs --webhook")
    if args.webhook is not None:
        request.webhook.url = args.webhook
        request.webhook.events.extend(args.webhook_events)
    if args.audio is not None:
        request.transcription.CopyFrom(_transcription(args, _read_bytes(args.audio)))
    else:
        request.inputs.SetInParent()  # {} is an input too
        json_format.ParseDict(_inputs(args), request.inputs)
    _emit(await session.call("Submit", request))
    return ExitCode.OK


async def _get(session: _Session, args: argparse.Namespace) -> ExitCode:
    _emit(await session.call("Get", pb.GetRequest(job_id=args.job_id)))
    return ExitCode.OK


async def _cancel(session: _Session, args: argparse.Namespace) -> ExitCode:
    _emit(await session.call("Cancel", pb.CancelRequest(job_id=args.job_id)))
    return ExitCode.OK


async def _delete(session: _Session, args: argparse.Namespace) -> ExitCode:
    _emit(await session.call("Delete", pb.DeleteRequest(job_id=args.job_id, force=args.force)))
    return ExitCode.OK


async def _watch_command(session: _Session, args: argparse.Namespace) -> ExitCode:
    job: pb.Job | None = None
    try:
        async for response in _watch(session, args.job_id, args.after_revision, _deadline(args.timeout)):
            _emit(response)
            if response.HasField("update"):
                job = response.update.job
    except _TimedOut:
        return _timed_out(args.job_id, job, args.timeout)
    if job is None or not job.done:  # nothing after --after-revision: how did the job end?
        job = (await session.call("Get", pb.GetRequest(job_id=args.job_id))).job
        if not job.done:
            _note(f"the Watch stream of job {args.job_id} ended before the job did")
            return ExitCode.RPC_ERROR
    return _ending(job)


async def _fetch(session: _Session, args: argparse.Namespace) -> ExitCode:
    wait = MAX_FETCH_WAIT if args.wait else (args.timeout or 0.0)
    request = pb.FetchRequest(job_id=args.job_id)
    if wait:
        request.timeout.FromNanoseconds(int(wait * 1e9))
    response = await session.call("Fetch", request, wait=wait)
    _emit(response)
    if not response.job.done:
        return _timed_out(args.job_id, response.job, wait)
    return _ending(response.job)


async def _list(session: _Session, args: argparse.Namespace) -> ExitCode:
    request = pb.ListRequest(page_size=args.page_size, page_token=args.page_token or "", states=args.state,
                             route=args.route or "", labels=dict(args.label))
    pages = 0
    while True:
        response = await session.call("List", request)
        _emit(response)
        pages += 1
        if not response.next_page_token or pages == args.pages:
            return ExitCode.OK
        request.page_token = response.next_page_token


async def _watch_jobs(session: _Session, args: argparse.Namespace) -> ExitCode:
    request = pb.WatchJobsRequest(states=args.state, route=args.route or "", labels=dict(args.label),
                                  resume_token=args.resume_token or "")
    deadline = _deadline(args.timeout)
    call = session.stream("WatchJobs", request)
    jobs = 0
    try:
        with translate_errors():
            while (response := await _read(call, deadline)) is not None:
                _emit(response)
                jobs += response.HasField("job")
                if args.limit and jobs >= args.limit:
                    break
    except _TimedOut:
        pass  # the usual way to end this endless stream
    finally:
        call.cancel()
    return ExitCode.OK


async def _transcribe(session: _Session, args: argparse.Namespace) -> ExitCode:
    deadline = _deadline(args.timeout)
    request = pb.SubmitRequest(route=args.route, labels=dict(args.label), request_id=args.request_id or "",
                               transcription=_transcription(args, _read_bytes(args.file)))
    job: pb.Job = (await session.call("Submit", request)).job
    segments: list[pb.Segment] = []
    progress = _Progress(enabled=not args.quiet)
    progress.update(job)
    timed_out = False
    try:
        # From the start (the whole job first), so that a request_id answering an existing job
        # gets its whole transcript too.
        async for response in _watch(session, job.id, 0, deadline):
            if response.HasField("update"):
                job = response.update.job
                segments[response.update.segments_offset:] = job.segments
                progress.update(job)
    except _TimedOut:
        timed_out = True
    except asyncio.CancelledError:  # Ctrl-C
        progress.close()
        _note(f"interrupted; job {job.id} keeps running on the server ({PROG} cancel {job.id} stops it)")
        raise
    finally:
        progress.close()
    if timed_out:
        if args.json:
            snapshot = pb.Job()
            snapshot.CopyFrom(job)
            snapshot.ClearField("segments")  # as Fetch answers a job that has not ended
            _emit(pb.FetchResponse(job=snapshot))
        else:
            print("".join(s.text for s in segments).strip(), flush=True)
        return _timed_out(job.id, job, args.timeout)
    fetched = await session.call("Fetch", pb.FetchRequest(job_id=job.id))
    if args.json:
        _emit(fetched)
    elif fetched.HasField("transcript"):
        print(fetched.transcript.text.strip(), flush=True)
    elif fetched.HasField("output"):
        print(json.dumps(json_format.MessageToDict(fetched.output), ensure_ascii=False), flush=True)
    return _ending(fetched.job)


class _Progress:
    """A live progress bar on stderr (rich when installed, plain lines otherwise)."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._enabled = enabled
        self._last_plain = ""
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
        except ImportError:
            return
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._task = self._bar.add_task("submitted", total=1.0)
        self._bar.start()

    def update(self, job: pb.Job) -> None:
        if not self._enabled:
            return
        state = _state_name(job.state).removeprefix("JOB_STATE_").lower()
        if job.state == pb.JOB_STATE_QUEUED:
            text = f"queued (position {job.queue_position})" if job.queue_position else "queued"
        elif job.state == pb.JOB_STATE_RUNNING:
            text = "transcribing"
            if job.segments:
                tail = job.segments[-1].text.strip()
                text += f": …{tail[-40:]}" if len(tail) > 40 else f": {tail}"
        else:
            text = state
        if self._bar is not None:
            self._bar.update(self._task, completed=job.progress, description=text)
        else:
            plain = f"{state} {job.progress:.0%}"
            if plain != self._last_plain:
                print(plain, file=sys.stderr, flush=True)
                self._last_plain = plain

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


_COMMANDS = {
    "submit": _submit, "get": _get, "watch": _watch_command, "fetch": _fetch, "cancel": _cancel,
    "delete": _delete, "list": _list, "watch-jobs": _watch_jobs, "transcribe": _transcribe,
}


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    if not (args.tls or args.ca_file or args.cert_file):
        return grpc.aio.insecure_channel(args.target, options=CHANNEL_OPTIONS)
    try:
        credentials = tls_credentials(args.ca_file, args.cert_file, args.key_file)
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.aio.secure_channel(args.target, credentials, options=CHANNEL_OPTIONS)


async def _run(args: argparse.Namespace, token: str | None) -> ExitCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with _channel(args) as channel:
        session = _Session(pb_grpc.GatewayServiceStub(channel), metadata, args.rpc_timeout)
        return await _COMMANDS[args.command](session, args)


# -- the parser ---------------------------------------------------------------------------------


def _manual_section(title: str) -> str:
    """A section of the module docstring (the manual), for the --help epilogs: from its title line
    to the next title line (a line at the margin ending with a colon)."""
    lines = (__doc__ or "").splitlines()
    try:
        start = lines.index(f"{title}:")
    except ValueError:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if re.fullmatch(r"\S.*:", lines[i])), len(lines))
    return "\n".join(lines[start:end]).rstrip()


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100)


_EXITS_OF_A_JOB = """exit codes: 0 the job SUCCEEDED, 1 RPC error, 2 usage, 3 the job FAILED, 4 the job was CANCELLED,
5 --timeout passed before the job ended, 130 interrupted"""
_EXITS_OF_A_CALL = "exit codes: 0 ok, 1 RPC error, 2 usage, 130 interrupted"


def _add_labels(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE", help=text)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", action="append", type=_state, default=[], metavar="STATE",
                        help="only jobs in this state (queued, running, succeeded, failed, cancelled); repeatable")
    parser.add_argument("--route", metavar="NAME", help="only the jobs of this route")
    _add_labels(parser, "only jobs carrying this label; repeatable (all must match)")


def _add_transcription(parser: argparse.ArgumentParser, defaults: str) -> None:
    parser.add_argument("--language", "--language-code", metavar="CODE",
                        help=f"the spoken language, a BCP-47 code (en, pt-BR){defaults}")
    parser.add_argument("--task", choices=sorted(_TASKS), help="translate: into English")
    parser.add_argument("--beam-size", type=_count, metavar="N", help="beam search width (default: the route's, 5)")
    parser.add_argument("--word-timestamps", action="store_true", help="time every word")
    parser.add_argument("--vad-filter", action=argparse.BooleanOptionalAction, default=None,
                        help="skip silence with voice activity detection (default: the route's, on)")


def _add_timeout(parser: argparse._ActionsContainer, text: str) -> None:
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS", help=text)


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=formatter,
        description="The command line of the inference gateway: submit jobs, watch them, fetch their results.",
        epilog="\n\n".join(_manual_section(t) for t in ("Synopsis", "Output", "Exit codes", "Timeouts", "Credentials", "TLS")),
    )
    parser.add_argument("--target", default=os.environ.get("GATEWAY_TARGET", DEFAULT_TARGET), metavar="HOST:PORT",
                        help=f"the gateway's gRPC address (default: $GATEWAY_TARGET, else {DEFAULT_TARGET})")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", metavar="PATH", help="read the bearer token from this file")
    tokens.add_argument("--token", metavar="TOKEN",
                        help="the bearer token (visible to other users in the process list: prefer --token-file "
                             "or $GATEWAY_TOKEN)")
    parser.add_argument("--rpc-timeout", type=_seconds, default=DEFAULT_RPC_TIMEOUT, metavar="SECONDS",
                        help=f"the deadline of each unary call (default {DEFAULT_RPC_TIMEOUT:g})")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the system's roots verify the gateway)")
    parser.add_argument("--ca-file", metavar="PATH", help="verify the gateway's certificate with this CA (PEM; implies --tls)")
    parser.add_argument("--cert-file", metavar="PATH", help="this client's certificate, for mTLS (PEM; with --key-file)")
    parser.add_argument("--key-file", metavar="PATH", help="the private key of --cert-file (PEM)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=_wrap(description), epilog=epilog,
                                   formatter_class=formatter)

    submit = command("submit", "submit a job; print the SubmitResponse",
                     "Submits a job and prints the SubmitResponse (the job, QUEUED at revision 1, and whether "
                     "--request-id matched an existing job). Inputs are a JSON object (echo, upstream routes) "
                     "or an audio file (the typed transcription request of a whisper route).", _EXITS_OF_A_CALL)
    submit.add_argument("--route", required=True, metavar="NAME", help="the route that runs the job")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", metavar="JSON", help="the inputs, a JSON object")
    source.add_argument("--inputs-file", metavar="FILE", help="a file holding the JSON inputs (-: stdin)")
    source.add_argument("--audio", metavar="FILE", help="an audio file in any container FFmpeg reads (-: stdin)")
    _add_transcription(submit, " (with --audio)")
    _add_labels(submit, "a label of the job; repeatable")
    submit.add_argument("--request-id", metavar="ID", help="idempotency key: the same request answers the same job")
    submit.add_argument("--webhook", metavar="URL",
                        help="POST the job to this URL as it changes (signed, Standard Webhooks; the server allows "
                             "some URL prefixes only); Get shows how the deliveries went")
    submit.add_argument("--webhook-events", type=_webhook_events, default=[], metavar="EVENT[,EVENT]...",
                        help="which changes: start, progress, completed (default: completed); comma-separated")

    get = command("get", "print a job (GetResponse)", "Prints the job now (GetResponse), every segment included.",
                  _EXITS_OF_A_CALL)
    get.add_argument("job_id", metavar="JOB_ID")

    watch = command("watch", "print every update of a job until it ends (WatchResponse lines)",
                    "Prints one WatchResponse per message: the job first (or every revision after "
                    "--after-revision), each change, heartbeats while idle, the terminal revision last. A stream "
                    "cut by a restarting server is resumed. Exits by how the job ended.", _EXITS_OF_A_JOB)
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument("--after-revision", type=_count, default=0, metavar="N",
                       help="start after this revision (the last one seen)")
    _add_timeout(watch, "stop waiting after this long (exit 5)")

    fetch = command("fetch", "print a job's result (FetchResponse)",
                    "Prints the FetchResponse: the job and, once it SUCCEEDED, its result. Without --timeout a "
                    "job still running is an RPC error (FAILED_PRECONDITION JOB_NOT_DONE). Exits by how the job "
                    "ended.", _EXITS_OF_A_JOB)
    fetch.add_argument("job_id", metavar="JOB_ID")
    waits = fetch.add_mutually_exclusive_group()
    _add_timeout(waits, "the server waits up to this long for the job to end; after it, the job as it is (exit 5)")
    waits.add_argument("--wait", action="store_true", help=f"--timeout {MAX_FETCH_WAIT:g} (the server's longest wait)")

    cancel = command("cancel", "cancel a job (CancelResponse)",
                     "Asks the job to stop; prints the CancelResponse at once (a queued job is CANCELLED already, a "
                     "running one ends CANCELLED soon: watch it).", _EXITS_OF_A_CALL)
    cancel.add_argument("job_id", metavar="JOB_ID")

    delete = command("delete", "forget a finished job (DeleteResponse)",
                     "Forgets a finished job now; prints the DeleteResponse ({}).", _EXITS_OF_A_CALL)
    delete.add_argument("job_id", metavar="JOB_ID")
    delete.add_argument("--force", action="store_true", help="a job still queued or running too (cancelled first)")

    list_ = command("list", "list jobs, newest first (ListResponse lines)",
                    "Prints one ListResponse per page, newest jobs first, following the page tokens to the last "
                    "page (nextPageToken empty) unless --pages stops earlier.", _EXITS_OF_A_CALL)
    _add_filters(list_)
    list_.add_argument("--page-size", type=_count, default=0, metavar="N", help="jobs per page (default: the server's, 50)")
    list_.add_argument("--page-token", metavar="TOKEN", help="start at this page (a nextPageToken)")
    list_.add_argument("--pages", type=_count, default=0, metavar="N", help="print at most N pages (default: all)")

    watch_jobs = command("watch-jobs", "print every change of every job (WatchJobsResponse lines)",
                         "Prints one WatchJobsResponse per message: the active jobs first (or, with --resume-token, "
                         "every job that changed since), then each change, heartbeats while idle; each carries the "
                         "resume token that continues after it. Endless unless --timeout or --limit.",
                         "exit codes: 0 ok (also at --timeout and --limit), 1 RPC error, 2 usage, 130 interrupted")
    _add_filters(watch_jobs)
    watch_jobs.add_argument("--resume-token", metavar="TOKEN", help="continue after the message that carried it")
    _add_timeout(watch_jobs, "stop after this long (exit 0)")
    watch_jobs.add_argument("--limit", type=_count, default=0, metavar="N", help="stop after N jobs (exit 0)")

    transcribe = command("transcribe", "transcribe an audio file, with live progress",
                         "Submits an audio file to a whisper route and follows it with a progress bar on stderr; "
                         "prints the transcript's text, or with --json the FetchResponse. At --timeout it prints "
                         "what it has (the text so far, or the FetchResponse of the job as it is) and exits 5; the "
                         "job keeps running.", _EXITS_OF_A_JOB)
    transcribe.add_argument("file", metavar="FILE", help="an audio file in any container FFmpeg reads (-: stdin)")
    transcribe.add_argument("--route", default="whisper", metavar="NAME", help="a whisper route (default: whisper)")
    _add_transcription(transcribe, " (default: the route's, or detected)")
    _add_labels(transcribe, "a label of the job; repeatable")
    transcribe.add_argument("--request-id", metavar="ID", help="idempotency key")
    _add_timeout(transcribe, "stop waiting after this long (exit 5)")
    transcribe.add_argument("--json", action="store_true", help="print the FetchResponse instead of the text")
    transcribe.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; answers the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)  # exits 2 on bad arguments
    try:
        return int(asyncio.run(_run(args, resolve_token(args, os.environ))))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except GatewayError as exc:
        _print_error(exc)
        return ExitCode.RPC_ERROR
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `| head`: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.STDOUT_CLOSED


if __name__ == "__main__":
    sys.exit(main())
