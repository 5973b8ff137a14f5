"""Backends, one module each behind the :class:`~gateway.backends.base.Backend` protocol."""

from __future__ import annotations

from typing import Any

from gateway.backends.base import Backend, JobContext, ReadyState
from gateway.settings import RouteSettings

__all__ = ["Backend", "JobContext", "ReadyState", "create_backend"]


def create_backend(settings: RouteSettings, inbox: Any = None, audio_url: Any = None) -> Backend:
    """The backend for a route's settings (``inbox``: where upstream webhooks arrive; ``audio_url``: the
    server's rules for audio by URL). Heavy imports
    (faster-whisper, aiohttp) happen only here."""
    if settings.backend == "echo":
        from gateway.backends.echo import EchoBackend

        return EchoBackend(settings)
    if settings.backend == "whisper":
        from gateway.backends.whisper import WhisperBackend

        return WhisperBackend(settings, audio_url)
    from gateway.backends.upstream import PROFILES, create_upstream

    if settings.backend in PROFILES:
        return create_upstream(settings, inbox)  # type: ignore[no-any-return]
    raise ValueError(f"unknown backend {settings.backend!r}")
