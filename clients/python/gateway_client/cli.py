"""`gateway-client`: the command line of the gateway.

    gateway-client [--target HOST:PORT] [--token T] submit --route NAME
                   (--inputs JSON | --inputs-file F | --audio FILE) [--request-id ID] [--label k=v]...
    gateway-client watch JOB_ID [--after-revision N]
    gateway-client fetch JOB_ID [--wait]
    gateway-client get JOB_ID | cancel JOB_ID | delete JOB_ID
    gateway-client list [--state S]... [--route R] [--label k=v]... [--page-size N]
    gateway-client watch-jobs [--state S]... [--route R] [--label k=v]...
    gateway-client transcribe FILE [--route whisper] [--json] [--language L] [--word-timestamps]

Jobs print as one JSON line each (the protobuf JSON mapping); results as JSON. Errors print the
status code name and the reason on stderr (``NOT_FOUND JOB_NOT_FOUND: ...``) and exit 1.
``GATEWAY_TARGET`` and ``GATEWAY_TOKEN`` set the defaults of --target and --token.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway_client._aio import DEFAULT_TARGET, AsyncClient
from gateway_client._errors import GatewayError, JobCancelledError, JobFailedError
from gateway_client._types import Job, JobState, Output, Result, Transcript

__all__ = ["main"]


def _line(data: Any) -> None:
    print(json.dumps(data, separators=(",", ":"), ensure_ascii=False), flush=True)


def _job_line(job: Job) -> None:
    _line(job.to_dict())


def _result_json(result: Result | None) -> Any:
    if isinstance(result, Transcript):
        return dataclasses.asdict(result)
    if isinstance(result, Output):
        return result.value
    return None


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"gateway-client: --label wants k=v, got {pair!r}")
        labels[key] = value
    return labels


def _inputs(args: argparse.Namespace) -> dict[str, Any] | None:
    text = args.inputs
    if args.inputs_file is not None:
        text = Path(args.inputs_file).read_text()
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"gateway-client: the inputs are not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit("gateway-client: the inputs must be a JSON object")
    return value


async def _transcribe(client: AsyncClient, args: argparse.Namespace) -> int:
    future = await client.transcribe(
        Path(args.file), route=args.route, language=args.language or "", task=args.task or "",
        word_timestamps=args.word_timestamps, beam_size=args.beam_size or 0,
    )
    progress = _Progress(enabled=not args.quiet)
    progress.update(future.job)
    future.add_update_callback(progress.update)
    try:
        result = await future
    finally:
        progress.close()
    if args.json:
        _line(_result_json(result))
    else:
        assert isinstance(result, Transcript)
        print(result.text.strip(), flush=True)
    return 0


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

    def update(self, job: Job) -> None:
        if not self._enabled:
            return
        if job.state is JobState.QUEUED:
            text = f"queued (position {job.queue_position})" if job.queue_position else "queued"
        elif job.state is JobState.RUNNING:
            text = "transcribing"
            if job.segments:
                tail = job.segments[-1].text.strip()
                text += f": …{tail[-40:]}" if len(tail) > 40 else f": {tail}"
        else:
            text = job.state.name.lower()
        if self._bar is not None:
            self._bar.update(self._task, completed=job.progress, description=text)
        else:
            plain = f"{job.state.name.lower()} {job.progress:.0%}"
            if plain != self._last_plain:
                print(plain, file=sys.stderr, flush=True)
                self._last_plain = plain

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def _run(args: argparse.Namespace) -> int:
    async with AsyncClient(args.target, token=args.token or None) as client:
        command = args.command
        if command == "submit":
            inputs = _inputs(args)
            if (inputs is None) == (args.audio is None):
                raise SystemExit("gateway-client: give exactly one of --inputs, --inputs-file, --audio")
            job, _ = await client.submit_job(
                args.route, inputs,
                audio=Path(args.audio) if args.audio else None,
                labels=_labels(args.label), request_id=args.request_id,
            )
            _job_line(job)
        elif command == "watch":
            async for update in client.watch(args.job_id, after_revision=args.after_revision):
                assert isinstance(update, Job)
                _job_line(update)
        elif command == "fetch":
            job, result = await client.fetch_job(args.job_id, wait=args.wait)
            if job.state is JobState.FAILED:
                raise JobFailedError(job)
            if job.state is JobState.CANCELLED:
                raise JobCancelledError(job)
            _line(_result_json(result))
        elif command == "get":
            _job_line(await client.get(args.job_id))
        elif command == "cancel":
            _job_line(await client.cancel(args.job_id))
        elif command == "delete":
            await client.delete(args.job_id)
        elif command == "list":
            filters = {"states": args.state, "route": args.route or "", "labels": _labels(args.label)}
            if args.page_size:
                page = await client.list(page_size=args.page_size, page_token=args.page_token or "", **filters)
                for job in page.jobs:
                    _job_line(job)
                if page.next_page_token:
                    print(f"next page: --page-token {page.next_page_token}", file=sys.stderr)
            else:
                async for job in client.iter_jobs(**filters):
                    _job_line(job)
        elif command == "watch-jobs":
            async for change in client.watch_jobs(states=args.state, route=args.route or "", labels=_labels(args.label)):
                assert isinstance(change, Job)
                _job_line(change)
        elif command == "transcribe":
            return await _transcribe(client, args)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway-client", description="Client of the inference gateway.")
    parser.add_argument("--target", default=os.environ.get("GATEWAY_TARGET", DEFAULT_TARGET), metavar="HOST:PORT")
    parser.add_argument("--token", default=os.environ.get("GATEWAY_TOKEN"), help="bearer token")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="submit a job; print it as one JSON line")
    submit.add_argument("--route", required=True)
    submit.add_argument("--inputs", metavar="JSON", help="JSON object of inputs")
    submit.add_argument("--inputs-file", metavar="FILE", help="a file holding the JSON inputs")
    submit.add_argument("--audio", metavar="FILE", help="an audio file (typed transcription request)")
    submit.add_argument("--request-id", metavar="ID", help="idempotency key")
    submit.add_argument("--label", action="append", default=[], metavar="k=v")

    watch = commands.add_parser("watch", help="print each update of a job until it ends")
    watch.add_argument("job_id")
    watch.add_argument("--after-revision", type=int, default=0, metavar="N")

    fetch = commands.add_parser("fetch", help="print a finished job's result as JSON")
    fetch.add_argument("job_id")
    fetch.add_argument("--wait", action="store_true", help="wait until the job ends")

    for name, text in (("get", "print a job"), ("cancel", "cancel a job"), ("delete", "forget a job")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("job_id")

    for name, text in (("list", "list jobs, newest first"), ("watch-jobs", "print every change of every job")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--state", action="append", default=[], help="QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED")
        sub.add_argument("--route")
        sub.add_argument("--label", action="append", default=[], metavar="k=v")
        if name == "list":
            sub.add_argument("--page-size", type=int, default=0, help="one page of this size (default: all jobs)")
            sub.add_argument("--page-token")

    transcribe = commands.add_parser("transcribe", help="transcribe an audio file, with live progress")
    transcribe.add_argument("file")
    transcribe.add_argument("--route", default="whisper")
    transcribe.add_argument("--json", action="store_true", help="print the whole result as JSON")
    transcribe.add_argument("--language")
    transcribe.add_argument("--task", choices=["transcribe", "translate"])
    transcribe.add_argument("--beam-size", type=int)
    transcribe.add_argument("--word-timestamps", action="store_true")
    transcribe.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for attr in ("state",):
        if hasattr(args, attr):
            try:
                setattr(args, attr, [JobState.parse(s) for s in getattr(args, attr)])
            except ValueError as exc:
                print(f"gateway-client: {exc}", file=sys.stderr)
                return 2
    try:
        return asyncio.run(_run(args))
    except GatewayError as exc:
        print(f"{exc.code.name} {exc.reason}: {exc.message}".replace(" :", ":"), file=sys.stderr)
        for field, description in exc.field_violations:
            print(f"  {field}: {description}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"gateway-client: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
