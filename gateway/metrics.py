"""Prometheus metrics (prometheus-client), served at ``/metrics`` on the HTTP listener (and, for a
``gateway worker``, which has no HTTP face, on ``metrics_listen``).

Each process counts what it does itself (the jobs it stores, runs and ends, the calls it answers), so
that Prometheus sums them across replicas and workers without counting a job twice:

    gateway_jobs_submitted_total{route}                   jobs stored by Submit here
    gateway_submits_refused_total{route,reason}           Submits (and Uploads) refused here, by ErrorInfo reason
                                                          (route: "" when it names no configured route)
    gateway_jobs_finished_total{route,state,reason}       jobs ended here (state SUCCEEDED/FAILED/CANCELLED)
    gateway_queue_wait_seconds{route}                     submitted -> running (histogram)
    gateway_job_run_seconds{route}                        running -> ended (histogram)
    gateway_watch_streams{rpc}                            Watch and WatchJobs streams open now
    gateway_rpcs_total{method,code}                       RPCs answered, by gRPC status code (an interceptor)
    gateway_rpc_seconds{method}                           their duration (histogram; streams: their lifetime)
    gateway_upstream_requests_total{upstream,outcome}     requests to OctoAI upstreams (host): 2xx, 4xx, 5xx, error
    gateway_store_commit_batch_size{store}                writes per store commit (histogram)
    gateway_store_commit_seconds{store}                   how long a commit took (histogram)
    gateway_whisper_real_time_factor{route}               transcription time / audio duration (histogram)
    gateway_job_retries_total{route,reason}               runs started again by the route's retry policy
    gateway_route_up{route}                               1 when the route can run (or take in) jobs here
    gateway_route_workers{route}                          its workers here that can run jobs now
    gateway_store_writable                                1 while the store takes writes
    gateway_build_info{version,commit,python}             1
    process_*, python_info, python_gc_*                   the process and its Python runtime (prometheus-client's)

The scheduler's state is the route's, not this process's: with Redis every process reports the same
figures (read from Redis once a second), so take their max across pods, not their sum:

    gateway_queue_depth{route}                            jobs waiting on the route

    gateway_queue_waiting{route,priority}                 jobs waiting for a worker, by priority (1-5)
    gateway_queue_oldest_seconds{route}                   how long the oldest waiting job has waited (0: none)
    gateway_tenant_waiting{route,tenant}                  a tenant's jobs waiting (tenants named in [tenants]
    gateway_tenant_running{route,tenant}                  ...and running: own series; the rest summed as "other")
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway import __version__

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "RpcMetrics", "build_commit", "child", "render", "track_route_up"]

# Counters and histograms get no `_created` series: a second series per counter that no dashboard reads, and
# one that duplicates each counter's samples for Prometheus's OpenMetrics parser.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_info, python_gc_*
    REGISTRY.register(_collector)  # type: ignore[arg-type]


def build_commit() -> str:
    """The commit this gateway was built from: $GATEWAY_COMMIT (the images set it), else the git checkout's
    HEAD it runs from, else "unknown"."""
    commit = os.environ.get("GATEWAY_COMMIT", "").strip()
    if commit:
        return commit[:40]
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        try:
            done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                  text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return "unknown"


BUILD_INFO = Gauge("gateway_build_info", "1, labelled with the gateway's version, commit and Python version.",
                   ["version", "commit", "python"], registry=REGISTRY)
BUILD_INFO.labels(__version__, build_commit(), platform.python_version()).set(1)
ROUTE_WORKERS = Gauge("gateway_route_workers", "The route's workers in this process that can run jobs now (0 while its "
                      "backend loads, after it failed to start, or in a process that runs none of its jobs).",
                      ["route"], registry=REGISTRY)
STORE_WRITABLE = Gauge("gateway_store_writable", "1 while the store takes writes (0: its disk is full, its Redis refuses "
                       "writes or cannot be reached; Submits are refused meanwhile).", registry=REGISTRY)
ROUTE_UP = Gauge("gateway_route_up", "1 when the route can run jobs here (its backend loaded and warm, or, in a "
                 "process that runs none of its jobs, taking jobs in for the workers); 0 while it loads or after it "
                 "failed to start.", ["route"], registry=REGISTRY)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

JOBS_SUBMITTED = Counter("gateway_jobs_submitted", "Jobs stored by Submit in this process.", ["route"], registry=REGISTRY)
SUBMITS_REFUSED = Counter("gateway_submits_refused", "Submits refused by this process, by error reason.",
                          ["route", "reason"], registry=REGISTRY)
JOB_RETRIES = Counter("gateway_job_retries", "Runs of a job started again by its route's retry policy after a "
                      "transient failure, by the failure's reason.", ["route", "reason"], registry=REGISTRY)
JOBS_FINISHED = Counter("gateway_jobs_finished", "Jobs ended by this process, by final state and error reason.",
                        ["route", "state", "reason"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("gateway_queue_depth", "Jobs waiting on the route (with Redis: in the shared scheduler, as "
                    "every process reads it).", ["route"], registry=REGISTRY)
QUEUE_WAIT = Histogram("gateway_queue_wait_seconds", "From Submit to RUNNING.", ["route"], buckets=_SECONDS,
                       registry=REGISTRY)
RUN_TIME = Histogram("gateway_job_run_seconds", "From RUNNING to the end.", ["route"], buckets=_SECONDS,
                     registry=REGISTRY)
WATCH_STREAMS = Gauge("gateway_watch_streams", "Watch and WatchJobs streams open now.", ["rpc"], registry=REGISTRY)
RPCS = Counter("gateway_rpcs", "RPCs answered, by method and gRPC status code.", ["method", "code"], registry=REGISTRY)
RPC_SECONDS = Histogram("gateway_rpc_seconds", "RPC duration (a stream: its lifetime).", ["method"],
                        buckets=_SECONDS, registry=REGISTRY)
UPSTREAM_REQUESTS = Counter("gateway_upstream_requests", "Requests to OctoAI upstreams (by host), by outcome.",
                            ["upstream", "outcome"], registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter(
    "gateway_webhook_deliveries", "Webhook delivery attempts, by event and outcome (delivered, retry, given_up, "
    "refused, disabled).", ["event", "outcome"], registry=REGISTRY)
STORE_BATCH = Histogram("gateway_store_commit_batch_size", "Writes per store commit.", ["store"],
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
STORE_COMMIT = Histogram("gateway_store_commit_seconds", "Store commit duration.", ["store"],
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
                         registry=REGISTRY)
WHISPER_RTF = Histogram("gateway_whisper_real_time_factor", "Transcription time / audio duration.", ["route"],
                        buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5), registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)


class _Scheduler:
    """The routes' queue snapshots (``QueueSnapshot``), read when scraped."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Callable[[], Any]] = {}
        self.named: frozenset[str] = frozenset()

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("gateway_queue_waiting", "Jobs waiting for a worker on the route, by priority.",
                                    labels=["route", "priority"])
        oldest = GaugeMetricFamily("gateway_queue_oldest_seconds", "How long the route's oldest waiting job has "
                                   "waited (0: none waits).", labels=["route"])
        tenant_waiting = GaugeMetricFamily("gateway_tenant_waiting", "A tenant's jobs waiting on the route (tenants "
                                           "not named in the settings: other).", labels=["route", "tenant"])
        tenant_running = GaugeMetricFamily("gateway_tenant_running", "A tenant's jobs running on the route (tenants "
                                           "not named in the settings: other).", labels=["route", "tenant"])
        now = time.time()
        for route, snapshot_of in list(self.snapshots.items()):
            snapshot = snapshot_of()
            for priority in range(1, 6):
                waiting.add_metric([route, str(priority)], snapshot.by_priority.get(priority, 0))
            created = snapshot.oldest_created
            oldest.add_metric([route], max(0.0, now - created) if created is not None else 0.0)
            sums: dict[str, list[int]] = {}
            for tenant, (queued, running) in snapshot.tenants.items():
                both = sums.setdefault(tenant if tenant in self.named else "other", [0, 0])
                both[0] += queued
                both[1] += running
            for tenant, (queued, running) in sums.items():
                tenant_waiting.add_metric([route, tenant], queued)
                tenant_running.add_metric([route, tenant], running)
        yield from (waiting, oldest, tenant_waiting, tenant_running)


