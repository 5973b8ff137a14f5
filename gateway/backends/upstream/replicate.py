"""The ``replicate`` profile: Replicate's hosted predictions API (docs/research/replicate.md).

    POST /v1/models/{owner}/{name}/predictions | /v1/deployments/{owner}/{name}/predictions |
         /v1/predictions {"version"}   body {"input", "webhook", "webhook_events_filter"}
         headers Prefer: wait=N (optional), Cancel-After: the job's deadline
        -> 201 the prediction {"id", "status", "output", "logs", "error", "urls": {"get", "cancel", "stream"}}
    GET urls.get -> the prediction; POST urls.cancel
    GET urls.stream (SSE): output, logs, error, done
    webhooks: the whole prediction, on start, output, logs (at most every 500 ms), completed

The gateway reads the stream while the prediction runs (outputs and log lines as they come), takes
the webhooks when it has a public_url or an HTTP face, and falls back on ``GET urls.get``. States:
starting (QUEUED), processing (RUNNING), succeeded, failed, canceled, and aborted (its Cancel-After
passed before it started: UPSTREAM_DEADLINE_EXCEEDED). A create is not idempotent (Replicate has no
idempotency key): it is retried only after an error answer or a connection that never opened;
otherwise the job fails UPSTREAM_SUBMIT_INTERRUPTED rather than make a second prediction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.backends.upstream.core import (
    CANCELED,
    FAILED,
    MISSING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Follow,
    Snapshot,
    UpstreamBackend,
)
from gateway.backends.upstream.http import UpstreamError, short
from gateway.backends.upstream.inbox import Delivery
from gateway.errors import Code

__all__ = ["ReplicateBackend", "signature_valid"]

log = logging.getLogger(__name__)

_STATES = {"starting": QUEUED, "processing": RUNNING, "succeeded": SUCCEEDED, "failed": FAILED,
           "canceled": CANCELED, "aborted": FAILED}
_EVENTS = ["start", "output", "logs", "completed"]


def snapshot_of(body: Any, prediction_id: str | None = None) -> Snapshot | None:
    if not isinstance(body, dict) or (prediction_id is not None and body.get("id") != prediction_id):
        return None
    status = str(body.get("status"))
    state = _STATES.get(status)
    if state is None:
        return None
    output = body.get("output", MISSING)
    logs = body.get("logs")
    snapshot = Snapshot(state, outputs=output if isinstance(output, list) else None,
                        logs=logs if isinstance(logs, str) else None, output=output)
    if status == "failed":
        snapshot.error, snapshot.reason = str(body.get("error") or ""), "UPSTREAM_JOB_FAILED"
    elif status == "aborted":
        snapshot.error = "Replicate aborted the prediction: its deadline (Cancel-After) passed before it started"
        snapshot.reason, snapshot.code = "UPSTREAM_DEADLINE_EXCEEDED", Code.DEADLINE_EXCEEDED
    elif status == "canceled":
        snapshot.error = "the prediction was cancelled on Replicate"
    return snapshot


def signature_valid(secret: str, delivery: Delivery, now: float, tolerance: float = 300.0) -> bool:
    """The Standard Webhooks signature Replicate puts on a webhook, with the account's signing secret."""
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    msg_id, stamp, signatures = headers.get("webhook-id"), headers.get("webhook-timestamp"), headers.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        return False
    try:
        if abs(now - int(stamp)) > tolerance:
            return False
        key = base64.b64decode(secret.split("_", 1)[1])
    except (ValueError, IndexError):
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + delivery.body, hashlib.sha256).digest())
    return any(hmac.compare_digest(expected, sig.partition(",")[2].encode()) for sig in signatures.split())


