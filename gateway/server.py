"""The bootstrap: builds every part from the settings, starts them in order, stops them in reverse.

    async with Gateway(settings) as gw:     # store, hub, service, routes, gRPC, HTTP, sweeper
        print(gw.grpc_port)
        await gw.wait_for_stop()            # SIGTERM / SIGINT

Shutdown (SIGTERM), in order: health NOT_SERVING and Submit refused (UNAVAILABLE, retryable), the
routes stop taking jobs and let running ones finish for ``shutdown_grace_seconds`` (the rest stay
RUNNING in the store and resume at the next start), watch streams end with UNAVAILABLE so clients
resume them elsewhere, then ``server.stop(grace)`` and the store closes. Kubernetes'
terminationGracePeriodSeconds must be longer than shutdown_grace_seconds plus a few seconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway import metrics
from gateway.api.auth import Authenticator
from gateway.api.gate import ReceiveGate
from gateway.api.servicer import SERVICE_NAME, GatewayServicer
from gateway.backends import create_backend
from gateway.backends.upstream.inbox import Inbox, RedisInbox
from gateway.bus import EventBus, MemoryBus, Resyncs
from gateway.errors import StartupError
from gateway.hub import EventHub
from gateway.jobs import Clock, SystemClock
from gateway.service import JobService
from gateway.settings import Settings
from gateway.store import ReportsWritability, SqliteStore, Store
from gateway.store.uploads import sweep_spools
from gateway.tasks import cancel_and_wait
from gateway.tls import CertificateFiles
from gateway.work import RouteRunner, WorkQueue, health_name

if TYPE_CHECKING:
    from gateway.webhooks import Dispatcher

__all__ = ["Gateway", "create_server", "health_name", "make_bus", "make_store"]

log = logging.getLogger(__name__)

# Requests over max_receive_bytes up to gRPC's own limit (max_refused_request_bytes, at least this much
# over max_receive_bytes) still reach the gateway, which refuses them with an ErrorInfo
# (REQUEST_TOO_LARGE, with the limit and the size). Beyond it gRPC itself refuses them (RESOURCE_EXHAUSTED,
# no details). gRPC's limit is what keeps a huge request from costing memory: it refuses one from its
# length prefix, before receiving it (a 1 GiB request: no growth), where below it the whole request is
# buffered and copied before any handler sees it (about 2.7 times its size at the peak: 2.7 GiB for
# 1 GiB, measured). Its refusal is final: a handler reading the message sees only the end of the call
# and cannot answer instead. Only authenticated calls are read (gateway.api.gate), Submits a few at once.
RECEIVE_HEADROOM = 4 * 1024 * 1024


def receive_ceiling(settings: Settings) -> int:
    """gRPC's receive limit: requests up to it are answered by the gateway, with their reason."""
    return min(max(settings.max_refused_request_bytes, settings.max_receive_bytes + RECEIVE_HEADROOM), 2**31 - 1)
FINAL_GRACE_SECONDS = 2.0


def create_server(
    settings: Settings, address: str | None = None, credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the gateway's channel options, bound (with TLS given credentials); (server, port)."""
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", receive_ceiling(settings)),
        ("grpc.max_send_message_length", -1),
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_age_ms", ms(settings.max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace_seconds)),
        ("grpc.so_reuseport", 0),
        # No bandwidth-delay probing: it grows every stream's initial window (to 8 MiB and more on a
        # fast link), so a Submit waiting for the receive gate (gateway.api.gate) would be half
        # received anyway. A stream being read still gets a window the size of its message.
        ("grpc.http2.bdp_probe", 0),
        # New calls beyond this many waiting for the application are refused (CANCELLED); the
        # defaults (1,000, hard 3,000) refuse a third of 10,000 watchers reconnecting at once, which
        # is what a replica's shutdown causes by design.
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 30_000),
    ]
    server = grpc.aio.server(options=options, interceptors=list(interceptors) or None)
    address = address or settings.listen
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpcio: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen for gRPC on {address}: the address is in use or not available here; "
                           "set listen (--listen)", StartupError.GRPC_ADDRESS)
    return server, port


