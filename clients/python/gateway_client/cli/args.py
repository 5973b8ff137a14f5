"""The CLI's argument types and shared options, and what they read (inputs, audio files)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._aio import webhook_event

__all__ = ["TASKS", "AddCommand", "UsageError", "add_filters", "add_labels", "add_timeout", "add_transcription",
           "count", "inputs", "read_bytes", "seconds", "transcription", "webhook_events"]

TASKS = {"transcribe": pb.TRANSCRIPTION_TASK_TRANSCRIBE, "translate": pb.TRANSCRIPTION_TASK_TRANSLATE}

AddCommand = Callable[[str, str, str, str], argparse.ArgumentParser]
"""Adds a command's parser: (name, summary, description, epilog) -> its parser."""


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def count(text: str) -> int:
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


def webhook_events(text: str) -> list[pb.WebhookEvent.ValueType]:
    events = []
    for name in (part.strip() for part in text.split(",")):
        try:
            events.append(webhook_event(name))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return events


def read_bytes(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def inputs(args: argparse.Namespace) -> dict[str, Any]:
    origin = "--inputs" if args.inputs_file is None else args.inputs_file
    text: str | bytes = args.inputs if args.inputs_file is None else read_bytes(args.inputs_file)
    try:
        value = json.loads(text)  # bytes: UTF-8 (or -16, -32), as RFC 8259 allows
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{origin} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{origin} must hold a JSON object")
    return value


def transcription(args: argparse.Namespace, audio: bytes) -> pb.TranscriptionRequest:
    request = pb.TranscriptionRequest(
        audio=audio, language_code=args.language or "", beam_size=args.beam_size or 0,
        word_timestamps=args.word_timestamps,
        task=TASKS[args.task] if args.task else pb.TRANSCRIPTION_TASK_UNSPECIFIED,
    )
    if args.vad_filter is not None:
        request.vad_filter = args.vad_filter
    return request


def add_labels(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE", help=text)


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", action="append", type=_state, default=[], metavar="STATE",
                        help="only jobs in this state (queued, running, succeeded, failed, cancelled); repeatable")
    parser.add_argument("--route", metavar="NAME", help="only the jobs of this route")
    add_labels(parser, "only jobs carrying this label; repeatable (all must match)")


def add_transcription(parser: argparse.ArgumentParser, defaults: str) -> None:
    parser.add_argument("--language", "--language-code", metavar="CODE",
                        help=f"the spoken language, a BCP-47 code (en, pt-BR){defaults}")
    parser.add_argument("--task", choices=sorted(TASKS), help="translate: into English")
    parser.add_argument("--beam-size", type=count, metavar="N", help="beam search width (default: the route's, 5)")
    parser.add_argument("--word-timestamps", action="store_true", help="time every word")
    parser.add_argument("--vad-filter", action=argparse.BooleanOptionalAction, default=None,
                        help="skip silence with voice activity detection (default: the route's, on)")


def add_timeout(parser: argparse._ActionsContainer, text: str) -> None:
    parser.add_argument("--timeout", type=seconds, metavar="SECONDS", help=text)
