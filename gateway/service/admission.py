"""Admission: what Submit checks before a job exists, and how it is stored and queued.

In order: the process still accepts jobs, the fields are well formed (the route's name, labels, the
request id, how deep JSON inputs nest), the route exists, its webhook is allowed, its backend accepts
the input, and its queue has a slot. A Submit retried with the same request id answers the job it
made the first time (even with the queue full), and refuses one with a different request under that
id. Every face (gRPC, HTTP) goes through here, so every face refuses the same things the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway import metrics
from gateway.bus import EventBus
from gateway.errors import (
    AlreadyExists,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from gateway.hub import JobEvent
from gateway.jobs import DEFAULT_PRIORITY, PRIORITIES, Clock, Deadlines, Job, JobInput, JobState, WebhookSpec, new_job_id
from gateway.lifecycle import Route
from gateway.service.active import ActiveJobs, Submitting
from gateway.settings import ROUTE_NAME
from gateway.store.base import QueueFull, Store, TenantPolicy

if TYPE_CHECKING:
    from gateway.webhooks import WebhookPolicy

__all__ = ["JOB_ID", "MAX_INPUT_DEPTH", "Admission", "WebhookPolicies", "check_input_depth"]

JOB_ID = re.compile(r"[0-9a-f]{32}")  # as jobs.new_job_id makes them
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_INPUT_DEPTH = 32  # JSON inputs nested deeper are refused, on every face alike


_NO_DEADLINES = Deadlines()

class WebhookPolicies(Protocol):
    """What admission needs of the webhook dispatcher (gateway.webhooks.Dispatcher): a tenant's policy."""

    def policy(self, tenant: str) -> WebhookPolicy: ...


class TenantLimits:
    """The tenants' own limits (``[tenants.<tenant>]``) where the store is this process's alone: jobs
    waiting on a route (``max_queued``, counting those being stored) and Submits per second (a token
    bucket per tenant). A shared store checks the same in its create script instead, atomically across
    replicas."""

    def __init__(self, policy: Callable[[str], TenantPolicy], clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, when)
        self._storing: Counter[tuple[str, str]] = Counter()  # (route, tenant) -> jobs admitted, not queued yet

    def admit(self, tenant: str, route: str, runner: Route) -> None:
        """Raises QueueFull (TENANT_QUEUE_FULL, TENANT_RATE_LIMITED), or counts the job as being stored
        until its ``admitted(...).queued()``."""
        policy = self.policy(tenant)
        if policy.max_queued:
            waiting = runner.waiting_of(tenant) + self._storing[route, tenant]
            if waiting >= policy.max_queued:
                raise QueueFull("TENANT_QUEUE_FULL", waiting, policy.max_queued)
        if policy.submit_rate:
            now = self.clock.now()
            tokens, then = self._buckets.get(tenant, (float(policy.burst), now))
            tokens = min(float(policy.burst), tokens + max(0.0, now - then) * policy.submit_rate)
            if tokens < 1:
                raise QueueFull("TENANT_RATE_LIMITED", 0, policy.burst, (1 - tokens) / policy.submit_rate)
            self._buckets[tenant] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # (tenants come from tokens: bounded anyway, but be safe)
                self._buckets.clear()
        self._storing[route, tenant] += 1

    def admitted(self, tenant: str, route: str) -> _Admitted:
        """The job just admitted: its ``queued()`` (once, whoever calls it first) ends its count as being stored."""
        return _Admitted(self, tenant, route)

    def _queued(self, tenant: str, route: str) -> None:
        self._storing[route, tenant] -= 1
        if self._storing[route, tenant] <= 0:
            del self._storing[route, tenant]

    def refund(self, tenant: str) -> None:
        """The token of a Submit that made no job, given back."""
        policy = self.policy(tenant)
        if policy.submit_rate and tenant in self._buckets:
            tokens, then = self._buckets[tenant]
            self._buckets[tenant] = (min(float(policy.burst), tokens + 1), then)


class _Admitted:
    __slots__ = ("_done", "_limits", "_route", "_tenant")

    def __init__(self, limits: TenantLimits, tenant: str, route: str) -> None:
        self._limits, self._tenant, self._route, self._done = limits, tenant, route, False

    def queued(self) -> None:
        if not self._done:
            self._done = True
            self._limits._queued(self._tenant, self._route)


