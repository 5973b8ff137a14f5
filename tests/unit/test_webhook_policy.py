"""The webhook rules in isolation, fuzzed both ways: which URLs pass the allowlist (and which never
do), which addresses a webhook may reach, signatures the reference library accepts (and a tampered
body it refuses), Retry-After, and the order events are planned in."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.errors import InvalidArgument
from gateway.jobs import Job, JobState, WebhookSpec, new_job_id
from gateway.store.base import WebhookClaim
from gateway.webhooks import (
    WebhookPolicy,
    check_address,
    check_url,
    new_state,
    plan,
    retry_after,
    signature_header,
)
from harness.webhook_receiver import SECRET

POLICY = WebhookPolicy(("https://hooks.example.com/in/",), (), ())

schemes = st.sampled_from(["https", "http", "HTTPS", "ftp", "javascript", ""])
hosts = st.sampled_from(["hooks.example.com", "HOOKS.example.com", "hooks.example.com.", "hooks.example.com.evil.net",
                         "evil.net", "example.com", "xhooks.example.com", "hooks.example.co"])
ports = st.sampled_from(["", ":443", ":8443", ":80", ":0443"])
userinfo = st.sampled_from(["", "user@", "user:pw@", "hooks.example.com@"])
paths = st.sampled_from(["/in/", "/in/x", "/in/x?y=1", "/in", "/inx/", "/", "", "/in/#f", "/IN/x", "/in/../admin", "/in/%2e%2E/admin",
                         "/in/./x", "/in/..x", "/in/..%2fadmin", "/in/a%2Fb", "/in/a\\b", "/in/%5c..%5cadmin", "/in/%252e"])


@settings(max_examples=400, deadline=None)
@given(schemes, userinfo, hosts, ports, paths)
def test_a_url_passes_only_under_an_allowed_prefix(scheme: str, user: str, host: str, port: str, path: str) -> None:
    url = f"{scheme}://{user}{host}{port}{path}" if scheme else f"{user}{host}{port}{path}"
    wanted = (scheme.lower() == "https" and not user and host.lower().rstrip(".") == "hooks.example.com"
              and port in ("", ":443", ":0443") and path.startswith("/in/") and "#" not in path
              and not any(unquote(seg) in (".", "..") or "/" in unquote(seg) or "\\" in unquote(seg)
                          for seg in path.split("/")))
    try:
        check_url(url, POLICY)
    except InvalidArgument as refused:
        assert not wanted, (url, refused)
        assert refused.reason.startswith("WEBHOOK_URL_")
    else:
        assert wanted, url


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_refused_cleanly_or_is_an_allowed_url(text: str) -> None:
    try:
        host, port = check_url(text, POLICY)
    except InvalidArgument as refused:
        assert refused.reason.startswith("WEBHOOK_URL_")
    else:
        assert (host, port) == ("hooks.example.com", 443) and text.lower().startswith("https://hooks.example.com")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "0.0.0.0",
                                     "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
                                     "224.0.0.1", "255.255.255.255", "::", "fe80::1%eth0"])
def test_internal_addresses_are_refused_unless_allowed(address: str) -> None:
    assert not check_address(address, ())
    network = ipaddress.ip_network(address.split("%")[0].replace("::ffff:", "") + ("/128" if ":" in address.replace(
        "::ffff:", "") else "/32"), strict=False)
    assert check_address(address, (network,))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111",
                                     "64:ff9b::808:808", "2002:808:808::1"])  # 8.8.8.8 through NAT64, 6to4
def test_public_addresses_are_allowed(address: str) -> None:
    assert check_address(address, ())


@pytest.mark.parametrize(("address", "inner"), [
    ("64:ff9b::7f00:1", "127.0.0.1"), ("64:ff9b::a00:1", "10.0.0.1"), ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
    ("2002:7f00:1::1", "127.0.0.1"), ("2002:c0a8:101::1", "192.168.1.1"), ("::7f00:1", "127.0.0.1"),
    ("::a00:1", "10.0.0.1"), ("::ffff:0:7f00:1", "127.0.0.1"),
])
def test_ipv6_addresses_that_lead_to_internal_ipv4_ones_are_refused(address: str, inner: str) -> None:
    """NAT64, SIIT, 6to4 and IPv4-compatible addresses count as Python's global ones, but a translator or
    tunnel takes them to the IPv4 address they carry: that one decides."""
    assert ipaddress.ip_address(address).is_global  # what a plain check would have let through
    assert not check_address(address, ())
    assert check_address(address, (ipaddress.ip_network(f"{inner}/32"),))


def test_site_local_ipv6_addresses_are_refused() -> None:
    assert ipaddress.ip_address("fec0::1").is_global  # deprecated, but still routed inside some sites
    assert not check_address("fec0::1", ())


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000).map(lambda b: b.decode("latin-1").encode()), st.text(min_size=1, max_size=40).filter(
    lambda s: "." not in s and " " not in s))
def test_signatures_verify_with_the_reference_library_and_tampering_does_not(body: bytes, message_id: str) -> None:
    key = Webhook(SECRET)._whsecret
    now = int(time.time())
    headers = {"webhook-id": message_id, "webhook-timestamp": str(now),
               "webhook-signature": signature_header((b"an-older-key-being-rotated-out", key), message_id, now, body)}
    Webhook(SECRET).verify(body, headers, json_parse=False)  # one of the two signatures is the secret's
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers, json_parse=False)


def test_retry_after_reads_seconds_and_http_dates(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    assert retry_after("7", now) == 7.0
    assert retry_after(None, now) is None and retry_after("soon", now) is None
    assert retry_after("\u00b2", now) is None and retry_after("\u0663", now) is None  # digits, not ASCII ones
    assert retry_after("-5", now) is None and retry_after("1e3", now) is None
    from email.utils import formatdate

    assert 9 <= (retry_after(formatdate(now + 10, usegmt=True), now) or 0) <= 10
    # A date without a zone (or -0000) is UTC, whatever this machine's zone (here: 9 hours east of it).
    naive = formatdate(now + 10, usegmt=True).replace(" GMT", " -0000")
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert 9 <= (retry_after(naive, now) or 0) <= 10
    finally:
        monkeypatch.undo()
        time.tzset()


def _revisions() -> list[Job]:
    job = Job(id=new_job_id(1.0), tenant="t", route="echo", state=JobState.QUEUED, revision=1, created=1.0,
              webhook=WebhookSpec("https://hooks.example.com/in/", frozenset({"start", "progress", "completed"})))
    running = job.evolve(revision=2, state=JobState.RUNNING, started=2.0)
    moved = [running.evolve(revision=3 + i, progress=(i + 1) / 4) for i in range(3)]
    done = moved[-1].evolve(revision=6, state=JobState.SUCCEEDED, finished=3.0)
    return [job, running, *moved, done]


def test_events_are_planned_start_latest_progress_then_completed() -> None:
    revisions = _revisions()
    spec = revisions[0].webhook
    assert spec is not None
    state = new_state()
    running_now = revisions[4]  # the job at revision 5, still running
    step = plan(state, spec, running_now, revisions[:5], now=10.0, progress_interval=0.5)
    assert (step.event, step.revision) == ("start", 2)
    state.update(start_done=True, seen=2)
    step = plan(state, spec, running_now, revisions[2:5], now=10.0, progress_interval=0.5)
    assert (step.event, step.revision) == ("progress", 5)  # the latest, not each
    state.update(progress_revision=5, progress_time=10.0, seen=5)
    later = revisions[4].evolve(revision=6, progress=0.9)
    assert plan(state, spec, later, [later], now=10.2, progress_interval=0.5).wait == pytest.approx(10.5)
    step = plan(state, spec, revisions[5], revisions[5:], now=10.2, progress_interval=0.5)
    assert (step.event, step.revision) == ("completed", 6)  # the end is never throttled


def test_a_failing_progress_is_dropped_for_a_newer_one_but_start_and_completed_are_retried() -> None:
    revisions = _revisions()
    spec = revisions[0].webhook
    assert spec is not None
    state = {**new_state(), "start_done": True, "start_revision": 2, "seen": 2,
             "current": {"event": "progress", "revision": 3, "attempts": 1, "first": 1.0, "next_attempt": 99.0, "id": "m"}}
    step = plan(state, spec, revisions[5], revisions[2:], now=10.0, progress_interval=0.5)
    assert (step.event, step.revision) == ("completed", 6) and state["current"] is None
    state["current"] = {"event": "completed", "revision": 6, "attempts": 1, "first": 1.0, "next_attempt": 99.0, "id": "m"}
    assert plan(state, spec, revisions[5], revisions[2:], now=10.0, progress_interval=0.5).wait == 99.0
    assert plan(state, replace(spec), revisions[5], revisions[2:], now=100.0, progress_interval=0.5).event == "completed"


def test_a_failing_start_waits_while_the_job_runs_and_gives_way_to_completed_once_it_ended() -> None:
    revisions = _revisions()
    spec = revisions[0].webhook
    assert spec is not None
    retrying = {"event": "start", "revision": 2, "attempts": 3, "first": 1.0, "next_attempt": 99.0, "id": "m"}
    state = {**new_state(), "start_revision": 2, "seen": 1, "current": dict(retrying)}
    assert plan(state, spec, revisions[4], revisions[1:5], now=10.0, progress_interval=0.5).wait == 99.0  # still running
    assert (plan(state, spec, revisions[4], revisions[1:5], now=100.0, progress_interval=0.5).event,
            state["start_done"]) == ("start", False)  # its time came: start again, not a progress before it
    state["current"] = dict(retrying)
    step = plan(state, spec, revisions[5], revisions[1:], now=10.0, progress_interval=0.5)
    assert (step.event, step.revision) == ("completed", 6)  # not a day behind a receiver that fails
    assert state["start_done"] and state["current"] is None


class _DueStore:
    """Just enough of a shared store for the dispatcher: `due` webhooks, all to one host, all due now."""

    shared = True

    def __init__(self, due: list[str]) -> None:
        self.due = due
        self.looks = 0

    async def webhooks_due(self, now: float, limit: int, offset: int = 0) -> list[tuple[str, str]]:
        self.looks += 1
        return [(job_id, "https://slow.example.com/in/") for job_id in self.due[offset:offset + limit]]

    async def webhook_next_due(self) -> float | None:
        return 0.0 if self.due else None  # long due

    async def claim_webhook(self, job_id: str, now: float, lease_until: float) -> WebhookClaim | None:
        self.due.remove(job_id)
        return WebhookClaim(job_id, 1, {}, lease_until)


async def test_a_busy_destination_does_not_make_the_dispatcher_spin() -> None:
    """Deliveries due to a destination whose slots are all taken wait for a slot to free (a finishing
    delivery pokes) or the next poll, instead of a look every few milliseconds."""
    import asyncio

    from gateway.jobs import SystemClock
    from gateway.settings import WebhookSettings
    from gateway.webhooks import Dispatcher

    store = _DueStore([f"job-{i}" for i in range(5)])
    dispatcher = Dispatcher(WebhookSettings(max_concurrent_per_host=1, poll_interval_seconds=0.25), store,
                            SystemClock(), lambda job: b"{}")
    hung = asyncio.Event()

    async def deliver_forever(claim: WebhookClaim, host: str) -> None:
        await hung.wait()  # a receiver that never answers (within this test)

    dispatcher._deliver = deliver_forever  # type: ignore[method-assign]
    runner = asyncio.create_task(dispatcher.run())
    await asyncio.sleep(1.0)
    await dispatcher.stop()
    hung.set()
    await asyncio.wait_for(runner, 5)
    assert len(store.due) == 4  # one delivery under way, four waiting for its host
    assert store.looks <= 10  # about one look per poll interval (it was one every 10 ms: about 100)


class _JobStore:
    """get_job only: a dispatcher step that reads revisions fails the test."""

    shared = True

    def __init__(self, job: Job) -> None:
        self.job = job

    async def get_job(self, job_id: str) -> Job | None:
        return self.job

    async def revisions_after(self, job_id: str, after: int) -> list[tuple[Job, int]]:
        raise AssertionError("read every revision (each with its segments) where the job as it is now was enough")


async def test_completed_and_a_waiting_retry_need_only_the_job_as_it_is_now() -> None:
    """A long transcription's revisions each carry the segments so far: the dispatcher reads them only
    for start and progress, never for completed alone or for a retry whose time has not come."""
    from gateway.jobs import SystemClock
    from gateway.settings import WebhookSettings
    from gateway.webhooks import Dispatcher

    done = _revisions()[-1]
    store = _JobStore(done.evolve(webhook=WebhookSpec("https://hooks.example.com/in/", frozenset({"completed"}))))
    dispatcher = Dispatcher(WebhookSettings(allowed_prefixes=["https://hooks.example.com/in/"],
                                            secret=SECRET), store, SystemClock(), lambda job: b"{}")
    posted: list[str] = []

    async def post(spec: WebhookSpec, policy: WebhookPolicy, message: str, step: Any, job_id: str) -> tuple[int, str, None]:
        posted.append(step.event)
        return 503, "", None

    dispatcher._post = post  # type: ignore[method-assign]
    state = new_state()
    retry_at = await dispatcher._step(done.id, state)
    assert posted == ["completed"] and state["status"] == "RETRYING" and retry_at is not None
    store.job = done.evolve(webhook=WebhookSpec("https://hooks.example.com/in/", frozenset({"start", "completed"})))
    assert await dispatcher._step(done.id, state) == retry_at  # its time has not come: no revisions read
    assert posted == ["completed"]


async def test_a_literal_address_no_longer_allowed_is_not_called() -> None:
    """aiohttp connects to an IP literal without asking the resolver (which checks every other host at
    each connection): a literal taken out of allowed_networks since Submit is refused at the attempt."""
    from gateway.jobs import SystemClock
    from gateway.settings import WebhookSettings
    from gateway.webhooks import Dispatcher

    url = "http://127.0.0.1:9/in/"
    done = _revisions()[-1].evolve(webhook=WebhookSpec(url, frozenset({"completed"})))
    dispatcher = Dispatcher(WebhookSettings(allowed_prefixes=[url], secret=SECRET),  # no allowed_networks now
                            _JobStore(done), SystemClock(), lambda job: b"{}")
    posted: list[str] = []

    async def post(*args: Any) -> tuple[int, str, None]:
        posted.append(url)
        return 204, "", None

    dispatcher._post = post  # type: ignore[method-assign]
    state = new_state()
    assert await dispatcher._step(done.id, state) is not None
    assert posted == [] and state["status"] == "FAILED" and "127.0.0.1 is not public" in state["last_error"]