def _route_up(runner: RouteRunner) -> bool:
    """Whether the route can run jobs here (or, with no workers here, take them in): gateway_route_up."""
    return runner.backend.readiness.ready and runner.start_error is None


def make_store(settings: Settings, clock: Clock | None = None) -> Store:
    """The store the settings name: Redis for a redis:// URL, else SQLite in data_dir."""
    store: Store
    if settings.store:
        from gateway.redis import RedisStore

        limits = {name: (route.max_queue, route.max_queued_bytes) for name, route in settings.routes.items()}
        store = RedisStore(settings.store, clock=clock, queue_limits=limits, tenants=settings.tenant)
        store.spool_dir = settings.data_dir / "uploads" / "incoming"
    else:
        store = SqliteStore(settings.data_dir / "gateway.sqlite3", settings.sqlite_synchronous)
    store.keep_failed_inputs = settings.keep_failed_inputs
    return store


def make_bus(settings: Settings) -> EventBus:
    """The event bus that goes with the store: Redis pub/sub across replicas, else in-process."""
    if settings.store:
        from gateway.redis import RedisBus

        return RedisBus(settings.store)
    return MemoryBus()


class Gateway:
    """One running gateway. Use as an async context manager."""

    def __init__(self, settings: Settings, clock: Clock | None = None, store: Store | None = None,
                 api: bool = True) -> None:
        """``api`` False: a worker process (gateway worker): the routes' workers and health only."""
        self.settings = settings
        self.api = api
        self.clock = clock or SystemClock()
        self.store: Store = store or make_store(settings, self.clock)
        self.bus: EventBus = make_bus(settings)
        self.hub = EventHub()
        self._unsubscribe_hub = self.bus.subscribe(self.hub.publish)  # one subscription per process
        if isinstance(self.bus, Resyncs):  # a shared bus may lose events: the hub then reads the store
            self.bus.on_resync(self.hub.resync)
        # Built before the service, which is handed them: the runners (filled in as start() builds
        # each, with the service's lifecycle) and, in an API process, the webhook dispatcher.
        self.runners: dict[str, RouteRunner] = {}
        self.webhooks: Dispatcher | None = None
        if api:  # API processes deliver webhooks (workers have no Submit, and may have no way out)
            from gateway.api.convert import webhook_body
            from gateway.webhooks import Dispatcher

            self.webhooks = Dispatcher(settings.webhooks, self.store, self.clock, webhook_body)
        self.service = JobService(settings, self.store, self.bus, self.hub, self.clock, self.runners, self.webhooks)
        self.health = health.aio.HealthServicer()
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.http: Any = None
        self.inbox: Inbox | None = None
        self.http_port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._stopped = False
        self._serving: dict[str, bool] = {}
        self.tls: CertificateFiles | None = None
        self.metrics_server: Any = None
        self.metrics_port = 0

    async def __aenter__(self) -> Gateway:
        try:
            await self.start()
        except BaseException:
            # Nothing stays half-started: what did start (routes loading, a bound port) is stopped.
            try:
                await self.stop(drain=0.0)
            except Exception:
                log.debug("stopping a gateway that failed to start", exc_info=True)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        settings = self.settings
        if settings.tls.enabled:  # first: unusable certificates stop the start before anything runs
            self.tls = CertificateFiles(settings.tls)
        if settings.tracing:
            from gateway.tracing import enable_tracing

            enable_tracing()
        await self.store.open()
        swept = await asyncio.to_thread(sweep_spools, settings.data_dir / "uploads" / "incoming")
        if swept:
            log.info("deleted %d partial upload(s) left by a process that is gone", swept)
        store = self.store
        if isinstance(store, ReportsWritability):
            store.on_writable(self._store_listener)
            metrics.track_store(lambda: store.writable)
        await self.bus.open()
        self.inbox = self._inbox()
        for name, route_settings in settings.routes.items():
            if settings.workers:  # --workers N: every route runs N jobs at once here
                route_settings = route_settings.model_copy(update={"workers": settings.workers})
            runner = RouteRunner(name, route_settings, create_backend(route_settings, self.inbox, settings.audio_url),
                                 self.service.lifecycle,
                                 queue=self._queue(name, route_settings.max_queue),
                                 workers=0 if settings.workers == 0 else None,
                                 tenants=settings.tenant)
            self.runners[name] = runner
            metrics.track_queue_depth(name, runner.queued)
            metrics.track_route_up(name, functools.partial(_route_up, runner), runner.workers)
            metrics.track_queue(name, runner.queue.snapshot, frozenset(settings.tenants) - {"default"})
            await self._set_health(health_name(name), False)
            runner.backend.readiness.listen(self._health_listener(name))
        # Bound before any job runs: a start that fails on its address has run nothing (and counted
        # no attempt of a resumed job).
        auth = Authenticator(settings.auth)
        servicer = GatewayServicer(self.service, auth, settings.max_receive_bytes, settings.max_inflight_submit_bytes,
                                   spool_dir=settings.data_dir / "uploads" / "incoming")
        # Submit messages received at once: as many as the in-flight byte budget holds at the largest size;
        # only authenticated callers take them (the gate asks the servicer before reading anything). With
        # auth on, every other RPC of the service is authenticated before its message is read, too.
        gate = ReceiveGate(f"/{SERVICE_NAME}/Submit", settings.max_inflight_submit_bytes // settings.max_receive_bytes,
                           servicer.authenticate, servicer.received_size,
                           service=f"/{SERVICE_NAME}/" if auth.enabled else None)
        server, self.grpc_port = create_server(settings, credentials=self.tls.grpc_credentials() if self.tls else None,
                                               interceptors=[*([gate] if self.api else []), metrics.RpcMetrics()])
        self.grpc_server = server
        await self.service.resume()
        for runner in self.runners.values():
            await runner.start()
        self._tasks.append(asyncio.create_task(self.service.sweep_forever(), name="sweeper"))
        self._tasks.append(asyncio.create_task(self.service.expire_queued_forever(), name="queue-deadlines"))
        if self.webhooks is not None:
            self._tasks.append(asyncio.create_task(self.webhooks.run(), name="webhooks"))

        services = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.api:
            server.add_generic_rpc_handlers((servicer.handler(),))
            services.insert(0, SERVICE_NAME)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(services, server)
        await server.start()
        await self._set_health(health.OVERALL_HEALTH, True)
        if self.api:
            await self._set_health(SERVICE_NAME, True)
        if settings.http_listen and self.api:
            from gateway.backends.upstream.inbox import UpstreamHooks
            from gateway.http import HttpFace, parse_address

            self.http = HttpFace(settings, self.service, auth, self.serving)
            self.http.mount(UpstreamHooks(self.inbox))
            try:
                self.http_port = await self.http.start(settings.http_listen, self.tls.ssl_context() if self.tls else None)
            except OSError as exc:
                raise StartupError(f"cannot listen for HTTP on {settings.http_listen}: {exc.strerror or exc}; set "
                                   "http_listen (--http-listen; '' for none)", StartupError.HTTP_ADDRESS) from None
            host = parse_address(settings.http_listen)[0]
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            host = f"[{host}]" if ":" in host else host
            self.inbox.set_base(f"{'https' if self.tls else 'http'}://{host}:{self.http_port}")
        if self.tls is not None:
            self._tasks.append(asyncio.create_task(self.tls.watch(), name="tls-reload"))
        if settings.metrics_listen:
            from prometheus_client import start_http_server

            from gateway.http import parse_address

            host, port = parse_address(settings.metrics_listen)
            try:
                self.metrics_server, _thread = start_http_server(port, host, registry=metrics.REGISTRY)
            except OSError as exc:
                raise StartupError(f"cannot listen for metrics on {settings.metrics_listen}: {exc.strerror or exc}; "
                                   "set metrics_listen", StartupError.HTTP_ADDRESS) from None
            self.metrics_port = int(self.metrics_server.server_port)
            log.info("gateway serving Prometheus metrics on port %d", self.metrics_port)
        log.info(
            "gateway serving gRPC%s on port %d%s; routes: %s", " (TLS)" if self.tls else "", self.grpc_port,
            f", HTTP on port {self.http_port}" if self.http else "", ", ".join(settings.routes),
        )
        if settings.workers == 0:
            if self.store.shared:
                log.info("this process runs no jobs (--workers 0): its routes take jobs in for the `gateway worker` "
                         "processes on the same store")
            else:
                log.warning("this process runs no jobs (--workers 0) and its SQLite store is its own: jobs submitted "
                            "here wait until a gateway with workers runs on this data dir (for separate workers, use "
                            "a Redis store: store = \"redis://...\")")

    def _inbox(self) -> Inbox:
        """Where upstream webhooks reach the jobs this process runs (across replicas: Redis)."""
        settings = self.settings

        async def job_active(job_id: str) -> bool:
            job = await self.store.get_job(job_id)
            return job is not None and not job.terminal

        if settings.store:
            inbox: Inbox = RedisInbox(job_active, settings.store, settings.public_url)
        else:
            inbox = Inbox(job_active, settings.public_url)
        inbox.expect_base = bool(settings.public_url) or bool(settings.http_listen and self.api)
        for name, route in settings.routes.items():
            if route.backend == "cog" and not inbox.expect_base:
                raise StartupError(
                    f"route {name!r} (Cog) is followed through webhooks to the gateway's HTTP face: set public_url "
                    "(the address the Cog server reaches this gateway at) or http_listen", StartupError.CONFIGURATION)
        return inbox

    def _queue(self, route: str, max_queue: int) -> WorkQueue | None:
        """A shared store's routes share their queues (Redis streams); else each its own, in memory."""
        if not self.settings.store:
            return None
        from gateway.redis import RedisQueue

        return RedisQueue(self.settings.store, route, max_queue, self.settings.lease_seconds, consumer=self._identity)

    def _identity(self) -> str:
        """This process among a shared queue's workers, the same when it comes back after a crash, so
        that it takes its own jobs back at once: ``worker_id`` if set, else the host and the gRPC port it
        holds (two live processes cannot hold one port); a random one when the port is not fixed."""
        from gateway.redis import consumer_name

        if self.settings.worker_id:
            return self.settings.worker_id
        if self.settings.listen.rpartition(":")[2] in ("", "0"):
            return consumer_name()
        return f"{socket.gethostname()}:{self.grpc_port}"

    def serving(self, name: str) -> bool:
        """Whether a grpc.health.v1 name ("" overall, health_name(route)) is SERVING."""
        return self._serving.get(name, False) and not self._stopping.is_set()

    async def _set_health(self, name: str, ready: bool) -> None:
        self._serving[name] = ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(name, status)

    def _store_listener(self, writable: bool) -> None:
        """While the store cannot write, the gateway is NOT_SERVING (it refuses new jobs): probes and
        load balancers send work elsewhere; it turns SERVING again by itself when writes work."""
        if self._stopped or self._stopping.is_set() or self.grpc_server is None:
            return
        for name in [health.OVERALL_HEALTH] + ([SERVICE_NAME] if self.api else []):
            self._spawn_health(name, writable)

    def _health_listener(self, route: str) -> Callable[[bool], None]:
        def listener(ready: bool) -> None:
            if self._stopped or self._stopping.is_set():
                return
            self._spawn_health(health_name(route), ready)

        return listener

    def _spawn_health(self, name: str, ready: bool) -> None:
        """Sets a health status from a synchronous listener, as a task the gateway waits for at stop."""
        task = asyncio.get_running_loop().create_task(self._set_health(name, ready))
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop(self) -> None:
        await self._stopping.wait()

    async def stop(self, drain: float | None = None) -> None:
        """``drain``: how long running jobs may go on (default shutdown_grace_seconds)."""
        if self._stopped:
            return
        self._stopping.set()
        self._stopped = True
        drain = self.settings.shutdown_grace_seconds if drain is None else drain
        log.info("gateway stopping: draining for up to %.0f s", drain)
        self.service.accepting = False
        await self.health.enter_graceful_shutdown()
        await asyncio.gather(*(r.stop(drain) for r in self.runners.values()), return_exceptions=True)
        self.hub.close()
        if self.http is not None:
            await self.http.stop()
        if self.inbox is not None:
            await self.inbox.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(FINAL_GRACE_SECONDS)
        if self.webhooks is not None:
            await self.webhooks.stop()
        await cancel_and_wait(self._tasks)
        self._unsubscribe_hub()
        await self.bus.close()
        await self.store.close()
        log.info("gateway stopped")