class ReplicateBackend(UpstreamBackend):
    name = "replicate"
    _signing_secret: str | None = None  # the account's webhook secret; "" when it could not be had

    async def _secret(self) -> str:
        """GET /v1/webhooks/default/secret, once: its webhooks are then taken only when signed with it."""
        if self._signing_secret is None:
            try:
                answer = await self.http.request("GET", f"{self.settings.url}/v1/webhooks/default/secret", "secret",
                                                 retries=2)
                key = answer.body.get("key")
                self._signing_secret = key if isinstance(key, str) and key.startswith("whsec_") else ""
            except UpstreamError as exc:
                log.warning("replicate: the webhook signing secret could not be had (%s): webhooks are taken on the "
                            "per-job secret of their URL alone", exc)
                self._signing_secret = ""
        return self._signing_secret

    def _create_url(self) -> tuple[str, dict[str, Any]]:
        s = self.settings
        if s.model:
            return f"{s.url}/v1/models/{s.model}/predictions", {}
        if s.deployment:
            return f"{s.url}/v1/deployments/{s.deployment}/predictions", {}
        return f"{s.url}/v1/predictions", {"version": s.version}

    async def submit(self, job: Follow) -> dict[str, Any]:
        s = self.settings
        url, body = self._create_url()
        body["input"] = job.ctx.input.inputs or {}
        if job.hook_url and s.webhooks:
            await self._secret()
            body.update(webhook=job.hook_url, webhook_events_filter=_EVENTS)
        remaining = float(job.checkpoint["submitted_at"]) + s.deadline_seconds - time.time()
        headers = {"Cancel-After": f"{max(5, int(remaining))}s"}
        if s.wait_seconds:
            headers["Prefer"] = f"wait={s.wait_seconds}"
        answer = await self.http.request("POST", url, "submit", json_body=body, headers=headers, creates=True,
                                         timeout=s.request_timeout_seconds + s.wait_seconds)
        prediction = answer.body
        urls = prediction.get("urls") if isinstance(prediction.get("urls"), dict) else {}
        ref = {"id": prediction.get("id"), "get": urls.get("get"), "cancel": urls.get("cancel"), "stream": urls.get("stream")}
        if not isinstance(ref["id"], str) or not isinstance(ref["get"], str):
            raise UpstreamError(f"Replicate's answer to the create has no id or urls.get: {short(json.dumps(prediction))}",
                                "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
        for key in ("get", "cancel", "stream"):
            if ref[key]:
                self.http.trusted(ref[key], key)
        snapshot = snapshot_of(prediction)
        if snapshot is not None:
            job.queue.put_nowait(snapshot)
        return ref

    async def poll(self, job: Follow) -> Snapshot | None:
        ref = job.checkpoint["ref"]
        return snapshot_of((await self.http.request("GET", ref["get"], "status")).body, ref["id"])

    def stream(self, job: Follow) -> AsyncIterator[Snapshot] | None:
        return self._stream(job) if job.checkpoint["ref"].get("stream") else None

    async def _stream(self, job: Follow) -> AsyncIterator[Snapshot]:
        st = job.state
        outputs: list[str] = st.setdefault("outputs", [])
        logs: list[str] = st.setdefault("logs", [])
        headers = {"Last-Event-ID": st["last_id"]} if st.get("last_id") else None
        async for event in self.http.events(job.checkpoint["ref"]["stream"], "stream", self.settings.stream_idle_seconds,
                                            headers=headers):
            if event.id:
                st["last_id"] = event.id
            if event.event == "output":
                outputs.append(event.data)
                yield Snapshot(RUNNING, outputs=list(outputs))
            elif event.event == "logs":
                logs.append(event.data + "\n")
                yield Snapshot(RUNNING, logs="".join(logs))
            elif event.event in ("done", "error"):
                final = await self.poll(job)  # the whole prediction: its status, output and error
                if final is not None:
                    yield final
                return

    def hook(self, job: Follow, delivery: Delivery) -> Snapshot | None:
        if self._signing_secret and not signature_valid(self._signing_secret, delivery, time.time()):
            log.warning("replicate: a webhook of job %s without a valid signature was ignored", job.ctx.job.id)
            return None
        try:
            return snapshot_of(json.loads(delivery.body), job.checkpoint["ref"]["id"])
        except ValueError:
            return None

    async def cancel(self, job: Follow) -> None:
        ref = job.checkpoint["ref"]
        url = ref.get("cancel") or f"{self.settings.url}/v1/predictions/{ref['id']}/cancel"
        await self.http.request("POST", url, "cancel", ok={404}, retries=2)
