"""The commands that follow streams: watch (one job, to its end) and watch-jobs (every change)."""

from __future__ import annotations

import argparse

from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway_client._errors import translate_errors
from gateway_client.cli.args import AddCommand, add_filters, add_timeout, count
from gateway_client.cli.connection import Session
from gateway_client.cli.output import EXITS_OF_A_JOB, ExitCode, emit, ending, note, timed_out
from gateway_client.cli.streams import Reading, TimedOut, WatchResponses, deadline_after

__all__ = ["add_watch", "add_watch_jobs"]


async def _watch(session: Session, args: argparse.Namespace) -> ExitCode:
    job: pb.Job | None = None
    try:
        async for response in WatchResponses(session, args.job_id, args.after_revision,
                                             deadline_after(args.timeout)).follow():
            emit(response)
            if response.HasField("update"):
                job = response.update.job
    except TimedOut:
        return timed_out(args.job_id, job, args.timeout)
    if job is None or not job.done:  # nothing after --after-revision: how did the job end?
        job = (await session.call("Get", pb.GetRequest(job_id=args.job_id))).job
        if not job.done:
            note(f"the Watch stream of job {args.job_id} ended before the job did")
            return ExitCode.RPC_ERROR
    return ending(job)


async def _watch_jobs(session: Session, args: argparse.Namespace) -> ExitCode:
    request = pb.WatchJobsRequest(states=args.state, route=args.route or "", labels=dict(args.label),
                                  resume_token=args.resume_token or "")
    call = Reading(session.stream("WatchJobs", request), deadline_after(args.timeout))
    jobs = 0
    try:
        with translate_errors():
            async for response in call:
                emit(response)
                jobs += response.HasField("job")
                if args.limit and jobs >= args.limit:
                    break
    except TimedOut:
        pass  # the usual way to end this endless stream
    finally:
        call.cancel()
    return ExitCode.OK


def add_watch(command: AddCommand) -> None:
    watch = command("watch", "print every update of a job until it ends (WatchResponse lines)",
                    "Prints one WatchResponse per message: the job first (or every revision after "
                    "--after-revision), each change, heartbeats while idle, the terminal revision last. A stream "
                    "cut by a restarting server is resumed. Exits by how the job ended.", EXITS_OF_A_JOB)
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument("--after-revision", type=count, default=0, metavar="N",
                       help="start after this revision (the last one seen)")
    add_timeout(watch, "stop waiting after this long (exit 5)")
    watch.set_defaults(run=_watch)


def add_watch_jobs(command: AddCommand) -> None:
    watch_jobs = command("watch-jobs", "print every change of every job (WatchJobsResponse lines)",
                         "Prints one WatchJobsResponse per message: the active jobs first (or, with --resume-token, "
                         "every job that changed since), then each change, heartbeats while idle; each carries the "
                         "resume token that continues after it. Endless unless --timeout or --limit.",
                         "exit codes: 0 ok (also at --timeout and --limit), 1 RPC error, 2 usage, 130 interrupted")
    add_filters(watch_jobs)
    watch_jobs.add_argument("--resume-token", metavar="TOKEN", help="continue after the message that carried it")
    add_timeout(watch_jobs, "stop after this long (exit 0)")
    watch_jobs.add_argument("--limit", type=count, default=0, metavar="N", help="stop after N jobs (exit 0)")
    watch_jobs.set_defaults(run=_watch_jobs)
