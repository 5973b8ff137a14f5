"""The ``cog`` profile: a self-hosted Cog model server (cog 0.23, its coglet server; docs/research/cog-0.23.md).

    PUT /predictions/{id}  Prefer: respond-async  {"id", "input", "webhook", "webhook_events_filter"}
        -> 202 {"id", "status": "starting"}; the same PUT while it runs answers its state (no second run)
    webhooks: the whole prediction, POSTed on start, each output, logs (throttled), completed
    POST /predictions/{id}/cancel -> 200 {} (404: unknown or finished)
    GET /health-check -> {"status": "READY" | "BUSY" | "STARTING" | "SETUP_FAILED", "setup": {"started_at"}}

Cog keeps no finished prediction and has no status to poll: the gateway follows a prediction through
its webhooks (to its own HTTP face, at a URL with a per-job secret), and falls back on what Cog can
tell without running anything again:

* ``/health-check``'s ``setup.started_at`` names the server's run: when it changes, the Cog server
  restarted and every prediction it had is gone: the job fails UPSTREAM_LOST (it is not run again).
* With one slot (``max_concurrency`` 1): BUSY means a prediction holds the slot; the same PUT then
  answers our prediction's state (missed webhooks are caught up) or 409 when the slot holds another.
  READY means ours has left the slot: its final webhook is due (Cog retries it on 5xx for minutes),
  and the job waits ``webhook_grace_seconds`` for it before failing UPSTREAM_RESULT_LOST.

The PUT is never sent where it could start the prediction again: only to create it (a first submit,
or one interrupted before Cog answered, which re-attaches if Cog has it running), or while the slot is
BUSY. A kill -9 of the gateway therefore never runs a prediction twice. (With several slots BUSY only
means all are taken, so the gateway does not re-PUT, and relies on the webhooks and on the restart
check; docs/upstreams.md says so.)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gateway.backends.upstream.core import (
    CANCELED,
    DONE,
    FAILED,
    MISSING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Follow,
    Snapshot,
    UpstreamBackend,
)
from gateway.backends.upstream.http import UpstreamError
from gateway.backends.upstream.inbox import Delivery
from gateway.errors import Code

__all__ = ["CogBackend"]

log = logging.getLogger(__name__)

_STATES = {"starting": QUEUED, "processing": RUNNING, "succeeded": SUCCEEDED, "failed": FAILED, "canceled": CANCELED}
_EVENTS = ["start", "output", "logs", "completed"]


def snapshot_of(body: Any, prediction_id: str) -> Snapshot | None:
    """A Cog prediction (a webhook's body, a PUT's answer) as a snapshot; None if it is not ours."""
    if not isinstance(body, dict) or body.get("id") != prediction_id:
        return None
    state = _STATES.get(str(body.get("status")))
    if state is None:
        return None
    output = body.get("output", MISSING)
    logs = body.get("logs")
    snapshot = Snapshot(state, outputs=output if isinstance(output, list) and state not in DONE else None,
                        logs=logs if isinstance(logs, str) else None, output=output)
    if state == FAILED:
        snapshot.error = str(body.get("error") or "")
        snapshot.reason = "UPSTREAM_JOB_FAILED"
    elif state == CANCELED:
        snapshot.error = "the prediction was cancelled on the Cog server"
    if state == SUCCEEDED and isinstance(output, list):
        snapshot.outputs = output
    return snapshot


class CogBackend(UpstreamBackend):
    name = "cog"
    idempotent_submit = True  # PUT /predictions/{id}: the same id is one prediction while it runs
    uses_webhooks = True

    def __init__(self, settings: Any, inbox: Any = None) -> None:
        super().__init__(settings, inbox)
        self.concurrency = settings.workers
        self.boot = ""  # the Cog server's setup.started_at, as last seen

    async def _health_body(self) -> dict[str, Any]:
        answer = await self.http.request("GET", f"{self.settings.url}/health-check", "health", retries=0,
                                         timeout=min(10.0, self.settings.request_timeout_seconds))
        body = answer.body
        setup = body.get("setup") if isinstance(body.get("setup"), dict) else {}
        boot = str(setup.get("started_at") or "")
        if boot:
            self.boot = boot
        return body

    async def health(self) -> bool:
        return (await self._health_body()).get("status") in ("READY", "BUSY")

    def _pid(self, job: Follow) -> str:
        return job.ctx.job.id

    async def _put(self, job: Follow) -> Any:
        body = {"id": self._pid(job), "input": job.ctx.input.inputs or {}, "webhook": job.hook_url,
                "webhook_events_filter": _EVENTS}
        # 409: every slot is busy (with another client's prediction): wait and try again.
        answer = await self.http.request("PUT", f"{self.settings.url}/predictions/{self._pid(job)}", "submit",
                                         json_body=body, headers={"Prefer": "respond-async"}, retry={409})
        return answer.body

    async def submit(self, job: Follow) -> dict[str, Any]:
        if not self.boot:
            await self._health_body()
        body = await self._put(job)
        snapshot = snapshot_of(body, self._pid(job))
        if snapshot is not None:
            job.queue.put_nowait(snapshot)
        return {"id": self._pid(job), "boot": self.boot}

    def hook(self, job: Follow, delivery: Delivery) -> Snapshot | None:
        try:
            body = json.loads(delivery.body)
        except ValueError:
            return None
        return snapshot_of(body, self._pid(job))

    async def poll(self, job: Follow) -> Snapshot | None:
        s = self.settings
        try:
            health = await self._health_body()
        except (UpstreamError, OSError, TimeoutError) as exc:
            log.info("cog: the health check failed while following job %s: %s", job.ctx.job.id, exc)
            return None
        except Exception as exc:  # aiohttp errors: the server is away; it may come back
            log.info("cog: the health check failed while following job %s: %s", job.ctx.job.id, exc)
            return None
        ref = job.checkpoint["ref"]
        if ref.get("boot") and self.boot and self.boot != ref["boot"]:
            return Snapshot(FAILED, error="the Cog server restarted while it ran the prediction, which it has "
                                          "forgotten; it was not run again", reason="UPSTREAM_LOST", code=Code.UNAVAILABLE)
        status = health.get("status")
        if status == "BUSY" and s.max_concurrency == 1:
            job.state.pop("idle_since", None)
            try:
                answer = await self.http.request(
                    "PUT", f"{s.url}/predictions/{self._pid(job)}", "status",
                    json_body={"id": self._pid(job), "input": job.ctx.input.inputs or {}, "webhook": job.hook_url,
                               "webhook_events_filter": _EVENTS},
                    headers={"Prefer": "respond-async"}, ok={409}, retries=1)
            except UpstreamError as exc:
                log.info("cog: re-attaching to job %s failed: %s", job.ctx.job.id, exc)
                return None
            if answer.status != 409:
                return snapshot_of(answer.body, self._pid(job))
        if status in ("READY", "BUSY") and s.max_concurrency == 1:
            idle_since = job.state.setdefault("idle_since", time.time())
            if time.time() - idle_since > s.webhook_grace_seconds:
                return Snapshot(FAILED, error=f"the prediction left the Cog server's slot and its final webhook did "
                                              f"not come within {s.webhook_grace_seconds:.0f} s; the result is lost "
                                              "(it was not run again)", reason="UPSTREAM_RESULT_LOST", code=Code.UNAVAILABLE)
        return None

    async def cancel(self, job: Follow) -> None:
        await self.http.request("POST", f"{self.settings.url}/predictions/{self._pid(job)}/cancel", "cancel",
                                ok={404}, retries=2)
