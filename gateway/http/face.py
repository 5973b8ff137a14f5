"""What a sub-app of the HTTP face is made of: its routes, who may call each, and the one error answer.

A sub-app (the OctoAI facade, the dashboard, the probes; later an OpenAI-compatible face) is a
:class:`SubApp`: it lists :class:`Route` values and never authenticates or catches a
:class:`~gateway.errors.GatewayError` itself. The application (``gateway.http.app``) does both, for
every route, in its middlewares: a handler raises, and the error leaves as :func:`error_response`
with the status of :func:`gateway.errors.http_status`; a handler that needs the caller's tenant
reads :func:`current_tenant`.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from gateway.errors import Code, FieldViolation, GatewayError, InvalidArgument, http_status
from gateway.jobs import DEFAULT_PRIORITY

__all__ = [
    "ANYONE",
    "BEARER",
    "PRIORITY_HEADER",
    "Access",
    "Route",
    "SubApp",
    "current_tenant",
    "error_body",
    "error_response",
    "json_response",
    "optional_tenant",
    "priority_of",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call a route; checked before its handler runs (the application's access middleware)."""

    authenticate: bool = True
    """False: anyone (the handler's tenant is ""). With auth off, every caller is the default tenant."""
    optional: bool = False
    """Authenticate if the caller can be, else go on with no tenant (None) instead of refusing."""
    cookie: str = ""
    """A cookie that may carry the bearer token when no Authorization header does (a browser's session)."""
    write_header: str = ""
    """A header that every request but a GET must send with the value ``1`` (a cross-site form cannot)."""


ANYONE = Access(authenticate=False)
BEARER = Access()


ErrorRenderer = Callable[[GatewayError], web.Response]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access = BEARER
    errors: ErrorRenderer | None = None
    """How this route's errors are answered, its access refusals included (default: :func:`error_response`);
    a face that speaks another API's error shape (OpenAI's) sets it."""


class SubApp(Protocol):
    """One face of the HTTP listener: its routes, mounted on the one application."""

    def routes(self) -> Iterable[Route]: ...


_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("gateway_http_tenant", default="")


def current_tenant() -> str:
    """The tenant of the request being handled (each request is its own task, so its own context)."""
    tenant = _tenant.get()
    if tenant is None:
        raise AssertionError("current_tenant() in a route whose access is optional: use optional_tenant()")
    return tenant


def optional_tenant() -> str | None:
    """The tenant of the request being handled, None where the route's access is optional and the
    caller is not signed in."""
    return _tenant.get()


def set_tenant(tenant: str | None) -> contextvars.Token[str | None]:
    return _tenant.set(tenant)


def reset_tenant(token: contextvars.Token[str | None]) -> None:
    _tenant.reset(token)


PRIORITY_HEADER = "X-Gateway-Priority"


def priority_of(request: web.Request) -> int:
    """The job's priority from the X-Gateway-Priority header (1 most urgent to 5; absent: 3): the HTTP
    faces' way to say what Submit's priority field says."""
    text = request.headers.get(PRIORITY_HEADER, "").strip()
    if not text:
        return DEFAULT_PRIORITY
    if text not in ("1", "2", "3", "4", "5"):
        raise InvalidArgument.fields(FieldViolation(PRIORITY_HEADER, f"1 (most urgent) to 5, not {text[:20]!r}"))
    return int(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON without spaces, as every sub-app answers."""
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def error_body(code: Code, reason: str, message: str) -> dict[str, Any]:
    """The one error shape: ``{"status": "error", "error": {"code", "reason", "message"}}``."""
    return {"status": "error", "error": {"code": code.name, "reason": reason, "message": message}}


def error_response(error: GatewayError) -> web.Response:
    """A gateway error as every route answers it: the one status table, the one shape, never cached;
    Retry-After when a retry later can succeed."""
    headers = {"Cache-Control": "no-store"}
    if error.retry_after:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return json_response(error_body(error.code, error.reason, error.message), http_status(error.code, error.reason),
                         headers)
