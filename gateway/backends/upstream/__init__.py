"""Async-HTTP upstreams: one core (gateway.backends.upstream.core) and a profile per provider.

=============  ===================================================  =====================================
profile        provider                                             pushes
=============  ===================================================  =====================================
``cog``        a self-hosted Cog model server                       webhooks (to the gateway's HTTP face)
``replicate``  Replicate's predictions API                          SSE stream, webhooks
``fal``        fal.ai's queue API                                   SSE status stream
``runpod``     RunPod serverless endpoints                          the /stream long poll
``octoai``     an endpoint of OctoAI's async protocol               none: polled
=============  ===================================================  =====================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILES", "create_upstream"]

PROFILES = {
    "octoai": "gateway.backends.upstream.octoai:OctoAIBackend",
    "cog": "gateway.backends.upstream.cog:CogBackend",
    "replicate": "gateway.backends.upstream.replicate:ReplicateBackend",
    "fal": "gateway.backends.upstream.fal:FalBackend",
    "runpod": "gateway.backends.upstream.runpod:RunPodBackend",
}


def create_upstream(settings: Any, inbox: Any = None) -> Any:
    import importlib

    module, _, name = PROFILES[settings.backend].partition(":")
    return getattr(importlib.import_module(module), name)(settings, inbox)
