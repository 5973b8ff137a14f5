"""The ``octoai`` profile: an endpoint speaking OctoAI's async protocol (docs/octoai-protocol, the seed's).

    POST endpoint (X-OctoAI-Async: 1, JSON inputs) -> {"response_id", "poll_url"}
    GET poll_url -> {"status": "pending" | "running" | "completed", "response_url"}  (Retry-After honoured)
    GET response_url -> the output JSON: the job's result

OctoAI cannot push: the core polls, once for every watcher, from ``poll_initial_seconds`` backing off
to ``poll_max_seconds``. The protocol has no "failed" status, so failure is detected: a 4xx, a result
that keeps failing, or a job that does not complete before ``deadline_seconds``. A route's health
follows the endpoint's ``healthcheck`` (200: SERVING; a 5xx cold start or an error: NOT_SERVING).

The submit is retried like every request (an OctoAI endpoint answers an error before it takes a job);
a gateway stopped during it fails the job (UPSTREAM_SUBMIT_INTERRUPTED) rather than post it again.
Checkpoints of earlier versions (``poll_url`` at the top, ``posting``) resume as they did.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.backends.base import JobContext
from gateway.backends.upstream.core import QUEUED, RUNNING, SUCCEEDED, Follow, Snapshot, UpstreamBackend
from gateway.backends.upstream.http import UpstreamError, origin, retry_after, short
from gateway.errors import Code
from gateway.jobs import JobInput, Result

__all__ = ["OctoAIBackend"]

_TASKS = {"": "transcribe", "transcribe": "transcribe", "translate": "translate"}
_STATES = {"pending": QUEUED, "running": RUNNING, "completed": SUCCEEDED}


class OctoAIBackend(UpstreamBackend):
    name = "octoai"
    takes_webhooks = False  # the protocol has none

    def __init__(self, settings: Any, inbox: Any = None) -> None:
        super().__init__(settings, inbox)
        if settings.healthcheck:
            self.http.origins.add(origin(settings.healthcheck))

    async def health(self) -> bool | None:
        if not self.settings.healthcheck:
            return None
        answer = await self.http.request("GET", self.settings.healthcheck, "health", retries=0, ok=range(400, 600),
                                         timeout=self.settings.request_timeout_seconds)
        return answer.status == 200

    async def validate(self, job_input: JobInput) -> JobInput:
        if job_input.transcription is not None:  # a typed request, sent as the Whisper template's inputs
            t = job_input.transcription
            inputs: dict[str, Any] = {"audio": base64.b64encode(t.audio).decode(), "task": _TASKS.get(t.task, t.task)}
            if t.language:
                inputs["language"] = t.language
            job_input = JobInput(inputs=inputs)
        return await super().validate(job_input)

    async def run(self, ctx: JobContext) -> Result:
        checkpoint = dict(ctx.checkpoint or {})
        if checkpoint.get("poll_url") and not checkpoint.get("ref"):  # an earlier version's checkpoint
            checkpoint = {"submitted_at": checkpoint.get("submitted_at"), "secret": "",
                          "ref": {"poll_url": checkpoint["poll_url"], "response_id": checkpoint.get("response_id", "")}}
        elif checkpoint.get("posting"):
            checkpoint["submitting"] = True
        ctx.checkpoint = checkpoint
        return await super().run(ctx)

    async def submit(self, job: Follow) -> dict[str, Any]:
        answer = await self.http.request("POST", self.settings.endpoint, "submit", json_body=job.ctx.input.inputs or {},
                                         headers={"X-OctoAI-Async": "1"})
        body = answer.body
        poll_url = body.get("poll_url")
        if not isinstance(poll_url, str) or not poll_url:
            raise UpstreamError(f"the upstream's answer to the submission has no poll_url: {short(json.dumps(body))}",
                                "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
        return {"poll_url": self.http.trusted(poll_url, "poll"), "response_id": str(body.get("response_id") or "")}

    async def poll(self, job: Follow) -> Snapshot | None:
        answer = await self.http.request("GET", job.checkpoint["ref"]["poll_url"], "poll")
        body, status = answer.body, answer.body.get("status")
        job.state["last_status"] = status
        wait = retry_after(answer.headers.get("Retry-After"))
        if wait is not None:
            job.state["next_poll"] = wait
        state = _STATES.get(str(status))
        if state is None:
            raise UpstreamError(f"the upstream answered an unknown status: {short(json.dumps(body))}",
                                "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL, {"status": str(status)})
        if state == SUCCEEDED:
            response_url = body.get("response_url")
            if not isinstance(response_url, str) or not response_url:
                raise UpstreamError("the upstream completed the job without a response_url",
                                    "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
            job.state["response_url"] = self.http.trusted(response_url, "result")
        return Snapshot(state)

    async def result(self, job: Follow, final: Snapshot) -> Any:
        return (await self.http.request("GET", job.state["response_url"], "result")).body
