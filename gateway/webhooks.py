"""Webhooks: a job's changes POSTed to an HTTP endpoint given at Submit, signed as Standard Webhooks says.

What is delivered follows from the stored revisions: the store marks a job's webhook due in the same
atomic step that stores a revision it may care about (so no change is lost to a crash), and keeps
each job's delivery state. A :class:`Dispatcher` in every API process claims due jobs under a lease
(one process delivers a job at a time, and another carries on if it dies), works out the next event
from the job's revisions, attempts it, and records the outcome: the next event, a retry at a
backed-off time, or the end. Events of one job go out in order: start, the latest progress
(throttled), completed.

Safety: a URL must start with one of the tenant's allowed prefixes (at a host boundary), https unless
a prefix is http, without credentials; its host must not resolve to loopback, private, link-local
or other non-global addresses unless an allowed network covers them. That is checked at Submit and
again when connecting (the connection goes only to the addresses checked), and redirects are not
followed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from gateway import metrics
from gateway.errors import FieldViolation, InvalidArgument, clip
from gateway.jobs import Clock, Job, JobState, WebhookSpec
from gateway.settings import WebhookSettings
from gateway.store.base import Store, WebhookClaim
from gateway.tasks import cancel_and_wait

__all__ = ["CheckedResolver", "Dispatcher", "WebhookPolicy", "check_address", "resolve", "signature_header"]

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
_RESOLVE_TIMEOUT_SECONDS = 5.0
_READ_LIMIT = 64 * 1024  # of a receiver's answer: read (so the connection can be reused) and dropped
_USER_AGENT = "inference-gateway-webhooks/1"
_DUE_PAGE = 500  # due webhooks read at once
_IDLE_LOOK_SECONDS = 30.0  # a store of this process alone: a look this often anyway (a safety net)
_MIN_LOOK_SECONDS = 0.01
_DUE_PAGES = 20  # read per look at most: past 10,000 due, the rest wait for the next look
_LEASE_MARGIN_SECONDS = 5.0  # an attempt ends this long before its claim runs out
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- policy --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookPolicy:
    """One tenant's: the URL prefixes allowed, the non-global networks allowed, the signing keys."""

    prefixes: tuple[str, ...]
    networks: tuple[IpNetwork, ...]
    keys: tuple[bytes, ...]

    @classmethod
    def of(cls, settings: WebhookSettings, tenant: str) -> WebhookPolicy:
        prefixes, networks, secrets = settings.resolved(tenant)
        return cls(
            tuple(prefixes),
            tuple(ipaddress.ip_network(n, strict=False) for n in networks),
            tuple(base64.b64decode(s.removeprefix("whsec_") + "==") for s in secrets),
        )


def _refuse(description: str, reason: str = "WEBHOOK_URL_NOT_ALLOWED") -> InvalidArgument:
    return InvalidArgument(f"webhook.url: {description}", reason,
                           field_violations=(FieldViolation("webhook.url", description),))


