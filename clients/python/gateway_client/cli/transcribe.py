"""transcribe: submit an audio file, follow it with live progress on stderr, print the transcript
(its text, the FetchResponse, or subtitles: SRT, WebVTT)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._types import Transcript
from gateway_client.cli.args import AddCommand, add_labels, add_timeout, add_transcription, transcription
from gateway_client.cli.connection import Session
from gateway_client.cli.output import EXITS_OF_A_JOB, PROG, ExitCode, emit, ending, note, state_name, timed_out
from gateway_client.cli.streams import TimedOut, WatchResponses, deadline_after

__all__ = ["FORMATS", "add_transcribe"]

FORMATS = ("text", "json", "srt", "vtt")
"""What transcribe prints: the transcript's text (the default), the FetchResponse, SubRip, WebVTT."""


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
        state = state_name(job.state).removeprefix("JOB_STATE_").lower()
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


def _subtitles_of(kind: str, segments: Sequence[pb.Segment]) -> str:
    """The segments as SRT or WebVTT, with the client's writer (``Transcript.to_srt()``, ``to_vtt()``)."""
    transcript = Transcript.from_proto(pb.Transcript(segments=segments))
    return transcript.to_srt() if kind == "srt" else transcript.to_vtt()


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def _transcribe(session: Session, args: argparse.Namespace) -> ExitCode:
    deadline = deadline_after(args.timeout)
    request = pb.SubmitRequest(route=args.route, labels=dict(args.label), request_id=args.request_id or "",
                               transcription=transcription(args, b""))
    if args.url:
        request.transcription.audio_url = args.url
    job: pb.Job = (await session.submit(request, None if args.url else args.file)).job
    segments: list[pb.Segment] = []
    progress = _Progress(enabled=not args.quiet)
    progress.update(job)
    was_timed_out = False
    try:
        # From the start (the whole job first), so that a request_id answering an existing job
        # gets its whole transcript too.
        async for response in WatchResponses(session, job.id, 0, deadline).follow():
            if response.HasField("update"):
                job = response.update.job
                segments[response.update.segments_offset:] = job.segments
                progress.update(job)
    except TimedOut:
        was_timed_out = True
    except asyncio.CancelledError:  # Ctrl-C
        progress.close()
        note(f"interrupted; job {job.id} keeps running on the server ({PROG} cancel {job.id} stops it)")
        raise
    finally:
        progress.close()
    if was_timed_out:
        if args.format == "json":
            snapshot = pb.Job()
            snapshot.CopyFrom(job)
            snapshot.ClearField("segments")  # as Fetch answers a job that has not ended
            emit(pb.FetchResponse(job=snapshot))
        elif args.format in ("srt", "vtt"):
            _print(_subtitles_of(args.format, segments))
        else:
            print("".join(s.text for s in segments).strip(), flush=True)
        return timed_out(job.id, job, args.timeout)
    fetched = await session.call("Fetch", pb.FetchRequest(job_id=job.id))
    if args.format == "json":
        emit(fetched)
    elif fetched.HasField("transcript"):
        if args.format in ("srt", "vtt"):
            _print(_subtitles_of(args.format, fetched.transcript.segments))
        else:
            print(fetched.transcript.text.strip(), flush=True)
    elif fetched.HasField("output"):
        if args.format in ("srt", "vtt"):
            note(f"job {fetched.job.id} answered an output, not a transcript: printing it as JSON")
        print(json.dumps(json_format.MessageToDict(fetched.output), ensure_ascii=False), flush=True)
    return ending(fetched.job)


def add_transcribe(command: AddCommand) -> None:
    transcribe = command("transcribe", "transcribe an audio file, with live progress",
                         "Submits an audio file to a whisper route and follows it with a progress bar on stderr; "
                         "prints the transcript's text, or with --format json (--json) the FetchResponse, with "
                         "--format srt or vtt its segments as SubRip or WebVTT subtitles. At --timeout it prints "
                         "what it has (the text or subtitles so far, or the FetchResponse of the job as it is) and "
                         "exits 5; the job keeps running.", EXITS_OF_A_JOB)
    source = transcribe.add_mutually_exclusive_group(required=True)
    source.add_argument("file", metavar="FILE", nargs="?", help="an audio file in any container FFmpeg reads (-: stdin)")
    source.add_argument("--url", metavar="URL", help="instead of FILE: audio the gateway fetches (https; a presigned "
                                                     "S3, GCS or Azure URL works as given)")
    transcribe.add_argument("--route", default="whisper", metavar="NAME", help="a whisper route (default: whisper)")
    add_transcription(transcribe, " (default: the route's, or detected)")
    add_labels(transcribe, "a label of the job; repeatable")
    transcribe.add_argument("--request-id", metavar="ID", help="idempotency key")
    add_timeout(transcribe, "stop waiting after this long (exit 5)")
    formats = transcribe.add_mutually_exclusive_group()
    formats.add_argument("--format", choices=FORMATS, default="text",
                         help="what to print: text, the transcript's text (the default); json, the FetchResponse; "
                              "srt, SubRip subtitles; vtt, WebVTT subtitles")
    formats.add_argument("--json", dest="format", action="store_const", const="json", default=argparse.SUPPRESS,
                         help="the same as --format json")
    transcribe.add_argument("--quiet", action="store_true", help="no progress on stderr")
    transcribe.set_defaults(run=_transcribe)
