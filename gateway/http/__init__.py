"""The HTTP face (aiohttp): one application on ``http_listen``, made of sub-apps.

    HttpFace.app                          one web.Application; in front of every route, outermost first:
    ├── errors                            every GatewayError -> gateway.errors.http_status + the one shape;
    │                                     any other exception -> 500 INTERNAL (logged); aiohttp's own pass
    ├── Host                              421 HOST_NOT_ALLOWED for names not the gateway's (auth off)
    ├── Origin                            403 CROSS_ORIGIN_REQUEST for a browser's cross-site write
    ├── access                            the route's Access: who may call it -> current_tenant()
    └── sub-apps (gateway.http.face.SubApp: a list of Routes)
        ├── Probes      (gateway.http.app)        /healthz, /readyz, /metrics
        ├── Facade      (gateway.facade)          /<route>/predict, /<route>/healthcheck, /v1/requests, /v1/responses
        └── Dashboard   (gateway.dashboard)       /, /dashboard/*, /api/dashboard/*

Every error answer, whichever sub-app, is ``{"status": "error", "error": {"code", "reason",
"message"}}`` with ``Cache-Control: no-store`` (and ``Retry-After`` when a retry later can succeed),
at the status that gateway.errors' one table gives the code (and the few reasons with one of their
own): the same table the gRPC face's status codes come from. A new face (an OpenAI-compatible one)
is one more sub-app: its routes, each with its Access; it neither authenticates nor catches errors.

The sub-apps are route lists on the one application rather than aiohttp's prefixed sub-applications:
their URLs share no prefix (the facade's ``/<route>/predict`` is at the root, beside ``/v1/...``), and
aiohttp answers a prefixed sub-application's miss with 404 instead of trying the next one.

The Host and Origin checks are drawn in ``gateway.http.hosts``.
"""

from __future__ import annotations

from gateway.http.app import HttpFace, Probes, parse_address
from gateway.http.face import ANYONE, BEARER, Access, Route, SubApp, current_tenant, error_response
from gateway.http.hosts import HostPolicy

__all__ = ["ANYONE", "BEARER", "Access", "HostPolicy", "HttpFace", "Probes", "Route", "SubApp", "current_tenant",
           "error_response", "parse_address"]
