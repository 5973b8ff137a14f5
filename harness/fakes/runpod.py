"""A fake RunPod serverless (queue-based) endpoint API, as the official ``runpod`` Python SDK 1.12 speaks it.

Its faithfulness is proved by tests/http/test_fake_runpod.py, which runs ``runpod==1.12.0``'s ``Endpoint`` and
``AsyncioEndpoint`` against it; the protocol record (what was checked against the SDK, the docs, and what is
assumed) is docs/research/runpod.md.

Routes, under the base the SDK calls ``endpoint_url_base`` (https://api.runpod.ai/v2 for real; here the fake's root):

- ``POST /{endpoint_id}/run`` ``{"input", "webhook"?, "policy"? {"executionTimeout", "ttl"} (ms)}`` → 200
  ``{"id", "status": "IN_QUEUE"}``.
- ``POST /{endpoint_id}/runsync[?wait=ms]``: the same job, the request held until it ends or the wait is over
  (``runsync_wait_seconds``), then answered with its /status body (a non-final one when the wait ran out).
- ``GET|POST /{endpoint_id}/status/{id}`` → ``{"id", "status", "delayTime"?, "executionTime"?, "workerId"?,
  "output"?, "error"?, "retries"?}``; ``/status-sync/{id}?wait=ms`` long-polls the same until the job ends.
- ``GET|POST /{endpoint_id}/stream/{id}[?wait=ms]`` → ``{"status", "stream": [{"output": chunk}, ...]}``: the chunks
  not yet handed out (a destructive read), long-polled up to ``stream_wait_seconds`` for at least one.
- ``POST /{endpoint_id}/cancel/{id}`` → ``{"id", "status": "CANCELLED"}``; ``POST /{endpoint_id}/retry/{id}`` (a
  FAILED or TIMED_OUT job runs again under its id) → ``{"id", "status": "IN_QUEUE"}``;
  ``POST /{endpoint_id}/purge-queue`` → ``{"removed", "status": "completed"}``;
  ``GET /{endpoint_id}/health`` → ``{"jobs": {"completed", "failed", "inProgress", "inQueue", "retried"},
  "workers": {"idle", "running"}}``.

Every error is JSON ``{"error": message}``; auth is ``Authorization: Bearer KEY`` (the SDK) or the bare key (the
docs' curl). Every job runs the shared :class:`~harness.fakes.common.ScriptedRun` as a generator handler started
with ``return_aggregate_stream``: each step's output is a stream chunk and the final output is the list of chunks
(``audio`` in the input: a plain handler, no chunks, output ``{"text": ...}``); ``fail`` ends it FAILED with that
``error`` after the chunks. A job that ends (COMPLETED, FAILED, TIMED_OUT, CANCELLED) POSTs its /status body to its
``webhook``, retried ``webhook_retries`` times ``webhook_retry_seconds`` apart.

``Faults.stream_cut_after = N``: once a job's /stream answers have handed out N chunks, the next answer that has
chunks to give is a connection reset (and, with ``stream_cut_loses_chunks``, those chunks count as handed out: they
are lost to /stream, as a response lost on the way would be); the count then starts again (N = 0: every one).

In process::

    async with FakeRunPod(token="k") as fake:
        fake.configure(queue_seconds=0.2, webhook_repeat_rate=1.0)
        ... f"{fake.url}/ENDPOINT/run" ...

As a subprocess: ``python -m harness.fakes.runpod --port 0 --token T [--settings JSON]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from harness.fakes.common import FakeServer, ScriptedRun, fake_args, reset_connection, serve_main

__all__ = ["FINAL", "ROUTES", "FakeRunPod", "Job", "RunPodSettings", "main"]

IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT = (
    "IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
FINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
RETRYABLE = frozenset({FAILED, TIMED_OUT})

# Route names (what Faults.targets and the request counters key on).
ROUTES = ("run", "runsync", "status", "status_sync", "stream", "cancel", "retry", "purge_queue", "health")


@dataclass
class RunPodSettings:
    """The fake's own knobs, configurable like Faults (``configure(**)``, ``POST /_control``, ``--settings``)."""

    queue_seconds: float = 0.0              # a job stays IN_QUEUE at least this long (pick-up, cold start)
    workers: int = 2                        # jobs of one endpoint IN_PROGRESS at once; the others wait IN_QUEUE
    execution_timeout_seconds: float = 600.0  # the endpoint's executionTimeout; policy.executionTimeout overrides
    job_ttl_seconds: float = 1800.0         # a finished /run job answers /status this long, then 404
    sync_job_ttl_seconds: float = 60.0      # ... a /runsync one
    runsync_wait_seconds: float = 90.0      # how long /runsync holds the request (?wait=ms overrides)
    stream_wait_seconds: float = 1.0        # how long /stream waits for a chunk before answering none (?wait=ms)
    stream_cut_loses_chunks: bool = True    # a cut /stream answer's chunks are gone (see Faults.stream_cut_after)
    webhook_retries: int = 2                # failed deliveries are tried again this many times ...
    webhook_retry_seconds: float = 10.0     # ... this far apart
    webhook_timeout_seconds: float = 10.0   # one delivery's limit
    webhook_drop_rate: float = 0.0          # this share of jobs' webhooks is never sent
    webhook_repeat_rate: float = 0.0        # this share is delivered twice
    endpoints: frozenset[str] = frozenset()  # the endpoint ids that exist; empty: any id
    max_run_bytes: int = 10 * 1024 * 1024   # /run's body limit (413 beyond; /runsync: the server's 16 MiB)