_SCHEDULER = _Scheduler()
REGISTRY.register(_SCHEDULER)  # type: ignore[arg-type]


def track_queue(route: str, snapshot: Callable[[], Any], named_tenants: frozenset[str]) -> None:
    """The route's scheduler figures, from ``snapshot()`` (a QueueSnapshot) when scraped; per-tenant series
    only for ``named_tenants`` (bounded cardinality)."""
    _SCHEDULER.snapshots[route] = snapshot
    _SCHEDULER.named = named_tenants


def track_queue_depth(route: str, depth: Callable[[], float]) -> None:
    """The route's queue depth, read from ``depth`` when scraped."""
    QUEUE_DEPTH.labels(route).set_function(depth)


def track_route_up(route: str, up: Callable[[], bool], workers: int) -> None:
    """gateway_route_up and gateway_route_workers of the route, read from ``up`` when scraped."""
    ROUTE_UP.labels(route).set_function(lambda: 1.0 if up() else 0.0)
    ROUTE_WORKERS.labels(route).set_function(lambda: float(workers) if up() else 0.0)


def track_store(writable: Callable[[], bool]) -> None:
    """gateway_store_writable, read from ``writable`` when scraped."""
    STORE_WRITABLE.set_function(lambda: 1.0 if writable() else 0.0)


