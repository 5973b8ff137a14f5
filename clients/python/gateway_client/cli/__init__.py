"""`gateway-client`: the command line of the gateway.

This package's docstring is its manual (the --help epilog). One module per group of commands:
jobs (submit, get, fetch, cancel, retry, delete, list), watch (watch, watch-jobs), transcribe; beside
them args (argument types, shared options), connection (target, token, TLS, the session), output
(stdout, stderr, exit codes) and streams (reading within --timeout, Watch resumed after a cut).

Synopsis:

  gateway-client [--target HOST:PORT] [--token-file PATH | --token TOKEN] [--rpc-timeout SECONDS]
                 [--tls] [--ca-file PATH] [--cert-file PATH --key-file PATH] COMMAND ...

  gateway-client submit --route NAME (--inputs JSON | --inputs-file FILE | --audio FILE)
                        [--language CODE] [--task {transcribe,translate}] [--beam-size N]
                        [--word-timestamps] [--vad-filter | --no-vad-filter]
                        [--label KEY=VALUE]... [--request-id ID]
                        [--webhook URL [--webhook-events EVENT[,EVENT]...]]
                        [--queue-timeout SECONDS] [--run-timeout SECONDS] [--priority 1-5]
                        [-o {json,table,id} | -q]
  gateway-client get JOB_ID [-o {json,table,id} | -q]
  gateway-client watch JOB_ID [--after-revision N] [--timeout SECONDS]
  gateway-client fetch JOB_ID [--timeout SECONDS | --wait]
  gateway-client cancel JOB_ID [-o {json,table,id} | -q]
  gateway-client retry JOB_ID [-o {json,table,id} | -q]
  gateway-client delete JOB_ID [--force]
  gateway-client list [--state STATE]... [--route NAME] [--label KEY=VALUE]...
                      [--page-size N] [--page-token TOKEN] [--pages N] [-o {json,table,id} | -q]
  gateway-client watch-jobs [--state STATE]... [--route NAME] [--label KEY=VALUE]...
                            [--resume-token TOKEN] [--timeout SECONDS] [--limit N]
  gateway-client transcribe FILE [--route NAME] [--language CODE] [--task {transcribe,translate}]
                            [--beam-size N] [--word-timestamps] [--vad-filter | --no-vad-filter]
                            [--label KEY=VALUE]... [--request-id ID] [--timeout SECONDS]
                            [--format {text,json,srt,vtt} | --json] [--quiet]
  gateway-client completion {bash,zsh}

Output:
  stdout carries only response messages of the API, one per line, in the canonical protobuf JSON
  mapping (lowerCamelCase names, enums by name, int64 as strings, RFC 3339 times, fields at
  their zero value printed too), compact: submit a SubmitResponse, get a GetResponse, watch one
  WatchResponse per message (updates and heartbeats), fetch a FetchResponse, cancel a
  CancelResponse, retry a RetryResponse, delete a DeleteResponse ({}), list one ListResponse per page, watch-jobs one
  WatchJobsResponse per message (each with its resume token), transcribe --format json (--json)
  the FetchResponse. Messages are printed as received: read Job.done, not Job.state, to tell
  whether a job has ended (states may be added in v1). The other formats of transcribe print no
  message: text (the default) the transcript's text, one line; srt and vtt its segments as SubRip
  or WebVTT subtitles (the writer of Transcript.to_srt() and to_vtt()), ready for `> FILE`.
  On a terminal, get and list print a table instead (a job's fields one per line; a row per job with
  its state, progress, age and error); -o json asks for the JSON lines anywhere, -o table for the
  table anywhere, and -o id (-q) for the job ids alone, one per line, as in
  `JOB=$(gateway-client submit --route echo --inputs '{}' -q)`.
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
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence

import grpc
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway_client._errors import GatewayError
from gateway_client.cli import connection, jobs, transcribe, watch
from gateway_client.cli.args import AddCommand, UsageError
from gateway_client.cli.completion import add_completion
from gateway_client.cli.connection import Session, resolve_token
from gateway_client.cli.output import PROG, ExitCode, print_error

__all__ = ["ExitCode", "main"]

# How gRPC says that no connection could be made (rather than a server answering UNAVAILABLE).
_CONNECT_FAILED = re.compile(r"failed to connect to all addresses|Connection refused|DNS resolution failed|"
                             r"Name or service not known|errors resolving|lookup error", re.IGNORECASE)

# The commands in the order of --help: each module adds its own.
_COMMANDS: tuple[Callable[[AddCommand], None], ...] = (
    jobs.add_submit, jobs.add_get, watch.add_watch, jobs.add_fetch, jobs.add_cancel, jobs.add_retry, jobs.add_delete, jobs.add_list,
    watch.add_watch_jobs, transcribe.add_transcribe,
)


async def _run(args: argparse.Namespace, token: str | None) -> ExitCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with connection.channel(args) as channel:
        session = Session(pb_grpc.GatewayServiceStub(channel), metadata, args.rpc_timeout)
        return ExitCode(await args.run(session, args))


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


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=formatter,
        description="The command line of the inference gateway: submit jobs, watch them, fetch their results.",
        epilog="\n\n".join(_manual_section(t) for t in ("Synopsis", "Output", "Exit codes", "Timeouts", "Credentials", "TLS")),
    )
    connection.add_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=textwrap.fill(description, width=100),
                                   epilog=epilog, formatter_class=formatter)

    for add in _COMMANDS:
        add(command)
    add_completion(command("completion", "print a shell completion script (bash, zsh)",
                           "Prints a completion script for bash or zsh; load it with "
                           f'eval "$({PROG} completion bash)" in ~/.bashrc (or zsh in ~/.zshrc).',
                           "exit codes: 0 ok, 2 usage"), parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; answers the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)  # exits 2 on bad arguments
    if getattr(args, "offline", None) is not None:  # needs no gateway
        return int(args.offline(args))
    try:
        return int(asyncio.run(_run(args, resolve_token(args, os.environ))))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except GatewayError as exc:
        if exc.code is grpc.StatusCode.UNAVAILABLE and _CONNECT_FAILED.search(exc.message):
            lowered = exc.message.lower()
            why = ("connection refused" if "refused" in lowered else
                   "its name does not resolve" if "resolv" in lowered or "lookup" in lowered else "no connection")
            print(f"UNAVAILABLE: cannot connect to {args.target} ({why}): is a gateway running there? Start one with "
                  "`gateway serve` (`make run` in a checkout), or point --target or $GATEWAY_TARGET at one.",
                  file=sys.stderr)
        else:
            print_error(exc)
        return ExitCode.RPC_ERROR
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `| head`: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.STDOUT_CLOSED