@dataclass
class Job:
    id: str
    endpoint: str
    input: Any
    webhook: str | None
    execution_timeout: float        # seconds
    ttl: float | None               # seconds from (re)submission until it must have ended, else TIMED_OUT
    sync: bool
    submitted: float                # loop time of the submission (or the last retry)
    status: str = IN_QUEUE
    started: float | None = None
    ended: float | None = None
    output: Any = None
    error: str | None = None
    chunks: list[Any] = field(default_factory=list)
    handed_out: int = 0             # chunks[:handed_out] were given to /stream
    since_cut: int = 0              # chunks handed out since the last cut
    worker_id: str | None = None
    retries: int = 0
    runs: int = 0
    task: asyncio.Task[None] | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        event = self.changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def body(self) -> dict[str, Any]:
        """The /status answer (and the webhook's body)."""
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        queued_until = self.started if self.started is not None else self.ended
        if queued_until is not None:
            out["delayTime"] = round((queued_until - self.submitted) * 1000)
        if self.started is not None and self.ended is not None:
            out["executionTime"] = round((self.ended - self.started) * 1000)
        if self.worker_id is not None:
            out["workerId"] = self.worker_id
        if self.status == COMPLETED:
            out["output"] = self.output
        if self.error is not None:
            out["error"] = self.error
        if self.retries:
            out["retries"] = self.retries
        return out


