"""Bearer tokens -> tenants. Every RPC is scoped to the tenant this answers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from gateway.errors import Unauthenticated
from gateway.settings import AuthSettings

__all__ = ["DEFAULT_TENANT", "Authenticator"]

DEFAULT_TENANT = "default"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Looks tokens up by their SHA-256, so the lookup's timing says nothing about the tokens."""

    def __init__(self, settings: AuthSettings) -> None:
        self.enabled = settings.enabled
        self._tenants = {_digest(token): tenant for token, tenant in settings.tokens.items()}

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization: Bearer <token>`` header value."""
        if not self.enabled:
            return DEFAULT_TENANT
        if not authorization:
            raise Unauthenticated("a bearer token is required (authorization: Bearer <token>)", reason="MISSING_TOKEN")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must be 'Bearer <token>'", reason="MISSING_TOKEN")
        tenant = self._tenants.get(_digest(token.strip()))
        if tenant is None:
            raise Unauthenticated("unknown bearer token", reason="INVALID_TOKEN")
        return tenant

    def tenant_from_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        if not self.enabled:
            return DEFAULT_TENANT
        for key, value in metadata or ():
            if key == "authorization":
                return self.tenant_for(value.decode() if isinstance(value, bytes) else value)
        return self.tenant_for(None)