class Admission:
    """Submit: checks, idempotency, quotas (the route's queue slots), and the first revision's commit.

    ``routes`` may be filled after this is made (by the server, as it builds the runners); it is only
    read. ``webhooks`` None: this process delivers none (a worker), so Submit refuses a webhook."""

    def __init__(self, store: Store, bus: EventBus, clock: Clock, routes: Mapping[str, Route], active: ActiveJobs,
                 webhooks: WebhookPolicies | None = None, tenants: Callable[[str], TenantPolicy] | None = None) -> None:
        self.store = store
        # In-process tenant limits; a shared store's create script enforces them (atomically, across replicas).
        self.tenant_limits = TenantLimits(tenants, clock) if tenants is not None and not store.shared else None
        self.bus = bus
        self.clock = clock
        self.routes = routes
        self.active = active
        self.webhooks = webhooks
        self.accepting = True  # False once the gateway is shutting down

    def route(self, name: str) -> Route:
        runner = self.routes.get(name)
        if runner is None:
            raise NotFound(
                f"no route named {name!r}; routes: {', '.join(sorted(self.routes))}",
                reason="ROUTE_NOT_FOUND",
                metadata={"route": name},
            )
        return runner

    @staticmethod
    def _request_hash(route: str, payload: bytes, labels: Mapping[str, str], webhook: WebhookSpec | None = None) -> str:
        digest = hashlib.sha256(route.encode())
        for part in (b"\0", payload, b"\0"):  # not concatenated: the payload may be tens of MiB
            digest.update(part)
        digest.update(json.dumps(sorted(labels.items())).encode())
        if webhook is not None:
            digest.update(json.dumps(webhook.to_dict()).encode())
        return digest.hexdigest()

    async def submit(
        self, tenant: str, route: str, job_input: JobInput, labels: Mapping[str, str], request_id: str,
        webhook: WebhookSpec | None = None, deadlines: Deadlines = _NO_DEADLINES, priority: int = DEFAULT_PRIORITY,
        retry_of: str = "",
    ) -> tuple[Job, bool]:
        """Stores a new job and queues it; answers (job, existing). ``deadlines``: its timeouts (None:
        the route's defaults); ``priority``: 1 (most urgent) to 5, among its tenant's waiting jobs;
        ``retry_of``: the job a Retry runs again. A refusal is counted by reason (gateway_submits_refused_total)."""
        try:
            return await self._submit(tenant, route, job_input, labels, request_id, webhook, deadlines, priority,
                                      retry_of)
        except GatewayError as refused:
            metrics.SUBMITS_REFUSED.labels(route if route in self.routes else "", refused.reason).inc()
            raise

    async def _submit(
        self, tenant: str, route: str, job_input: JobInput, labels: Mapping[str, str], request_id: str,
        webhook: WebhookSpec | None, deadlines: Deadlines, priority: int, retry_of: str = "",
    ) -> tuple[Job, bool]:
        if not self.accepting:
            raise Unavailable("the gateway is shutting down; retry on another replica", reason="SHUTTING_DOWN")
        _check_submission(route, labels, request_id)
        if priority not in PRIORITIES:
            raise InvalidArgument.fields(FieldViolation(
                "priority", f"must be 1 (most urgent) to 5, or unset for {DEFAULT_PRIORITY}; got {priority}"))
        if job_input.inputs is not None:
            check_input_depth(job_input.inputs)
        runner = self.route(route)
        if webhook is not None:
            await self._check_webhook(tenant, webhook)
        job_input = await runner.backend.validate(job_input)
        payload = job_input.encode()
        request_hash = self._request_hash(route, payload, labels, webhook) if request_id else ""
        try:
            runner.reserve()
            if self.tenant_limits is not None:
                try:
                    self.tenant_limits.admit(tenant, route, runner)
                except QueueFull as full:
                    runner.release()
                    raise runner.queue_full(full.reason, full.held, full.limit, full.retry_after) from None
        except ResourceExhausted:
            # A retried Submit of a job already accepted answers that job, even with the queue full.
            found = await self.store.find_request(tenant, request_id, self.clock.now()) if request_id else None
            if found is None:
                raise
            return self._existing(found[0], found[1], request_id, request_hash), True
        limits = self.tenant_limits
        if limits is None:
            return await self._store(tenant, route, job_input, labels, request_id, webhook, deadlines, priority,
                                     runner, payload, request_hash, retry_of=retry_of)
        admitted = limits.admitted(tenant, route)
        created = False
        try:
            job, existing = await self._store(tenant, route, job_input, labels, request_id, webhook, deadlines,
                                              priority, runner, payload, request_hash, admitted.queued, retry_of)
            created = not existing
            return job, existing
        finally:
            admitted.queued()  # (if the commit did not already: a job refused, failed, or found existing)
            if not created:
                limits.refund(tenant)  # as the Redis script, a Submit that made no job spends no token

    async def _store(
        self, tenant: str, route: str, job_input: JobInput, labels: Mapping[str, str], request_id: str,
        webhook: WebhookSpec | None, deadlines: Deadlines, priority: int, runner: Route, payload: bytes,
        request_hash: str, queued: Callable[[], None] | None = None, retry_of: str = "",
    ) -> tuple[Job, bool]:
        """The job made, stored and queued in its reserved slot (given back if it is not)."""
        now = self.clock.now()
        job = Job(
            id=new_job_id(now),
            tenant=tenant,
            route=route,
            state=JobState.QUEUED,
            revision=1,
            created=now,
            labels=dict(labels),
            queue_position=0 if self.store.shared else runner.queued() + 1,  # unknown in a shared queue
            request_id=request_id,
            webhook=webhook,
            queue_timeout=runner.settings.queue_timeout_seconds if deadlines.queue is None else deadlines.queue,
            run_timeout=runner.settings.run_timeout_seconds if deadlines.run is None else deadlines.run,
            priority=priority,
            retry_of=retry_of,
        )
        active, bus, shared = self.active, self.bus, self.store.shared

        def on_commit(outcome: Any) -> None:
            taken = shared and active.take_submitting(job.id) is None
            if not outcome.created:
                return
            if queued is not None:  # counted in the queue from here on, no longer as being stored
                queued()
            event = JobEvent(job, 0, outcome.position)
            if taken:  # already running here (Running._take_over): it holds the job and its input
                bus.publish(event)
                return
            active.set_committed(job.id, event)
            if runner.workers:  # kept for this process's workers (an API-only replica runs none)
                active.keep_input(job.id, job_input, len(payload))
            if shared:  # whichever process takes it from the shared queue holds it
                bus.publish(event)
                runner.enqueue(job)
                return
            active.set_head(job.id, job)
            active.set_attempt(job.id, 0)
            bus.publish(event)
            runner.enqueue(job)

        transcription = job_input.transcription
        upload = transcription.audio_file if transcription is not None else None
        if transcription is not None and upload is not None:  # kept by the store before the job exists: no job is ever without its audio
            found = await self.store.find_request(tenant, request_id, now) if request_id else None
            if found is not None:  # a retried upload: its job is there (no need to keep the audio again)
                runner.release()
                return self._existing(found[0], found[1], request_id, request_hash), True
            try:
                await self.store.put_upload(job.id, upload)
            except BaseException:
                runner.release()
                raise
            job_input = replace(job_input, transcription=replace(transcription, audio_file=None))
        if shared:
            active.start_submitting(job.id, Submitting(job, job_input, len(payload)))
        try:
            outcome = await self.store.create_job(job, request_hash, payload, on_commit)
        except QueueFull as full:  # a shared store's own count, across replicas
            runner.release()
            await self._drop_upload(job.id, upload)
            raise runner.queue_full(full.reason, full.held, full.limit, full.retry_after) from None
        except BaseException:
            runner.release()
            await self._drop_upload(job.id, upload)
            raise
        finally:
            active.take_submitting(job.id)
        if outcome.created:
            metrics.child(metrics.JOBS_SUBMITTED, route).inc()
            return job, False
        runner.release()
        await self._drop_upload(job.id, upload)  # the request's job exists already, with its own
        return self._existing(outcome.job, outcome.request_hash, request_id, request_hash), True

    async def _drop_upload(self, job_id: str, upload: Path | None) -> None:
        if upload is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.drop_upload(job_id))

    async def _check_webhook(self, tenant: str, webhook: WebhookSpec) -> None:
        if self.webhooks is None:
            raise Unavailable("this process delivers no webhooks", reason="WEBHOOKS_UNAVAILABLE")
        from gateway.webhooks import check_webhook

        await check_webhook(webhook, self.webhooks.policy(tenant))

    def _existing(self, job: Job, stored_hash: str, request_id: str, request_hash: str) -> Job:
        """The job already stored under this request_id, if the request is the same one."""
        if stored_hash != request_hash:
            raise AlreadyExists(
                f"request_id {request_id!r} was used for a different request (job {job.id})",
                reason="REQUEST_ID_CONFLICT",
                metadata={"request_id": request_id, "job_id": job.id},
            )
        current = self.active.committed(job.id)
        return current.job if current else job


