"""The ``fal`` profile: fal.ai's queue API on one application (docs/research/fal.md).

    POST {url}/{owner}/{app}[/path][?fal_webhook=URL]  (the input as the body; Authorization: Key ...)
        -> {"request_id", "status": "IN_QUEUE", "queue_position", "status_url", "response_url", "cancel_url"}
    GET status_url?logs=1 -> {"status": "IN_QUEUE" | "IN_PROGRESS" | "COMPLETED", "queue_position", "logs", "error"}
    GET status_url/stream?logs=1 -> SSE: one status per change, until COMPLETED
    GET response_url -> the output (a failed run: the model's error status and body)
    PUT cancel_url -> 202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED

The gateway reads the status stream (state, queue position, new log lines) and falls back on the
status poll; with a public_url (or an HTTP face) it also asks for fal's completion webhook. A submit
is not idempotent: a gateway stopped during the POST fails the job (UPSTREAM_SUBMIT_INTERRUPTED)
rather than risk a second run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from gateway.backends.upstream.core import FAILED, MISSING, QUEUED, RUNNING, SUCCEEDED, Follow, Snapshot, UpstreamBackend
from gateway.backends.upstream.http import UpstreamError, short
from gateway.backends.upstream.inbox import Delivery
from gateway.errors import Code

__all__ = ["FalBackend"]

# A 4xx from the result is the model's own refusal; a 5xx may be a fault on the way (the status said
# COMPLETED without an error), so it is retried, and a run that failed says so in its status first.
_RESULT_FAILED = frozenset(range(400, 500)) - {408, 429}


class FalBackend(UpstreamBackend):
    name = "fal"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Key {token}"}

    async def health(self) -> bool | None:
        return None  # fal has no health check: a route is ready at once

    def _logs(self, job: Follow, lines: Any) -> str | None:
        """fal's log lines (a status carries all of them, a stream event the new ones), deduplicated."""
        if not isinstance(lines, list):
            return None
        seen: set[tuple[str, str]] = job.state.setdefault("seen", set())
        text: list[str] = job.state.setdefault("lines", [])
        for line in lines:
            if isinstance(line, dict):
                key = (str(line.get("timestamp", "")), str(line.get("message", "")))
                if key not in seen:
                    seen.add(key)
                    text.append(key[1])
        return "".join(f"{message}\n" for message in text)

    def _snapshot(self, job: Follow, body: Any) -> Snapshot | None:
        if not isinstance(body, dict):
            return None
        status = body.get("status")
        logs = self._logs(job, body.get("logs"))
        if status == "IN_QUEUE":
            position = body.get("queue_position")
            return Snapshot(QUEUED, logs=logs, queue_position=position + 1 if isinstance(position, int) else None)
        if status == "IN_PROGRESS":
            return Snapshot(RUNNING, logs=logs)
        if status == "COMPLETED":
            if body.get("error"):
                kind = str(body.get("error_type") or "")  # fal's own (request_timeout, ...): not the model's
                return Snapshot(FAILED, logs=logs, error=str(body["error"]) + (f" ({kind})" if kind else ""),
                                reason="UPSTREAM_JOB_FAILED")
            return Snapshot(SUCCEEDED, logs=logs)  # the output is fetched from response_url
        return None

    async def submit(self, job: Follow) -> dict[str, Any]:
        url = f"{self.settings.url}/{self.settings.model}"
        if job.hook_url:
            url += f"?fal_webhook={quote(job.hook_url, safe='')}"
        answer = await self.http.request("POST", url, "submit", json_body=job.ctx.input.inputs or {},
                                         creates=True)
        body = answer.body
        ref = {k: body.get(k) for k in ("request_id", "status_url", "response_url", "cancel_url")}
        if not all(isinstance(v, str) and v for v in ref.values()):
            raise UpstreamError(f"fal's answer to the submission lacks request_id or its URLs: {short(json.dumps(body))}",
                                "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
        for key in ("status_url", "response_url", "cancel_url"):
            self.http.trusted(ref[key], key)
        snapshot = self._snapshot(job, body)
        if snapshot is not None:
            job.queue.put_nowait(snapshot)
        return ref

    async def poll(self, job: Follow) -> Snapshot | None:
        answer = await self.http.request("GET", job.checkpoint["ref"]["status_url"] + "?logs=1", "status")
        return self._snapshot(job, answer.body)

    def stream(self, job: Follow) -> AsyncIterator[Snapshot] | None:
        return self._stream(job)

    async def _stream(self, job: Follow) -> AsyncIterator[Snapshot]:
        url = job.checkpoint["ref"]["status_url"] + "/stream?logs=1"
        async for event in self.http.events(url, "stream", self.settings.stream_idle_seconds):
            try:
                snapshot = self._snapshot(job, json.loads(event.data))
            except ValueError:
                continue
            if snapshot is not None:
                yield snapshot

    def hook(self, job: Follow, delivery: Delivery) -> Snapshot | None:
        try:
            body = json.loads(delivery.body)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("request_id") != job.checkpoint["ref"]["request_id"]:
            return None
        if body.get("status") == "OK":
            return Snapshot(SUCCEEDED, output=body.get("payload", MISSING))
        if body.get("status") == "ERROR":
            payload = body.get("payload")
            detail = payload.get("detail") if isinstance(payload, dict) else None
            return Snapshot(FAILED, error=str(detail or body.get("error") or "the request failed"),
                            reason="UPSTREAM_JOB_FAILED")
        return None

    async def result(self, job: Follow, final: Snapshot) -> Any:
        if final.output is not MISSING:
            return final.output  # the webhook carried it
        answer = await self.http.request("GET", job.checkpoint["ref"]["response_url"], "result", ok=_RESULT_FAILED)
        if answer.status >= 400:
            detail = answer.body.get("detail") if isinstance(answer.body, dict) else answer.body
            raise UpstreamError(f"the upstream job failed: {short(json.dumps(detail))} (HTTP {answer.status})",
                                "UPSTREAM_JOB_FAILED", Code.UNKNOWN, {"status": str(answer.status)})
        return answer.body

    async def cancel(self, job: Follow) -> None:
        await self.http.request("PUT", job.checkpoint["ref"]["cancel_url"], "cancel", ok={400, 404}, retries=2)
