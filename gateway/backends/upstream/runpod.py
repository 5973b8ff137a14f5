"""The ``runpod`` profile: a RunPod serverless endpoint (docs/research/runpod.md).

    POST {url}/{endpoint_id}/run {"input", "webhook", "policy": {"executionTimeout"}} -> {"id", "status"}
    GET  {url}/{endpoint_id}/status/{id} -> {"status", "output", "error", ...}
    GET  {url}/{endpoint_id}/stream/{id} -> {"status", "stream": [{"output": chunk}, ...]}  (a long poll: the
         chunks since the previous call, each handed out once)
    POST {url}/{endpoint_id}/cancel/{id};  GET {url}/{endpoint_id}/health
    states: IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT

A generator handler's partial outputs come from /stream while the job runs; the final output (with
``return_aggregate_stream``, every chunk) from /status. /stream hands each chunk out once, so after a
lost answer (a reset) or a restart of the gateway the job stops reading it and takes its chunks from
the final output instead: never a chunk twice or out of order. With a public_url (or an HTTP face)
RunPod's completion webhook is asked for too. A /run is not idempotent: a gateway stopped during it
fails the job (UPSTREAM_SUBMIT_INTERRUPTED) rather than risk a second run.
"""

from __future__ import annotations

import json
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

__all__ = ["RunPodBackend"]

_STATES = {"IN_QUEUE": QUEUED, "IN_PROGRESS": RUNNING, "COMPLETED": SUCCEEDED, "FAILED": FAILED,
           "CANCELLED": CANCELED, "TIMED_OUT": FAILED}


def snapshot_of(body: Any, job_id: str | None = None) -> Snapshot | None:
    if not isinstance(body, dict) or (job_id is not None and body.get("id") not in (None, job_id)):
        return None
    status = str(body.get("status"))
    state = _STATES.get(status)
    if state is None:
        return None
    snapshot = Snapshot(state, output=body.get("output", MISSING))
    if status == "FAILED":
        error = body.get("error")
        snapshot.error = error if isinstance(error, str) else json.dumps(error)
        snapshot.reason = "UPSTREAM_JOB_FAILED"
    elif status == "TIMED_OUT":
        snapshot.error = "RunPod timed the job out (its executionTimeout or ttl passed)"
        snapshot.reason, snapshot.code = "UPSTREAM_DEADLINE_EXCEEDED", Code.DEADLINE_EXCEEDED
    elif status == "CANCELLED":
        snapshot.error = "the job was cancelled on RunPod"
    return snapshot


class RunPodBackend(UpstreamBackend):
    name = "runpod"

    def _base(self) -> str:
        return f"{self.settings.url}/{self.settings.endpoint_id}"

    async def health(self) -> bool | None:
        await self.http.request("GET", f"{self._base()}/health", "health", retries=0,
                                timeout=min(10.0, self.settings.request_timeout_seconds))
        return True

    async def submit(self, job: Follow) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"input": job.ctx.input.inputs or {}}
        if job.hook_url:
            body["webhook"] = job.hook_url
        if s.execution_timeout_seconds:
            body["policy"] = {"executionTimeout": int(s.execution_timeout_seconds * 1000)}
        answer = await self.http.request("POST", f"{self._base()}/run", "submit", json_body=body, creates=True)
        job_id = answer.body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise UpstreamError(f"RunPod's answer to /run has no id: {short(json.dumps(answer.body))}",
                                "UPSTREAM_PROTOCOL_ERROR", Code.INTERNAL)
        snapshot = snapshot_of(answer.body)
        if snapshot is not None:
            job.queue.put_nowait(snapshot)
        return {"id": job_id}

    async def poll(self, job: Follow) -> Snapshot | None:
        job_id = job.checkpoint["ref"]["id"]
        snapshot = snapshot_of((await self.http.request("GET", f"{self._base()}/status/{job_id}", "status")).body, job_id)
        if snapshot is not None and snapshot.state == SUCCEEDED and isinstance(snapshot.output, list):
            snapshot.outputs = snapshot.output  # the aggregated stream: every chunk, in order
        return snapshot

    def stream(self, job: Follow) -> AsyncIterator[Snapshot] | None:
        if job.resumed or job.state.get("stream_broken"):
            return None  # chunks handed to a stopped process, or to a lost answer, are gone from /stream
        return self._stream(job)

    async def _stream(self, job: Follow) -> AsyncIterator[Snapshot]:
        job_id = job.checkpoint["ref"]["id"]
        outputs: list[Any] = job.state.setdefault("outputs", [])
        while True:
            try:
                answer = await self.http.request("GET", f"{self._base()}/stream/{job_id}", "stream", retries=0)
            except Exception:
                job.state["stream_broken"] = True  # this answer's chunks may be lost: the final output has them
                raise
            body = answer.body
            chunks = body.get("stream") if isinstance(body.get("stream"), list) else []
            outputs.extend(c.get("output") for c in chunks if isinstance(c, dict))
            state = _STATES.get(str(body.get("status")))
            if state is None:
                return
            if state in (SUCCEEDED, FAILED, CANCELED):
                final = await self.poll(job)
                if final is not None:
                    yield final
                return
            if chunks or state == RUNNING:
                yield Snapshot(state, outputs=list(outputs))

    def hook(self, job: Follow, delivery: Delivery) -> Snapshot | None:
        try:
            snapshot = snapshot_of(json.loads(delivery.body), job.checkpoint["ref"]["id"])
        except ValueError:
            return None
        if snapshot is not None and snapshot.state == SUCCEEDED and isinstance(snapshot.output, list):
            snapshot.outputs = snapshot.output
        return snapshot

    async def cancel(self, job: Follow) -> None:
        await self.http.request("POST", f"{self._base()}/cancel/{job.checkpoint['ref']['id']}", "cancel",
                                ok={404}, retries=2)