def check_input_depth(value: Any, limit: int = MAX_INPUT_DEPTH) -> None:
    """InvalidArgument INPUT_TOO_DEEP for JSON inputs nested deeper than ``limit`` (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    raise InvalidArgument.fields(
                        FieldViolation("inputs", f"nested deeper than {limit} levels"), reason="INPUT_TOO_DEEP")
                stack.append((child, depth + 1))


def _check_submission(route: str, labels: Mapping[str, str], request_id: str) -> None:
    violations = []
    if not ROUTE_NAME.fullmatch(route):
        violations.append(FieldViolation("route", "lowercase letters, digits, '-' and '_', at most 63"))
    if len(labels) > MAX_LABELS:
        violations.append(FieldViolation("labels", f"at most {MAX_LABELS} labels"))
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            violations.append(FieldViolation(f"labels[{key!r}]", "keys: 1 to 63 of A-Z a-z 0-9 _ . - /"))
        elif len(value) > MAX_LABEL_VALUE or not value.isprintable():
            violations.append(FieldViolation(f"labels[{key!r}]", f"values: up to {MAX_LABEL_VALUE} printable characters"))
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        violations.append(FieldViolation("request_id", "1 to 128 printable ASCII characters, no spaces"))
    if violations:
        raise InvalidArgument.fields(*violations)
