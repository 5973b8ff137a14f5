"""The one aiohttp application of the HTTP listener, its middlewares, and the probes' sub-app."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Sequence

from aiohttp import web

from gateway.api.auth import Authenticator
from gateway.errors import Code, GatewayError, Unauthenticated
from gateway.http.face import (
    ANYONE,
    BEARER,
    Access,
    ErrorRenderer,
    Handler,
    Route,
    SubApp,
    error_response,
    json_response,
    reset_tenant,
    set_tenant,
)
from gateway.http.hosts import SAFE_METHODS, HostPolicy, cross_origin
from gateway.service import JobService
from gateway.settings import Settings

__all__ = ["HttpFace", "Probes", "parse_address"]

log = logging.getLogger("gateway.http")

ANY_HOST_PATHS = frozenset({"/healthz", "/readyz"})  # probes: nothing to read, must never be refused
_MAX_NOTED = 64  # distinct refused hosts/origins logged, then quiet: a flood of them is not a flood of lines


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Probes:
    """Liveness, readiness and Prometheus metrics, for probes and scrapers: no token."""

    def __init__(self, serving: Callable[[str], bool]) -> None:
        self.serving = serving  # health name -> SERVING?

    def routes(self) -> Iterable[Route]:
        return [Route("GET", "/healthz", self.healthz, ANYONE), Route("GET", "/readyz", self.readyz, ANYONE),
                Route("GET", "/metrics", self.metrics, ANYONE)]

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        serving = self.serving("")
        return json_response({"ready": serving}, status=200 if serving else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format (gateway.metrics); scraped from inside the cluster."""
        from gateway import metrics

        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})


class HttpFace:
    """The HTTP listener: one application, its sub-apps' routes, and in front of every route, in order:
    errors (every GatewayError answered by the one mapping, any other exception as INTERNAL), Host,
    Origin, then access (the route's :class:`~gateway.http.face.Access`)."""

    def __init__(self, settings: Settings, service: JobService, auth: Authenticator, serving: Callable[[str], bool],
                 sub_apps: Sequence[SubApp] | None = None) -> None:
        self.settings = settings
        self.auth = auth
        self.hosts = HostPolicy(settings, auth.enabled)
        self._noted: set[str] = set()
        self._access: dict[web.AbstractRoute, Access] = {}
        self._renderers: dict[web.AbstractRoute, ErrorRenderer] = {}
        self.app = web.Application(client_max_size=settings.max_receive_bytes,
                                   middlewares=[self._errors, self._check_host, self._check_origin, self._check_access])
        if sub_apps is None:
            # Here, not at the top: the sub-apps import gateway.http.face, so either can be imported first.
            from gateway import dashboard
            from gateway.facade import Facade
            from gateway.openai import OpenAIFace

            sub_apps = [Probes(serving), Facade(settings, service, serving), dashboard.Dashboard(settings, service, auth),
                        OpenAIFace(settings, service)]
        self.sub_apps = list(sub_apps)
        for sub_app in self.sub_apps:
            self.mount(sub_app)
        self._runner: web.AppRunner | None = None

    def mount(self, sub_app: SubApp) -> None:
        """Adds a sub-app's routes (a GET route answers HEAD too, under the same access)."""
        for route in sub_app.routes():
            methods = (route.method, "HEAD") if route.method == "GET" else (route.method,)
            for method in methods:
                added = self.app.router.add_route(method, route.path, route.handler)
                self._access[added] = route.access
                if route.errors is not None:
                    self._renderers[added] = route.errors

    def _note(self, what: str) -> None:
        if what not in self._noted and len(self._noted) < _MAX_NOTED:
            self._noted.add(what)
            log.warning("http: refused %s (once per host or origin)", what)

    # -- the middlewares, outermost first ------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one place where errors become HTTP answers. aiohttp's own (no such path, method, a
        body over client_max_size) pass as aiohttp words them."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            if request.writer.output_size > 0:  # a stream already under way: no answer can follow (as aiohttp)
                raise
            render = self._renderers.get(request.match_info.route, error_response)
            if isinstance(exc, GatewayError):
                return render(exc)
            # a bug: logged here, and the caller still gets JSON with a reason, no traceback
            log.exception("http: %s %s failed", request.method, request.path)
            return render(GatewayError("the gateway failed to answer; see its log", "INTERNAL", Code.INTERNAL))

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answers only the gateway's own Host names (DNS rebinding; see gateway.http.hosts). A
        request without Host (HTTP/1.0) passes: browsers always send one."""
        hosts = request.headers.getall("Host", [])
        if self.hosts.any or request.path in ANY_HOST_PATHS or not hosts or (len(hosts) == 1 and not hosts[0]):
            return await handler(request)
        if len(hosts) > 1 or not self.hosts.allows(hosts[0]):
            shown = " ".join(hosts)[:200]
            self._note(f"Host {shown!r} (not in http_allowed_hosts)")
            raise GatewayError(f"this gateway does not answer the host {shown!r}: it answers localhost, IP addresses "
                               "and the names in http_allowed_hosts (GATEWAY_HTTP_ALLOWED_HOSTS), so that "
                               "a DNS-rebinding web page cannot reach it; add the name there",
                               "HOST_NOT_ALLOWED", Code.PERMISSION_DENIED)
        return await handler(request)

    @web.middleware
    async def _check_origin(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuses state-changing requests that a browser sends for another site (CSRF; see
        gateway.http.hosts). Sec-Fetch-Site, which page scripts cannot set, is the first word; Origin the next."""
        if request.method in SAFE_METHODS:
            return await handler(request)
        why = cross_origin(self.hosts, request)
        if why:
            self._note(why)
            raise GatewayError(f"{request.method} {request.path} refused: {why}; state-changing requests are taken "
                               "only from this gateway's own pages or from clients that are not browsers",
                               "CROSS_ORIGIN_REQUEST", Code.PERMISSION_DENIED)
        return await handler(request)

    @web.middleware
    async def _check_access(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one authentication: the route's Access says who may call it; the tenant found is
        the handler's current_tenant()."""
        if request.match_info.http_exception is not None:  # no route: aiohttp's own answer (404, 405)
            return await handler(request)
        access = self._access.get(request.match_info.route, BEARER)  # a route added another way: a token
        if access.write_header and request.method != "GET" and request.headers.get(access.write_header) != "1":
            raise GatewayError(f"state-changing calls here need the header {access.write_header}: 1",
                               f"MISSING_{access.write_header.removeprefix('X-').upper()}_HEADER",
                               Code.PERMISSION_DENIED)
        tenant: str | None = ""
        if access.authenticate:
            try:
                tenant = self.tenant(request, access)
            except GatewayError:
                if not access.optional:
                    raise
                tenant = None
        token = set_tenant(tenant)
        try:
            return await handler(request)
        finally:
            reset_tenant(token)

    def tenant(self, request: web.Request, access: Access) -> str:
        """The caller's tenant: its bearer token (the Authorization header, else the route's cookie)."""
        header = request.headers.get("Authorization")
        if self.auth.enabled and not header and access.cookie:
            token = request.cookies.get(access.cookie, "")
            if not token:
                raise Unauthenticated("sign in: a bearer token is required (the session cookie, or "
                                      "authorization: Bearer <token>)", reason="MISSING_TOKEN")
            header = f"Bearer {token}"
        return self.auth.tenant_for(header)

    # -- the listener --------------------------------------------------------------------------------

    async def start(self, address: str, ssl_context: ssl.SSLContext | None = None) -> int:
        host, port = parse_address(address)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