def _origin_and_path(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL, the port made explicit; ValueError if it is not one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, parts.hostname.lower().rstrip("."), port, parts.path or "/"


def _matches(url: tuple[str, str, int, str], prefix: str) -> bool:
    """Whether the URL is under the prefix: same scheme, host and port exactly (so
    https://hooks.example.com does not admit https://hooks.example.com.evil.net), and a path that
    starts with the prefix's."""
    allowed = _origin_and_path(prefix)
    return url[:3] == allowed[:3] and url[3].startswith(allowed[3])


def check_url(url: str, policy: WebhookPolicy) -> tuple[str, int]:
    """Checks a webhook URL's form against the policy; answers its (host, port) for the address check."""
    if not url:
        raise InvalidArgument.fields(FieldViolation("webhook.url", "required: the URL deliveries are POSTed to"),
                                     reason="WEBHOOK_URL_INVALID")
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(f"longer than {MAX_URL_LENGTH} characters", "WEBHOOK_URL_INVALID")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _refuse("contains whitespace or control characters", "WEBHOOK_URL_INVALID")
    try:
        parts = urlsplit(url)
        parsed = _origin_and_path(url)
    except ValueError:
        raise _refuse(f"{clip(url, 200)!r} is not an http(s) URL", "WEBHOOK_URL_INVALID") from None
    if parts.username is not None or parts.password is not None:
        raise _refuse("must not hold credentials (user:password@)", "WEBHOOK_URL_INVALID")
    if parts.fragment:
        raise _refuse("must not have a #fragment", "WEBHOOK_URL_INVALID")
    if any(step in (".", "..") or "/" in step or "\\" in step for step in map(unquote, parts.path.split("/"))):
        raise _refuse("must not have . or .. path segments, encoded slashes or backslashes (a receiver could read "
                      "them as steps out of an allowed prefix)", "WEBHOOK_URL_INVALID")
    if not policy.prefixes:
        raise _refuse("no webhook URLs are allowed for this tenant (the server's webhooks.allowed_prefixes)")
    if not any(_matches(parsed, prefix) for prefix in policy.prefixes):
        raise _refuse(f"{clip(url, 200)!r} does not start with an allowed prefix: {', '.join(policy.prefixes)}")
    return parsed[1], parsed[2]


# IPv6 ranges that carry an IPv4 address in their last 32 bits, which a translator may connect to:
# NAT64 (well-known and local-use prefixes), SIIT (::ffff:0:a.b.c.d) and the deprecated IPv4-compatible
# form (::a.b.c.d).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
          ipaddress.ip_network("::ffff:0:0:0/96"))  # (the last: SIIT's IPv4-translated addresses)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _plain(address: IpAddress) -> IpAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded(address: IpAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to through a translator or tunnel (NAT64, 6to4,
    IPv4-compatible), if it has one."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _NAT64) or (address in _IPV4_COMPATIBLE and int(address) > 0xFFFF):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_address(address: str, networks: Iterable[IpNetwork]) -> bool:
    """Whether a webhook may connect to this address: one in an allowed network, or a global unicast
    one that does not lead through a translator or tunnel to an address that is neither."""
    networks = tuple(networks)
    ip = _plain(ipaddress.ip_address(address.split("%", 1)[0]))
    if any(ip in network for network in networks):
        return True
    if not ip.is_global or ip.is_multicast or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return False
    inner = _embedded(ip)
    return inner is None or check_address(str(inner), networks)


def _literal(host: str) -> str | None:
    """The address a URL's host names literally (an IP address, IPv6 in brackets or not), if it does."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def resolve(host: str, port: int, networks: Sequence[IpNetwork],
                  setting: str = "webhooks.allowed_networks") -> list[str]:
    """The host's addresses, every one allowed; raises OSError (with why) otherwise."""
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(_RESOLVE_TIMEOUT_SECONDS):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    refused = [a for a in addresses if not check_address(a, networks)]
    if refused or not addresses:
        raise OSError(f"{host} resolves to {', '.join(refused) or 'nothing'}: loopback, private, link-local or "
                      f"otherwise not public, and not in {setting}")
    return addresses


async def check_webhook(spec: WebhookSpec, policy: WebhookPolicy) -> None:
    """Everything Submit checks of a webhook: the URL's form and prefix, and where its host resolves."""
    host, port = check_url(spec.url, policy)
    try:
        await resolve(host, port, policy.networks)
    except TimeoutError:
        raise _refuse(f"the host {host!r} could not be resolved in time", "WEBHOOK_URL_UNRESOLVABLE") from None
    except (UnicodeError, ValueError) as exc:
        raise _refuse(f"the host {host!r} is not a valid name: {exc}", "WEBHOOK_URL_INVALID") from None
    except OSError as exc:
        if isinstance(exc, socket.gaierror):
            raise _refuse(f"the host {host!r} could not be resolved: {exc.strerror or exc}",
                          "WEBHOOK_URL_UNRESOLVABLE") from None
        raise _refuse(str(exc), "WEBHOOK_ADDRESS_NOT_ALLOWED") from None


