"""The async-HTTP upstream core: one job followed upstream on behalf of all its watchers.

A profile (Cog, Replicate, fal, RunPod) says how its provider is spoken to: how a job is submitted,
what its status looks like, how it can push (an SSE stream, webhooks), how it is cancelled, and how
its states map onto ours. Everything else is here, the same for every profile:

* **Submit once.** The job's upstream reference is checkpointed as soon as the provider answers, so a
  restarted gateway follows the same upstream job. A profile whose submit is idempotent (Cog's
  ``PUT /predictions/{id}``) submits again after an interrupted submit; the others cannot know whether
  the provider took the job, and fail it with UPSTREAM_SUBMIT_INTERRUPTED rather than run it twice.
* **Push first, poll as a fallback.** Pushed changes (stream events, webhooks) and polled statuses
  all go through one queue. A poll is sent only when nothing was pushed for the poll interval, which
  backs off to ``poll_max_seconds`` and starts again short after each push. A stream that ends early
  is reconnected with backoff.
* **Revisions never go backwards.** Every change becomes a :class:`Snapshot`; the :class:`Tracker`
  takes from each only what moves the job forward (a later state, more outputs, a longer log), so a
  late webhook, a replayed event or a stale poll changes nothing. The first terminal snapshot ends
  the job; later ones are ignored.
* **Everything reaches Watch**: each new partial output as a segment (its text: a string as is,
  anything else as JSON), the log's tail (``max_log_bytes``), the provider's queue position, and its
  progress (a profile's own, or the last ``NN%`` a progress bar printed in the log).
* **Deadline and cancel.** A job past ``deadline_seconds`` is cancelled upstream and fails
  UPSTREAM_DEADLINE_EXCEEDED; a job cancelled here is cancelled upstream (best effort).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.backends.base import JobContext, ReadyState
from gateway.backends.upstream.http import Limits, UpstreamError, UpstreamHttp
from gateway.backends.upstream.inbox import Delivery, Inbox
from gateway.errors import Code, FieldViolation, InvalidArgument
from gateway.jobs import JobInput, JobOutput, Result, Segment
from gateway.tasks import cancel_and_wait

__all__ = ["DONE", "QUEUED", "RUNNING", "Snapshot", "Tracker", "UpstreamBackend"]

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
DONE = frozenset({SUCCEEDED, FAILED, CANCELED})
_RANK = {QUEUED: 0, RUNNING: 1, SUCCEEDED: 2, FAILED: 2, CANCELED: 2}
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%\|")  # tqdm's "42%|████" and friends
_TASKS = {"": "transcribe", "transcribe": "transcribe", "translate": "translate"}
MISSING: Any = object()


@dataclass
class Snapshot:
    """What the provider said about a job at one moment, in our terms."""

    state: str
    outputs: Sequence[Any] | None = None  # the partial outputs so far, all of them
    logs: str | None = None                # the whole log so far
    queue_position: int | None = None
    progress: float | None = None
    output: Any = MISSING                  # the final output (when the profile has it at the end)
    error: str = ""
    reason: str = ""                       # the ErrorInfo reason of a failure (default UPSTREAM_JOB_FAILED)
    code: Code = Code.UNKNOWN

    @property
    def done(self) -> bool:
        return self.state in DONE


def segment_of(chunk: Any) -> Segment:
    text = chunk if isinstance(chunk, str) else json.dumps(chunk, separators=(",", ":"))
    return Segment(start=0.0, end=0.0, text=text)


class Tracker:
    """Turns snapshots, in whatever order they come, into forward-only reports on the job."""

    def __init__(self, ctx: JobContext, max_log_bytes: int) -> None:
        self.ctx = ctx
        self.max_log_bytes = max_log_bytes
        self.rank = 1 if ctx.job.started is not None else 0
        self.outputs = len(ctx.job.segments)  # reported already (a resumed job keeps its segments)
        self.logs = ""
        self.queue_position: int | None = None
        self.progress: float | None = None
        self.final: Snapshot | None = None
        self.applied = 0

    async def apply(self, snapshot: Snapshot | None) -> bool:
        """Reports what this snapshot adds; answers whether the job is done upstream."""
        if snapshot is None or self.final is not None:
            return self.final is not None
        self.applied += 1
        rank = _RANK[snapshot.state]
        if rank >= 1 and self.rank < 1:
            self.rank = 1
            await self.ctx.started()
        segments: list[Segment] = []
        outputs = snapshot.outputs
        if outputs is None and snapshot.done and isinstance(snapshot.output, list) and snapshot.state == SUCCEEDED:
            outputs = snapshot.output  # an iterator model's whole output: any chunk not yet seen
        if outputs is not None and len(outputs) > self.outputs:
            segments = [segment_of(chunk) for chunk in outputs[self.outputs:]]
            self.outputs = len(outputs)
        logs = None
        if snapshot.logs is not None and len(snapshot.logs) > len(self.logs) and snapshot.logs.startswith(self.logs[:64]):
            self.logs = snapshot.logs
            logs = self.log_tail()
        elif snapshot.logs is not None and not self.logs and snapshot.logs:
            self.logs, logs = snapshot.logs, self.log_tail()
        progress = snapshot.progress
        if progress is None and logs:
            found = _PERCENT.findall(logs[-2000:])
            progress = min(100.0, float(found[-1])) / 100 if found else None
        if progress is not None and (self.progress is None or progress > self.progress):
            self.progress = progress
        else:
            progress = None
        position = snapshot.queue_position if rank == 0 and self.rank == 0 else None
        if position == self.queue_position:
            position = None
        elif position is not None:
            self.queue_position = position
        if segments or logs is not None or progress is not None or position is not None:
            await self.ctx.report(progress=progress, segments=segments, logs=logs, queue_position=position)
        if snapshot.done:
            self.final = snapshot
        return self.final is not None

    def log_tail(self) -> str:
        data = self.logs.encode()
        if len(data) <= self.max_log_bytes:
            return self.logs
        tail = data[-self.max_log_bytes:].decode("utf-8", "ignore")
        return tail.partition("\n")[2] or tail  # from a line's start


@dataclass
class Follow:
    """One job being followed: its checkpoint, its mailbox, what has been learned."""

    ctx: JobContext
    checkpoint: dict[str, Any]
    tracker: Tracker
    queue: asyncio.Queue[Any]
    resumed: bool
    hook_url: str = ""
    state: dict[str, Any] = field(default_factory=dict)  # the profile's own, not checkpointed


class UpstreamBackend:
    """The backend of a route of an async-HTTP upstream; a profile subclasses it.

    A profile sets ``name``, ``idempotent_submit``, ``uses_webhooks`` (it needs the gateway's HTTP face
    for pushes) and implements :meth:`submit`, :meth:`poll`, and as its provider allows
    :meth:`stream`, :meth:`hook`, :meth:`result`, :meth:`cancel`, :meth:`health`.
    """

    name = "upstream"
    idempotent_submit = False
    uses_webhooks = False  # it needs them (Cog): the gateway must have a public_url or an HTTP face
    takes_webhooks = True  # it asks for them when the gateway can receive them

    def __init__(self, settings: Any, inbox: Inbox | None = None) -> None:
        self.settings = settings
        self.inbox = inbox
        self.readiness = ReadyState()
        self.reports_start = True  # jobs stay QUEUED while the provider queues them
        self.concurrency: int | None = None
        token = settings.token.get_secret_value() if settings.token is not None else ""
        self.http = UpstreamHttp(
            self.name, settings.url, self.auth_headers(token) if token else {},
            Limits(settings.request_timeout_seconds, settings.max_retries, settings.retry_initial_seconds,
                   settings.retry_max_seconds, settings.max_concurrent_requests, settings.max_answer_bytes,
                   settings.max_result_bytes),
            settings.allowed_origins,
        )
        self._health_task: asyncio.Task[None] | None = None

    @property
    def requests(self) -> int:
        return self.http.requests

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.http.open()
        self._health_task = asyncio.create_task(self._watch_health(), name=f"{self.name}-health")

    async def close(self) -> None:
        self.readiness.set(False)
        if self._health_task is not None:
            await cancel_and_wait([self._health_task])
        await self.http.close()

    async def health(self) -> bool | None:
        """Whether jobs can be submitted now (a profile asks its provider); None: it cannot tell (ready)."""
        return None

    async def _watch_health(self) -> None:
        interval = self.settings.health_interval_seconds
        while True:
            try:
                ready = await self.health()
            except (aiohttp.ClientError, TimeoutError, UpstreamError, ValueError) as exc:
                log.debug("%s: health check failed: %s", self.name, exc)
                ready = False
            if ready is None:  # nothing to watch
                self.readiness.set(True)
                return
            self.readiness.set(ready)
            await asyncio.sleep(interval if ready else min(1.0, interval))

    # -- Submit ----------------------------------------------------------------------------------

    async def validate(self, job_input: JobInput) -> JobInput:
        if job_input.transcription is not None:  # a typed request, sent as a Whisper model's inputs
            t = job_input.transcription
            inputs: dict[str, Any] = {"audio": "data:audio/wav;base64," + base64.b64encode(t.audio).decode(),
                                      "task": _TASKS.get(t.task, t.task)}
            if t.language:
                inputs["language"] = t.language
            job_input = JobInput(inputs=inputs)
        size = len(json.dumps(job_input.inputs or {}, separators=(",", ":")))
        if size > self.settings.max_input_bytes:
            raise InvalidArgument.fields(
                FieldViolation("inputs", f"{size} bytes of JSON, over the upstream's limit of {self.settings.max_input_bytes}"),
                reason="INPUT_TOO_LARGE",
            )
        return job_input

    # -- to implement ----------------------------------------------------------------------------

    async def submit(self, job: Follow) -> dict[str, Any]:
        """Sends the job; answers the reference to checkpoint (ids, URLs). May put a first Snapshot in job.queue."""
        raise NotImplementedError

    async def poll(self, job: Follow) -> Snapshot | None:
        """The job's status now; None: nothing known (the profile cannot ask)."""
        raise NotImplementedError

    def stream(self, job: Follow) -> AsyncIterator[Snapshot] | None:
        """The provider's event stream of the job, if it has one."""
        return None

    def hook(self, job: Follow, delivery: Delivery) -> Snapshot | None:
        """A webhook delivery as a snapshot; None: not one to take (a bad signature, another job's)."""
        return None

    async def result(self, job: Follow, final: Snapshot) -> Any:
        """The final output of a job that succeeded (default: the snapshot's)."""
        return None if final.output is MISSING else final.output

    async def cancel(self, job: Follow) -> None:
        """Asks the provider to cancel (best effort: errors are logged by the caller)."""

    # -- running ---------------------------------------------------------------------------------

    async def run(self, ctx: JobContext) -> Result:
        s = self.settings
        checkpoint = dict(ctx.checkpoint or {})
        resumed = bool(checkpoint.get("ref"))
        if not resumed and checkpoint.get("submitting") and not self.idempotent_submit:
            raise UpstreamError(
                "the gateway stopped while submitting the job upstream, so it cannot know whether the upstream "
                "has it; it was not submitted again. Resubmit it if needed.",
                "UPSTREAM_SUBMIT_INTERRUPTED", Code.ABORTED,
            )
        if not checkpoint.get("secret"):
            checkpoint = {"submitted_at": time.time(), "secret": secrets.token_urlsafe(24), **checkpoint}
        job = Follow(ctx, checkpoint, Tracker(ctx, s.max_log_bytes), asyncio.Queue(), resumed)
        mailbox = None
        if self.inbox is not None and self.takes_webhooks and (self.uses_webhooks or self.inbox.available):
            mailbox = await self.inbox.attach(ctx.job.id, checkpoint["secret"], job.queue)
            job.hook_url = await self.inbox.url(ctx.job.id, checkpoint["secret"])
        try:
            if not resumed:
                await ctx.save_checkpoint({**checkpoint, "submitting": True})
                checkpoint["ref"] = await self.submit(job)
                checkpoint.pop("submitting", None)
                await ctx.save_checkpoint(checkpoint)
            deadline = float(checkpoint["submitted_at"]) + s.deadline_seconds
            try:
                final = await self._follow(job, deadline)
            except asyncio.CancelledError:
                if ctx.cancel_requested:  # (a stopping server leaves the upstream job running: it resumes)
                    await self._cancel_quietly(job)
                raise
            except UpstreamError as exc:
                if exc.reason == "UPSTREAM_DEADLINE_EXCEEDED":
                    await self._cancel_quietly(job)
                raise
        finally:
            if mailbox is not None:
                await mailbox.close()
        return await self._outcome(job, final)

    async def _cancel_quietly(self, job: Follow) -> None:
        if not job.checkpoint.get("ref"):
            return
        try:
            await asyncio.shield(asyncio.wait_for(self.cancel(job), timeout=self.settings.request_timeout_seconds))
        except (asyncio.CancelledError, Exception) as exc:  # best effort: the job ends here whatever
            log.info("%s: cancelling job %s upstream failed: %s", self.name, job.ctx.job.id, exc)

    async def _outcome(self, job: Follow, final: Snapshot) -> Result:
        if final.state == SUCCEEDED:
            return JobOutput(await self.result(job, final))
        if final.state == CANCELED:
            raise UpstreamError(final.error or "the job was cancelled upstream", final.reason or "UPSTREAM_CANCELLED",
                                final.code if final.code is not Code.UNKNOWN else Code.ABORTED)
        raise UpstreamError(f"the upstream job failed: {final.error or 'no reason given'}",
                            final.reason or "UPSTREAM_JOB_FAILED", final.code)

    async def _follow(self, job: Follow, deadline: float) -> Snapshot:
        s = self.settings
        tracker, queue = job.tracker, job.queue
        pump = None
        if self.stream(job) is not None:
            pump = asyncio.create_task(self._pump(job), name=f"{self.name}-stream")
        interval = s.poll_interval_seconds
        # A resumed job, or one whose provider cannot push: look at once.
        poll_now = job.resumed or (pump is None and not self.uses_webhooks)
        try:
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    last = job.state.get("last_status")
                    raise UpstreamError(
                        f"the upstream did not finish the job within {s.deadline_seconds:.0f} s"
                        + (f" (last status: {last})" if last else ""),
                        "UPSTREAM_DEADLINE_EXCEEDED", Code.DEADLINE_EXCEEDED, {"last_status": str(last or "")},
                    )
                item: Any = None
                if not poll_now:
                    try:
                        wait = interval * (0.8 + 0.4 * random.random())  # jittered: jobs do not poll in step
                        item = await asyncio.wait_for(queue.get(), timeout=min(wait, remaining))
                    except TimeoutError:
                        item = None
                if item is None:
                    if time.time() >= deadline:
                        continue
                    item = await self.poll(job)
                    interval = min(s.poll_max_seconds, interval * s.poll_backoff)
                    hint = job.state.pop("next_poll", None)  # the provider's Retry-After on a status answer
                    if hint is not None:
                        interval = max(0.0, min(float(hint), s.retry_max_seconds))
                    poll_now = False
                else:
                    interval = s.poll_interval_seconds
                if isinstance(item, Delivery):
                    item = self.hook(job, item)
                if isinstance(item, BaseException):
                    raise item
                if await tracker.apply(item):
                    assert tracker.final is not None
                    return tracker.final
        finally:
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, job: Follow) -> None:
        """The provider's event stream into the job's queue, reconnected with backoff while the job runs;
        a refusal (4xx) stops it (polling goes on)."""
        delay = self.settings.poll_interval_seconds
        while True:
            stream = self.stream(job)
            if stream is None:
                return
            try:
                async for snapshot in stream:
                    delay = self.settings.poll_interval_seconds
                    await job.queue.put(snapshot)
                    if snapshot.done:
                        return
            except UpstreamError as exc:
                log.info("%s: the event stream of job %s was refused (%s); polling instead", self.name, job.ctx.job.id, exc)
                return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("%s: the event stream of job %s broke: %s", self.name, job.ctx.job.id, exc)
            await asyncio.sleep(delay)
            delay = min(self.settings.poll_max_seconds, delay * 2)


def progress_of(value: Any) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        number = float(value)
        return number / 100 if number > 1 else number
    return None


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
