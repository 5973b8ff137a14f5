"""The HTTP face (aiohttp): the OctoAI-compatible facade (``gateway.facade``), and liveness and
readiness for plain HTTP probes (``/healthz``, ``/readyz``)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from gateway import dashboard
from gateway.api.auth import Authenticator
from gateway.facade import Facade
from gateway.service import JobService
from gateway.settings import Settings

__all__ = ["HttpFace", "parse_address"]

log = logging.getLogger(__name__)


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpFace:
    def __init__(
        self, settings: Settings, service: JobService, auth: Authenticator, serving: Callable[[str], bool]
    ) -> None:
        self.settings = settings
        self.service = service
        self.auth = auth
        self.serving = serving  # health name -> SERVING?
        self.app = web.Application(client_max_size=settings.max_receive_bytes)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)
        Facade(settings, service, auth, serving).mount(self.app)
        dashboard.mount(self.app, settings, service, auth)  # the live dashboard at /
        self._runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format (gateway.metrics); no token: scraped from inside the cluster."""
        from gateway import metrics

        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})

    async def _readyz(self, request: web.Request) -> web.Response:
        serving = self.serving("")
        return web.json_response({"ready": serving}, status=200 if serving else 503)

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