# -- signing -------------------------------------------------------------------------------------


def signature_header(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """webhook-signature: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``, one per key, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys
    )


def message_id(job_id: str, event: str, revision: int) -> str:
    """The webhook-id of one event: the same in every attempt (receivers deduplicate by it)."""
    return f"msg_{job_id}_{event}_{revision}"


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), if it has one."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # ("²".isdigit() too, which float() refuses)
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000" or no zone: UTC (RFC 5322), not this machine's zone
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - now)
    return None


# -- delivery state --------------------------------------------------------------------------------

# The proto's WebhookDelivery.State names, stored as they are.
PENDING, RETRYING, DELIVERED, FAILED, DISABLED = "PENDING", "RETRYING", "DELIVERED", "FAILED", "DISABLED"


def new_state() -> dict[str, Any]:
    """A job's delivery state, as the store keeps it (JSON): what was sent, what is being retried."""
    return {
        "status": PENDING, "seen": 0, "start_done": False, "completed_done": False, "progress_revision": 0, "start_revision": 0,
        "progress_time": 0.0, "delivered": 0, "current": None, "last_event": "", "last_id": "", "attempts": 0,
        "last_attempt": None, "last_status": 0, "last_error": "", "next_attempt": None,
    }


@dataclass(frozen=True)
class Plan:
    """What to do for a job now: deliver ``event`` of ``job`` (as of ``revision``), or wait until ``wait``,
    or (neither) nothing more."""

    event: str = ""
    job: Job | None = None
    revision: int = 0
    wait: float | None = None


def plan(state: dict[str, Any], spec: WebhookSpec, current: Job, revisions: Sequence[Job], now: float,
         progress_interval: float) -> Plan:
    """The next event to deliver, from the state, the job as it is now, and its revisions after
    ``state['seen']`` (oldest first). Records the revision the job started at when it sees it."""
    if state["status"] == DISABLED:
        return Plan()
    running = [j for j in revisions if j.state is JobState.RUNNING]
    if running and not state["start_revision"]:
        state["start_revision"] = running[0].revision
    retrying = state["current"]
    if retrying is not None:
        newer = [j for j in (*revisions, current) if j.revision > retrying["revision"]]
        if retrying["event"] == "progress" and any(j.state is JobState.RUNNING or j.terminal for j in newer):
            state["current"] = None  # a newer progress (or the end) replaces it
        elif retrying["event"] == "start" and any(j.terminal for j in newer):
            # The job ended while its start was being retried: completed goes next, with its own retry
            # period, rather than after the start's (the completed body holds all the start's did).
            state["current"], state["start_done"] = None, True
        elif retrying["next_attempt"] > now:
            return Plan(wait=retrying["next_attempt"])
        else:
            revision = retrying["revision"]
            snapshot = next((j for j in (*revisions, current) if j.revision == revision), None)
            if snapshot is not None:
                return Plan(retrying["event"], snapshot, revision)
            state["current"] = None
    if "start" in spec.events and not state["start_done"] and running:
        return Plan("start", running[0], running[0].revision)
    if current.terminal:
        if "completed" in spec.events and not state["completed_done"]:
            return Plan("completed", current, current.revision)
        return Plan()
    if "progress" in spec.events:
        # Progress: the latest RUNNING revision after the one the job started at.
        moved = [j for j in running if j.revision > max(state["start_revision"], state["progress_revision"])]
        if moved:
            ready = state["progress_time"] + progress_interval
            if ready > now:
                return Plan(wait=ready)
            return Plan("progress", moved[-1], moved[-1].revision)
    return Plan()


# -- the dispatcher ------------------------------------------------------------------------------


class Dispatcher:
    """Delivers due webhooks, a bounded number at once, per destination host and in all."""

    def __init__(self, settings: WebhookSettings, store: Store, clock: Clock, render: Callable[[Job], bytes]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.render = render  # the job -> the body (its protobuf JSON)
        self._wake = asyncio.Event()
        self._inflight: set[str] = set()
        self._per_host: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._policies: dict[str, WebhookPolicy] = {}
        self._sessions: dict[tuple[IpNetwork, ...], Any] = {}  # one per set of allowed networks (its resolver's)
        self._closing = False

    @property
    def lease_seconds(self) -> float:
        return self.settings.timeout_seconds + 15.0  # one attempt (its POST, the store's reads), with room

    def policy(self, tenant: str) -> WebhookPolicy:
        policy = self._policies.get(tenant)
        if policy is None:
            policy = self._policies[tenant] = WebhookPolicy.of(self.settings, tenant)
        return policy

    def poke(self) -> None:
        """A revision a webhook may want was stored here: look now rather than at the next poll."""
        self._wake.set()

    def _session(self, networks: tuple[IpNetwork, ...]) -> Any:
        import aiohttp

        session = self._sessions.get(networks)
        if session is None:
            session = self._sessions[networks] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=CheckedResolver(networks), limit=0, use_dns_cache=False),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                headers={"User-Agent": _USER_AGENT},
            )
        return session

    async def stop(self) -> None:
        """Ends ``run`` (deliveries in flight are cut: their leases run out, and they are tried again)."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        task = asyncio.current_task()
        # A store of this process alone marks nothing without a poke from here: it is looked at when
        # poked, when the earliest due time comes, and otherwise rarely. A shared one is polled (other
        # processes mark webhooks too).
        idle = self.settings.poll_interval_seconds if self.store.shared else _IDLE_LOOK_SECONDS
        try:
            while not self._closing:
                self._wake.clear()
                wait = idle
                try:
                    waiting = await self._pass()
                    next_due = await self.store.webhook_next_due()
                    if next_due is not None:
                        wait = min(idle, max(0.0, next_due - self.clock.now()))
                    if waiting and wait <= 0:
                        # Due, but its slots are taken: until a delivery finishes (it pokes), not a spin.
                        wait = idle
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError() from None  # a client library turned it into an error
                    log.exception("webhooks: looking for due deliveries failed; trying again")
                    wait = min(idle, self.settings.backoff_initial_seconds)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, _MIN_LOOK_SECONDS)):
                        await self._wake.wait()
        finally:
            await self._close()

    async def _close(self) -> None:
        self._closing = True
        await cancel_and_wait(list(self._tasks))
        for session in self._sessions.values():
            await session.close()

    async def _pass(self) -> bool:
        """Claims and starts what is due, as far as the slots allow; answers whether something due was
        left for want of a slot (this process's, or its destination's): a finishing delivery pokes."""
        if self.settings.max_concurrent - len(self._inflight) <= 0:
            return True
        now = self.clock.now()
        # Page through what is due until the slots are full: the deliveries a busy destination cannot
        # take now are passed over (they wait), and those of the others behind them go out.
        offset, waiting = 0, False
        for _ in range(_DUE_PAGES):
            due = await self.store.webhooks_due(now, _DUE_PAGE, offset)
            claimed = 0
            for job_id, url in due:
                if len(self._inflight) >= self.settings.max_concurrent:
                    return True
                host = _destination(url)
                if job_id in self._inflight or self._per_host[host] >= self.settings.max_concurrent_per_host:
                    waiting = True
                    continue
                at = self.clock.now()  # the lease counts from the claim, not from the start of the pass
                claim = await self.store.claim_webhook(job_id, at, at + self.lease_seconds)
                if claim is None:
                    continue  # another process has it, or it is no longer due
                claimed += 1  # (no longer due: the next page starts that much earlier)
                self._inflight.add(job_id)
                self._per_host[host] += 1
                task = asyncio.get_running_loop().create_task(self._deliver(claim, host), name=f"webhook-{job_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(due) < _DUE_PAGE:
                return waiting
            offset += len(due) - claimed
        return waiting

    async def _deliver(self, claim: WebhookClaim, host: str) -> None:
        state: dict[str, Any] = {**new_state(), **claim.state}
        due = None
        try:
            # Never past the lease: after it another process may claim the webhook (and what this one
            # would then store is refused: finish_webhook checks the lease).
            async with asyncio.timeout(self.lease_seconds - _LEASE_MARGIN_SECONDS):
                due = await self._step(claim.job_id, state)
        except asyncio.CancelledError:
            raise  # shutting down: the lease runs out and whoever is next carries on
        except Exception:
            log.exception("webhooks: delivering for job %s failed; trying again later", claim.job_id)
            due = self.clock.now() + self.settings.backoff_initial_seconds
        finally:
            self._inflight.discard(claim.job_id)
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]
        now = self.clock.now()
        if not await self.store.finish_webhook(claim.job_id, state, claim.pending, now if due is None else min(due, now),
                                               due, claim.lease):
            log.warning("webhooks: the claim of job %s ran out before its attempt was recorded", claim.job_id)
        self.poke()  # the next look: at once if it is due again, else at its time

    async def _step(self, job_id: str, state: dict[str, Any]) -> float | None:
        """Attempts the job's next event, updating ``state``; answers when to look again (None: only
        when a new revision is marked)."""
        job = await self.store.get_job(job_id)
        if job is None or job.webhook is None:
            return None
        spec = job.webhook
        interval, now = self.settings.progress_interval_seconds, self.clock.now()
        retrying = state["current"]
        if retrying is not None and retrying["next_attempt"] > now:
            # A retry whose time has not come: unless the job as it is now replaces it, nothing to read.
            early = plan(state, spec, job, (), now, interval)
            if state["current"] is retrying:
                return early.wait
        revisions: list[Job] = []
        if ("start" in spec.events and not state["start_done"]) or ("progress" in spec.events and not job.terminal):
            # (only start and progress need the revisions: completed is the job as it is now)
            revisions = [j for j, _ in await self.store.revisions_after(job.id, state["seen"])]
        if revisions and revisions[-1].revision > job.revision:
            job = revisions[-1].evolve(webhook=spec)  # stored since get_job: the job as it is now
        step = plan(state, spec, job, revisions, now, interval)
        if not step.event:
            if step.wait is None and state["current"] is None and revisions:
                state["seen"] = max(state["seen"], revisions[-1].revision)  # nothing in them for this webhook
            return step.wait
        assert step.job is not None
        await self._attempt(state, job, spec, step)
        retrying = state["current"]
        return retrying["next_attempt"] if retrying is not None else self.clock.now()

    async def _attempt(self, state: dict[str, Any], job: Job, spec: WebhookSpec, step: Plan) -> None:
        now = self.clock.now()
        current = state["current"]
        if current is None or current["event"] != step.event or current["revision"] != step.revision:
            current = {"event": step.event, "revision": step.revision, "attempts": 0, "first": now, "next_attempt": now,
                       "id": message_id(job.id, step.event, step.revision)}
        current["attempts"] += 1
        policy = self.policy(job.tenant)
        try:
            host, _ = check_url(spec.url, policy)  # the allowlist may have changed since Submit
            literal = _literal(host)
            if literal is not None and not check_address(literal, policy.networks):  # (aiohttp resolves no literal)
                raise _refuse(f"{literal} is not public, and not in webhooks.allowed_networks", "WEBHOOK_ADDRESS_NOT_ALLOWED")
        except InvalidArgument as refused:
            status, error, wait, allowed = 0, f"no longer allowed: {refused.message}", None, False
        else:
            status, error, wait = await self._post(spec, policy, current["id"], step, job.id)
            allowed = True
        state.update(last_event=step.event, last_id=current["id"], attempts=current["attempts"],
                     last_attempt=self.clock.now(), last_status=status, next_attempt=None)
        if not allowed:
            outcome = "refused"
            state.update(last_error=error, current=None, status=FAILED)
            self._done(state, step)
        elif 200 <= status < 300:
            outcome = "delivered"
            state.update(last_error="", delivered=state["delivered"] + 1, current=None, status=DELIVERED)
            self._done(state, step)
        elif status == 410:
            outcome = "disabled"
            state.update(last_error="410 Gone: the receiver wants no more deliveries for this job", current=None,
                         status=DISABLED)
        elif status == 0 or status == 429 or status >= 500:
            error = error or f"HTTP {status}"
            delay = self._backoff(current["attempts"]) if wait is None else min(
                max(wait, self.settings.backoff_initial_seconds), self.settings.retry_period_seconds)  # never a tight loop
            next_attempt = self.clock.now() + delay
            if next_attempt - current["first"] > self.settings.retry_period_seconds:
                outcome = "given_up"
                state.update(last_error=f"{error}; retried for {self.settings.retry_period_seconds:g} s, given up",
                             current=None, status=FAILED)
                self._done(state, step)
            else:
                outcome = "retry"
                current["next_attempt"] = next_attempt
                state.update(last_error=error, current=current, status=RETRYING, next_attempt=next_attempt)
        else:  # redirects (not followed) and other refusals: not retried
            outcome = "refused"
            state.update(last_error=f"HTTP {status}, not retried" + ("" if status // 100 != 3 else " (redirects are not followed)"),
                         current=None, status=FAILED)
            self._done(state, step)
        metrics.WEBHOOK_DELIVERIES.labels(step.event, outcome).inc()
        log.info("webhook %s of job %s to %s: %s", step.event, job.id, _destination(spec.url),
                 f"HTTP {status}" if status else error)

    async def _post(self, spec: WebhookSpec, policy: WebhookPolicy, message: str, step: Plan,
                    job_id: str) -> tuple[int, str, float | None]:
        """One signed POST of the event: (HTTP status or 0, what went wrong, the Retry-After wait)."""
        import aiohttp

        assert step.job is not None
        body = self.render(step.job.evolve(webhook=spec))
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(policy.keys, message, timestamp, body),
        }
        try:
            async with self._session(policy.networks).post(spec.url, data=body, headers=headers, allow_redirects=False) as response:
                with contextlib.suppress(Exception):
                    await response.content.read(_READ_LIMIT)
                return response.status, "", retry_after(response.headers.get("Retry-After"), self.clock.now())
        except TimeoutError:
            return 0, f"no answer within {self.settings.timeout_seconds:g} s", None
        except (aiohttp.ClientError, OSError) as exc:
            return 0, clip(f"{type(exc).__name__}: {exc}", 500), None
        except Exception as exc:  # whatever else went wrong, it is this attempt's failure
            log.warning("webhook %s of job %s: %s", step.event, job_id, exc, exc_info=True)
            return 0, clip(f"{type(exc).__name__}: {exc}", 500), None

    def _done(self, state: dict[str, Any], step: Plan) -> None:
        """The event is over (delivered or given up): the plan moves past it."""
        state[f"{step.event}_done"] = True
        if step.event == "progress":
            state["progress_revision"] = step.revision
            state["progress_time"] = self.clock.now()
        state["seen"] = max(state["seen"], step.revision)

    def _backoff(self, attempts: int) -> float:
        base = min(self.settings.backoff_max_seconds, self.settings.backoff_initial_seconds * 2 ** min(attempts - 1, 30))
        return base * random.uniform(0.5, 1.0)


def _destination(url: str) -> str:
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, answering only addresses a webhook may connect to: the check at Submit
    cannot be undone by DNS answering differently later (rebinding)."""

    def __init__(self, networks: Sequence[IpNetwork], setting: str = "webhooks.allowed_networks") -> None:
        self.networks = networks
        self.setting = setting

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers: list[ResolveResult] = []
        for address in await resolve(host, port, self.networks, self.setting):
            ip = ipaddress.ip_address(address)
            answers.append(ResolveResult(hostname=host, host=address, port=port, proto=0, flags=socket.AI_NUMERICHOST,
                                         family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET))
        return answers

    async def close(self) -> None:
        return None