def _millis(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{what} must be a positive number of milliseconds")
    return value / 1000


class _Refusal(Exception):
    """An error answer (``{"error": message}``) from inside a handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


Handler = Callable[["FakeRunPod", web.Request], Awaitable[web.StreamResponse]]


def _refusals(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def answer(self: FakeRunPod, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except _Refusal as refusal:
            return self.error(refusal.status, refusal.message)

    return answer


class FakeRunPod(FakeServer):
    name = "runpod"

    def __init__(self, *, settings: RunPodSettings | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings or RunPodSettings()
        self.jobs: dict[str, Job] = {}
        self.webhook_log: list[dict[str, Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._worker_seq = 0

    # -- FakeServer --

    def settings(self) -> RunPodSettings:
        return self._settings

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header in (f"Bearer {self.token}", self.token)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"error": message}, status=status, headers=headers)

    def snapshot(self) -> dict[str, Any]:
        jobs = {job.id: {"endpoint": job.endpoint, "status": job.status, "chunks": len(job.chunks),
                         "handed_out": job.handed_out, "runs": job.runs, "retries": job.retries,
                         "sync": job.sync, "webhook": job.webhook} for job in self.jobs.values()}
        return {"jobs": jobs, "webhooks": list(self.webhook_log)}

    def config(self) -> dict[str, Any]:
        config = super().config()  # its settings hold a frozenset (endpoints), which JSON cannot
        config["settings"] = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in config["settings"].items()}
        return config

    def configure(self, **changes: Any) -> dict[str, Any]:
        config = super().configure(**changes)
        with contextlib.suppress(RuntimeError):  # no loop yet (--settings): nothing is queued either
            asyncio.get_running_loop()
            for endpoint in {job.endpoint for job in self.jobs.values()}:
                self._dispatch(endpoint)
        return config

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{endpoint_id}/run", self._run, name="run")
        app.router.add_post("/{endpoint_id}/runsync", self._runsync, name="runsync")
        for path, handler, name in (("/{endpoint_id}/status/{job_id}", self._status, "status"),
                                    ("/{endpoint_id}/status-sync/{job_id}", self._status_sync, "status_sync"),
                                    ("/{endpoint_id}/stream/{job_id}", self._stream, "stream")):
            resource = app.router.add_resource(path, name=name)
            resource.add_route("GET", handler)
            resource.add_route("POST", handler)  # the Go SDK POSTs to these
        app.router.add_post("/{endpoint_id}/cancel/{job_id}", self._cancel, name="cancel")
        app.router.add_post("/{endpoint_id}/retry/{job_id}", self._retry, name="retry")
        app.router.add_post("/{endpoint_id}/purge-queue", self._purge, name="purge_queue")
        app.router.add_get("/{endpoint_id}/health", self._health, name="health")

    async def start(self) -> FakeRunPod:
        await super().start()
        self._session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        tasks = [job.task for job in self.jobs.values() if job.task is not None] + list(self._background)
        for job in self.jobs.values():
            self._halt(job)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().stop()

    # -- helpers --

    def _endpoint(self, request: web.Request) -> str:
        endpoint = request.match_info["endpoint_id"]
        if self._settings.endpoints and endpoint not in self._settings.endpoints:
            raise _Refusal(404, f"endpoint {endpoint} not found")
        return endpoint

    def _job(self, request: web.Request) -> Job:
        endpoint = self._endpoint(request)
        self._sweep()
        job = self.jobs.get(request.match_info["job_id"])
        if job is None or job.endpoint != endpoint:
            raise _Refusal(404, "request does not exist")
        return job

    def _sweep(self) -> None:
        """Forgets the finished jobs kept past their TTL (job_ttl_seconds, sync_job_ttl_seconds)."""
        now = self._now()
        for job in [j for j in self.jobs.values() if j.ended is not None]:
            keep = self._settings.sync_job_ttl_seconds if job.sync else self._settings.job_ttl_seconds
            if now - job.ended > keep:  # type: ignore[operator]
                self._forget(job)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    @staticmethod
    def _wait_arg(request: web.Request, default: float, low: float = 0.0, high: float = 300.0) -> float:
        raw = request.query.get("wait")
        if raw is None:
            return default
        try:
            return min(max(float(raw) / 1000, low), high)
        except ValueError:
            raise _Refusal(400, "wait must be a number of milliseconds") from None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- the job's life --

    async def _submit(self, request: web.Request, endpoint: str, sync: bool) -> Job:
        raw = await request.read()
        if not sync and len(raw) > self._settings.max_run_bytes:
            raise _Refusal(413, f"request body exceeds {self._settings.max_run_bytes} bytes")
        try:
            body = await request.json()
        except ValueError:
            raise _Refusal(400, "the body must be JSON") from None
        if not isinstance(body, dict) or "input" not in body:
            raise _Refusal(400, "the body must be a JSON object with an input")
        webhook = body.get("webhook")
        policy = body.get("policy") or {}
        if webhook is not None and not isinstance(webhook, str):
            raise _Refusal(400, "webhook must be a URL")
        if not isinstance(policy, dict):
            raise _Refusal(400, "policy must be an object")
        try:
            execution = _millis(policy.get("executionTimeout"), "policy.executionTimeout")
            ttl = _millis(policy.get("ttl"), "policy.ttl")
        except ValueError as exc:
            raise _Refusal(400, str(exc)) from None
        job_id = f"sync-{uuid.uuid4()}" if sync else f"{uuid.uuid4()}-u1"
        job = Job(id=job_id, endpoint=endpoint, input=body["input"], webhook=webhook or None,
                  execution_timeout=execution or self._settings.execution_timeout_seconds, ttl=ttl, sync=sync,
                  submitted=self._now())
        self.jobs[job_id] = job
        self.stats.creates[job_id] += 1
        self._enqueue(job)
        return job

    def _enqueue(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        job.timers.append(loop.call_later(self._settings.queue_seconds, self._dispatch, job.endpoint))
        if job.ttl is not None:
            job.timers.append(loop.call_later(job.ttl, self._expire, job))

    def _dispatch(self, endpoint: str) -> None:
        """Starts the endpoint's ready queued jobs, oldest first, while it has idle workers."""
        now = self._now()
        queued = sorted((j for j in self.jobs.values() if j.endpoint == endpoint and j.status == IN_QUEUE
                         and now - j.submitted >= self._settings.queue_seconds - 1e-3), key=lambda j: j.submitted)
        running = sum(1 for j in self.jobs.values() if j.endpoint == endpoint and j.status == IN_PROGRESS)
        for job in queued[:max(0, self._settings.workers - running)]:
            self._worker_seq += 1
            job.status, job.started, job.runs = IN_PROGRESS, now, job.runs + 1
            job.worker_id = f"fake-worker-{self._worker_seq % max(1, self._settings.workers)}"
            job.task = asyncio.get_running_loop().create_task(self._execute(job))
            job.timers.append(asyncio.get_running_loop().call_later(job.execution_timeout, self._expire, job))
            job.notify()

    async def _execute(self, job: Job) -> None:
        run = ScriptedRun.of(job.input)
        for chunk in run.outputs():
            await asyncio.sleep(run.delay)
            if not run.audio:  # a generator handler streams each step; a plain one (Whisper) does not
                job.chunks.append(chunk)
                job.notify()
        if run.fail is not None:
            self._finish(job, FAILED, error=run.fail)
        else:
            self._finish(job, COMPLETED, output=run.final)

    def _expire(self, job: Job) -> None:
        """executionTimeout (or policy.ttl) ran out: TIMED_OUT (the timers go when the job ends)."""
        if job.status not in FINAL and self.jobs.get(job.id) is job:
            self._finish(job, TIMED_OUT)

    def _halt(self, job: Job) -> None:
        for timer in job.timers:
            timer.cancel()
        job.timers.clear()
        if job.task is not None and job.task is not asyncio.current_task():
            job.task.cancel()
        job.task = None

    def _finish(self, job: Job, status: str, *, output: Any = None, error: str | None = None) -> None:
        self._halt(job)
        job.status, job.output, job.error, job.ended = status, output, error, self._now()
        job.notify()
        if job.webhook:
            self._spawn(self._deliver(job.webhook, job.body()))
        self._dispatch(job.endpoint)

    def _forget(self, job: Job) -> None:
        self._halt(job)
        self.jobs.pop(job.id, None)
        job.notify()

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        s = self._settings
        if s.webhook_drop_rate > 0 and self.rng.random() < s.webhook_drop_rate:
            self.stats.faults["webhook_drop"] += 1
            self.webhook_log.append({"job_id": body["id"], "url": url, "attempt": 0, "result": "dropped"})
            return
        times = 1
        if s.webhook_repeat_rate > 0 and self.rng.random() < s.webhook_repeat_rate:
            self.stats.faults["webhook_repeat"] += 1
            times = 2
        for _ in range(times):
            await self._deliver_once(url, body)

    async def _deliver_once(self, url: str, body: dict[str, Any]) -> None:
        s = self._settings
        assert self._session is not None
        for attempt in range(1, s.webhook_retries + 2):
            record: dict[str, Any] = {"job_id": body["id"], "url": url, "attempt": attempt}
            try:
                async with self._session.post(url, json=body,
                                              timeout=aiohttp.ClientTimeout(total=s.webhook_timeout_seconds)) as resp:
                    await resp.read()
                    record["result"] = resp.status
                    ok = 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["result"] = type(exc).__name__
                ok = False
            self.webhook_log.append(record)
            if ok:
                return
            if attempt <= s.webhook_retries:
                await asyncio.sleep(s.webhook_retry_seconds)

    # -- handlers --

    @_refusals
    async def _run(self, request: web.Request) -> web.Response:
        job = await self._submit(request, self._endpoint(request), sync=False)
        return web.json_response({"id": job.id, "status": job.status})

    @_refusals
    async def _runsync(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        wait = self._wait_arg(request, self._settings.runsync_wait_seconds, 1.0, 300.0)
        job = await self._submit(request, endpoint, sync=True)
        await self._until_final(job, wait)
        return web.json_response(job.body())

    async def _until_final(self, job: Job, wait: float) -> None:
        deadline = self._now() + wait
        while job.status not in FINAL and (left := deadline - self._now()) > 0:
            await job.wait_change(left)

    @_refusals
    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self._job(request).body())

    @_refusals
    async def _status_sync(self, request: web.Request) -> web.Response:
        job = self._job(request)
        await self._until_final(job, self._wait_arg(request, self._settings.runsync_wait_seconds, 1.0, 300.0))
        return web.json_response(job.body())

    @_refusals
    async def _stream(self, request: web.Request) -> web.Response:
        job = self._job(request)
        deadline = self._now() + self._wait_arg(request, self._settings.stream_wait_seconds)
        while job.handed_out >= len(job.chunks) and job.status not in FINAL and (left := deadline - self._now()) > 0:
            await job.wait_change(left)
        pending = job.chunks[job.handed_out:]
        cut_after = self.stream_events_left()
        if pending and cut_after is not None and job.since_cut >= cut_after:
            job.since_cut = 0
            if self._settings.stream_cut_loses_chunks:
                job.handed_out = len(job.chunks)
            self.stats.faults["stream_cut"] += 1
            reset_connection(request)
        job.handed_out += len(pending)
        job.since_cut += len(pending)
        return web.json_response({"status": job.status, "stream": [{"output": chunk} for chunk in pending]})

    @_refusals
    async def _cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status not in FINAL:
            self._finish(job, CANCELLED)
        return web.json_response({"id": job.id, "status": job.status})

    @_refusals
    async def _retry(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status not in RETRYABLE:
            raise _Refusal(400, f"job {job.id} is {job.status}: only FAILED or TIMED_OUT jobs can be retried")
        job.status, job.submitted, job.retries = IN_QUEUE, self._now(), job.retries + 1
        job.started = job.ended = job.output = job.error = job.worker_id = None
        job.chunks, job.handed_out, job.since_cut = [], 0, 0
        job.notify()
        self._enqueue(job)
        return web.json_response({"id": job.id, "status": job.status})

    @_refusals
    async def _purge(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        queued = [job for job in self.jobs.values() if job.endpoint == endpoint and job.status == IN_QUEUE]
        for job in queued:
            self._forget(job)
        return web.json_response({"removed": len(queued), "status": "completed"})

    @_refusals
    async def _health(self, request: web.Request) -> web.Response:
        endpoint = self._endpoint(request)
        self._sweep()
        mine = [job for job in self.jobs.values() if job.endpoint == endpoint]
        count = {status: sum(1 for job in mine if job.status == status)
                 for status in (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED)}
        running = count[IN_PROGRESS]
        return web.json_response({
            "jobs": {"completed": count[COMPLETED], "failed": count[FAILED], "inProgress": running,
                     "inQueue": count[IN_QUEUE], "retried": sum(job.retries for job in mine)},
            "workers": {"idle": max(0, self._settings.workers - running), "running": running},
        })


def _make(args: argparse.Namespace) -> FakeRunPod:
    return FakeRunPod(**fake_args(args))


def main(argv: list[str] | None = None) -> None:
    serve_main(_make, argv, "python -m harness.fakes.runpod", (__doc__ or "").split("\n")[0])


if __name__ == "__main__":
    main()