_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up in a plain dict: the client's own lookup checks and converts the
    values and takes a lock, a few microseconds each time, and the job path names four metrics per job.
    (Label values here are routes, states and reasons: a bounded set.)"""
    found = _CHILDREN.get((metric, values))
    if found is None:
        found = _CHILDREN[(metric, values)] = metric.labels(*values)
    return found


def job_ended(route: str, state: str, reason: str, started: float | None, finished: float | None) -> None:
    child(JOBS_FINISHED, route, state, reason).inc()
    if started is not None and finished is not None:
        child(RUN_TIME, route).observe(max(0.0, finished - started))


def observe_commit(store: str, size: int, seconds: float) -> None:
    child(STORE_BATCH, store).observe(size)
    child(STORE_COMMIT, store).observe(seconds)


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final status code, and times it, in one place. A method's wrapped
    handler is made once and reused (the interceptor runs for every call: Submit's throughput feels it)."""

    def __init__(self) -> None:
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _done(self, method: str, seconds: Any, context: grpc.aio.ServicerContext, failed: str | None,
              started: float) -> None:
        """Counts a finished call by its status code (``failed``: the default when it raised), and times it."""
        code = _code(context, failed or "OK")
        child(RPCS, method, code).inc()
        seconds.observe(time.perf_counter() - started)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler_call_details.method.rsplit("/", 1)[-1], handler)
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        seconds = RPC_SECONDS.labels(method)
        done = self._done
        def counted(behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                failed: str | None = "UNKNOWN"
                try:
                    result = await behavior(request, context)
                    failed = None
                    return result
                finally:
                    done(method, seconds, context, failed, started)

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(counted(handler.unary_unary), handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.stream_unary is not None:  # Upload (its request: the messages' iterator)
            return grpc.stream_unary_rpc_method_handler(counted(handler.stream_unary), handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.unary_stream is not None:
            stream = handler.unary_stream
            gauge = WATCH_STREAMS.labels(method) if method in ("Watch", "WatchJobs") else None

            async def counted_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                failed: str | None = "CANCELLED"
                if gauge is not None:
                    gauge.inc()
                try:
                    async for item in stream(request, context):
                        yield item
                    failed = None
                finally:
                    if gauge is not None:
                        gauge.dec()
                    done(method, seconds, context, failed, started)

            return grpc.unary_stream_rpc_method_handler(counted_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return handler


def _code(context: grpc.aio.ServicerContext, default: str) -> str:
    try:
        code = context.code()
    except Exception:
        return default
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    try:
        return grpc.StatusCode(code).name  # type: ignore[call-arg]
    except Exception:
        return str(code)
