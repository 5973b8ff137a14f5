"""Operators on the dashboard's API ([auth.operators.<tenant>]), against a real gateway over HTTP: an
operator lists, reads and follows another tenant's jobs with ``?tenant=``, and changes them only with
``actions = true``; any other tenant naming another is refused 403 TENANT_NOT_ALLOWED (and the gateway
goes on serving); a viewer's change is refused 403 ACTION_NOT_ALLOWED and leaves the job as it was; an
operator's change is seen by the job's owner over gRPC and logged with both tenants; and settings that
name a tenant no token maps to keep the gateway from starting. The jobs are submitted through the Python
client, as their owners would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen

import pytest

from gateway_client import Client, NotFoundError
from harness import ECHO_CONFIG, ROOT, ServerProcess, wait_until

TOKENS = {"alice": "tok-alice-7f3a", "bob": "tok-bob-91c2", "ops": "tok-ops-5d0e", "viewer": "tok-viewer-c4b8"}
CONFIG = """
shutdown_grace_seconds = 0
heartbeat_seconds = 1

[routes.echo]
backend = "echo"

[routes.hold-view]
backend = "echo"
workers = 1

[routes.hold-act]
backend = "echo"
workers = 1

[auth]
enabled = true

[auth.tokens]
""" + "".join(f'"{token}" = "{tenant}"\n' for tenant, token in TOKENS.items()) + """
[auth.operators.ops]
tenants = ["*"]
actions = true

[auth.operators.viewer]
tenants = ["*"]

[tenants.carol]
weight = 2

[tenants.default]
weight = 1
"""
LONG = {"delay_ms": 120_000, "steps": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    gateway = ServerProcess(tmp_path_factory.mktemp("operators"), CONFIG).start()
    yield gateway
    gateway.stop()


def _http(server: ServerProcess, method: str, path: str, who: str | None = None, **query: Any) -> tuple[int, Any]:
    """One call of the dashboard's API as ``who`` (a bearer token; None: not signed in); query values
    that are lists repeat their name."""
    url = server.http_url + "/api/dashboard" + path
    if query:
        url += "?" + urlencode(query, doseq=True, quote_via=quote)
    headers = {"X-Dashboard": "1"}
    if who is not None:
        headers["Authorization"] = f"Bearer {TOKENS[who]}"
    body = b"" if method == "POST" else None
    try:
        with urlopen(Request(url, data=body, method=method, headers=headers), timeout=15) as r:
            return r.status, json.loads(r.read() or b"null")
    except HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _refused(answer: tuple[int, Any], status: int, code: str, reason: str) -> None:
    got, body = answer
    assert got == status, answer
    assert body["status"] == "error" and body["error"]["code"] == code and body["error"]["reason"] == reason, body


def _client(server: ServerProcess, who: str) -> Client:
    return Client(server.target, token=TOKENS[who])


def _state(client: Client, job_id: str) -> str:
    return client.get(job_id).state.name.removeprefix("JOB_STATE_")


def _wait_state(client: Client, job_id: str, *states: str) -> None:
    wait_until(lambda: _state(client, job_id) in states, f"job {job_id} {'/'.join(states)}", timeout=30)


def _healthy(server: ServerProcess, who: str = "alice") -> None:
    with urlopen(server.http_url + "/healthz", timeout=10) as r:
        assert r.status == 200
    assert _http(server, "GET", "/jobs", who)[0] == 200


def test_config_lists_the_tenants_each_caller_may_view(server: ServerProcess) -> None:
    def tenants(who: str | None) -> list[dict[str, Any]]:
        status, body = _http(server, "GET", "/config", who)
        assert status == 200 and body["auth"] is True
        assert body["tenant"] == who
        return body["tenants"]  # type: ignore[no-any-return]

    others = ["alice", "bob", "carol", "viewer"]  # "*": every token's tenant and [tenants.carol], not "default"
    assert tenants("ops") == [{"name": "ops", "actions": True}, *({"name": n, "actions": True} for n in others)]
    assert tenants("viewer") == [{"name": "viewer", "actions": True},
                                 *({"name": n, "actions": False} for n in ["alice", "bob", "carol", "ops"])]
    assert tenants("alice") == [{"name": "alice", "actions": True}]
    assert tenants(None) == []


def test_an_operator_lists_reads_and_finds_only_the_tenant_it_names(server: ServerProcess) -> None:
    with _client(server, "alice") as alice, _client(server, "bob") as bob:
        mine = alice.submit_job("echo", {"delay_ms": 0}, labels={"case": "list"}).job
        theirs = [bob.submit_job("echo", {"delay_ms": 0}, labels={"case": "list"}, request_id=f"bob-list-{n}").job
                  for n in range(3)]
    for who in ("ops", "viewer"):
        status, page = _http(server, "GET", "/jobs", who, tenant="bob", label="case=list")
        assert status == 200
        assert sorted(j["id"] for j in page["jobs"]) == sorted(j.id for j in theirs)
        status, own = _http(server, "GET", "/jobs", who, label="case=list")  # absent: its own, none here
        assert status == 200 and own["jobs"] == []
        assert _http(server, "GET", "/jobs", who, tenant="", label="case=list")[1]["jobs"] == []  # empty: its own
        status, one = _http(server, "GET", f"/jobs/{theirs[0].id}", who, tenant="bob")
        assert status == 200 and one["job"]["id"] == theirs[0].id and one["revisions"]
        _refused(_http(server, "GET", f"/jobs/{mine.id}", who, tenant="bob"), 404, "NOT_FOUND", "JOB_NOT_FOUND")
        _refused(_http(server, "GET", f"/jobs/{theirs[0].id}", who), 404, "NOT_FOUND", "JOB_NOT_FOUND")
        status, found = _http(server, "GET", "/find", who, tenant="bob", q="bob-list-1")
        assert status == 200 and found["job"]["id"] == theirs[1].id
        status, found = _http(server, "GET", "/find", who, tenant="alice", q=mine.id)
        assert status == 200 and found["job"]["id"] == mine.id
    status, page = _http(server, "GET", "/jobs", "bob", tenant="bob", label="case=list")  # naming oneself
    assert status == 200 and len(page["jobs"]) == 3


def test_a_tenant_that_is_no_operator_is_refused_every_other_tenant(server: ServerProcess) -> None:
    with _client(server, "bob") as bob:
        job = bob.submit_job("echo", {"delay_ms": 0}).job
    denied = ("PERMISSION_DENIED", "TENANT_NOT_ALLOWED")
    calls = [("GET", "/jobs"), ("GET", f"/jobs/{job.id}"), ("POST", f"/jobs/{job.id}/cancel"),
             ("POST", f"/jobs/{job.id}/retry"), ("DELETE", f"/jobs/{job.id}"), ("POST", "/cancel-matching"),
             ("GET", "/events")]
    for method, path in calls:
        for tenant in ("bob", "nobody-at-all"):  # a tenant that exists and one that does not: the same answer
            _refused(_http(server, method, path, "alice", tenant=tenant), 403, *denied)
    _refused(_http(server, "GET", "/find", "alice", tenant="bob", q=job.id), 403, *denied)
    status, body = _http(server, "GET", "/jobs", "alice", tenant="bob")
    assert "bob" in body["error"]["message"]
    # An operator too, for a tenant outside its list (here: no tenant at all).
    _refused(_http(server, "GET", "/jobs", "ops", tenant="mallory"), 403, *denied)
    # Not tenant names: 400 with the field, never a 500.
    for bad in ("b" * 300, "bob\x01", "bob\n", "bob\x7f", "\u2028"):
        status, body = _http(server, "GET", "/jobs", "ops", tenant=bad)
        assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT" and "tenant" in body["error"]["message"]
    status, body = _http(server, "GET", "/jobs", "ops", tenant=["bob", "alice"])
    assert status == 400 and "tenant" in body["error"]["message"]
    _healthy(server)
    with _client(server, "bob") as bob:
        assert _state(bob, job.id) == "SUCCEEDED"  # nothing was done to it
    assert "Traceback" not in server.log()


def test_a_viewer_reads_but_cannot_change_another_tenants_jobs(server: ServerProcess) -> None:
    with _client(server, "bob") as bob:
        running = bob.submit_job("hold-view", LONG, labels={"case": "view"}).job
        queued = bob.submit_job("hold-view", LONG, labels={"case": "view"}).job
        failed = bob.submit_job("echo", {"fail_with": "broken"}, labels={"case": "view-done"}).job
        done = bob.submit_job("echo", {"delay_ms": 0}, labels={"case": "view-done"}).job
        _wait_state(bob, running.id, "RUNNING")
        _wait_state(bob, failed.id, "FAILED")
        _wait_state(bob, done.id, "SUCCEEDED")
        assert _state(bob, queued.id) == "QUEUED"

        status, page = _http(server, "GET", "/jobs", "viewer", tenant="bob", label="case=view")
        assert status == 200 and {j["id"] for j in page["jobs"]} == {running.id, queued.id}
        denied = ("PERMISSION_DENIED", "ACTION_NOT_ALLOWED")
        for job in (running, queued):
            _refused(_http(server, "POST", f"/jobs/{job.id}/cancel", "viewer", tenant="bob"), 403, *denied)
        _refused(_http(server, "POST", f"/jobs/{failed.id}/retry", "viewer", tenant="bob"), 403, *denied)
        _refused(_http(server, "DELETE", f"/jobs/{done.id}", "viewer", tenant="bob"), 403, *denied)
        _refused(_http(server, "POST", "/cancel-matching", "viewer", tenant="bob", label="case=view"), 403, *denied)
        # A viewer still acts on its own jobs (none match here), as every tenant does.
        status, body = _http(server, "POST", "/cancel-matching", "viewer", label="case=view")
        assert status == 200 and body == {"asked": 0, "cancelled": 0}

        # Nothing changed.
        assert _state(bob, running.id) == "RUNNING" and _state(bob, queued.id) == "QUEUED"
        after = bob.get(failed.id)
        assert after.state.name.endswith("FAILED") and not after.retried_by
        assert _state(bob, done.id) == "SUCCEEDED"
        bob.cancel(running.id)
        bob.cancel(queued.id)
        _wait_state(bob, running.id, "CANCELLED")
    assert "operator 'viewer'" not in server.log()


def test_an_operator_with_actions_changes_another_tenants_jobs_and_is_logged(server: ServerProcess) -> None:
    with _client(server, "bob") as bob, _client(server, "alice") as alice:
        running = bob.submit_job("hold-act", LONG, labels={"case": "act"}).job
        queued = bob.submit_job("hold-act", LONG, labels={"case": "act"}).job
        _wait_state(bob, running.id, "RUNNING")
        assert _state(bob, queued.id) == "QUEUED"

        status, body = _http(server, "POST", f"/jobs/{queued.id}/cancel", "ops", tenant="bob")
        assert status == 200 and body["job"]["state"] == "CANCELLED"
        status, body = _http(server, "POST", f"/jobs/{running.id}/cancel", "ops", tenant="bob")
        assert status == 200 and body["job"]["id"] == running.id
        _wait_state(bob, running.id, "CANCELLED")  # the owner sees it, over gRPC
        assert _state(bob, queued.id) == "CANCELLED"

        # Retry: the new job is the owner's.
        status, body = _http(server, "POST", f"/jobs/{running.id}/retry", "ops", tenant="bob")
        assert status == 200 and body["existing"] is False
        again = body["job"]["id"]
        assert bob.get(again).retry_of == running.id
        with pytest.raises(NotFoundError):
            alice.get(again)
        bob.cancel(again)
        _wait_state(bob, again, "CANCELLED")

        # Delete a finished job of the owner's.
        status, _ = _http(server, "DELETE", f"/jobs/{queued.id}", "ops", tenant="bob")
        assert status == 200
        with pytest.raises(NotFoundError):
            bob.get(queued.id)

        # Cancel matching: the named tenant's jobs only; alice's, with the same label, go on.
        bobs = [bob.submit_job("echo", LONG, labels={"case": "bulk"}).job for _ in range(2)]
        alices = alice.submit_job("echo", LONG, labels={"case": "bulk"}).job
        status, body = _http(server, "POST", "/cancel-matching", "ops", tenant="bob", label="case=bulk")
        assert status == 200 and body == {"asked": 2, "cancelled": 2}
        for job in bobs:
            _wait_state(bob, job.id, "CANCELLED")
        assert _state(alice, alices.id) in ("QUEUED", "RUNNING")
        alice.cancel(alices.id)

    def logged() -> bool:
        log = server.log()
        return all(f"operator 'ops' {what} job {job_id} of tenant 'bob'{note}" in log for what, job_id, note in [
            ("cancelled", queued.id, " (now CANCELLED)"), ("cancelled", running.id, " (now "),
            ("retried", running.id, f" (the new job: {again})"), ("deleted", queued.id, ""),
            *(("cancelled", j.id, " (cancel-matching, now ") for j in bobs)])

    wait_until(logged, "the audit lines of ops's actions", timeout=10)
    assert "operator 'ops' cancel-matching on tenant 'bob'" in server.log()


def test_events_of_another_tenant_bring_its_jobs_only(server: ServerProcess) -> None:
    status, page = _http(server, "GET", "/jobs", "viewer", tenant="bob", page_size=1)
    assert status == 200
    resume = page["resumeToken"]
    with _client(server, "bob") as bob, _client(server, "alice") as alice:
        theirs = bob.submit_job("echo", {"delay_ms": 300, "steps": 2}, labels={"case": "events"}).job
        mine = alice.submit_job("echo", {"delay_ms": 300, "steps": 2}, labels={"case": "events"}).job
        url = (server.http_url + "/api/dashboard/events?" +
               urlencode({"tenant": "bob", "resume": resume, "label": "case=events"}))
        request = Request(url, headers={"Authorization": f"Bearer {TOKENS['viewer']}"})
        seen: list[dict[str, Any]] = []
        ids: list[str] = []
        deadline = time.monotonic() + 30
        with urlopen(request, timeout=15) as stream:
            assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
            event = ""
            while not any(j["id"] == theirs.id and j["done"] for j in seen):
                assert time.monotonic() < deadline, f"bob's job never ended on the stream: {seen}"
                line = stream.readline().decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("id: "):
                    ids.append(line.removeprefix("id: "))
                elif line.startswith("data: ") and event == "job":
                    seen.append(json.loads(line.removeprefix("data: "))["job"])
                elif line.startswith("data: "):
                    assert event == "heartbeat", line
        assert mine.id not in {j["id"] for j in seen}
        assert {j["id"] for j in seen} == {theirs.id}
        assert [j["state"] for j in seen][-1] == "SUCCEEDED" and len(seen) >= 2
        assert ids  # resumable
        bob.fetch(theirs.id, wait=30, timeout=40)
        alice.fetch(mine.id, wait=30, timeout=40)
    _healthy(server)


def test_with_auth_off_the_one_tenant_is_default(tmp_path: Path) -> None:
    workdir = tmp_path / "open"
    workdir.mkdir()
    server = ServerProcess(workdir, ECHO_CONFIG).start()
    try:
        status, body = _http(server, "GET", "/config")
        assert status == 200 and body["auth"] is False and body["tenants"] == []
        with Client(server.target) as client:
            job = client.submit_job("echo", {"delay_ms": 0}).job
        for query in ({}, {"tenant": ""}, {"tenant": "default"}):
            status, page = _http(server, "GET", "/jobs", **query)
            assert status == 200 and job.id in {j["id"] for j in page["jobs"]}
        _refused(_http(server, "GET", "/jobs", tenant="bob"), 403, "PERMISSION_DENIED", "TENANT_NOT_ALLOWED")
        _refused(_http(server, "POST", f"/jobs/{job.id}/cancel", tenant="bob"), 403, "PERMISSION_DENIED",
                 "TENANT_NOT_ALLOWED")
    finally:
        server.stop()


@pytest.mark.parametrize(("operators", "named"), [
    ('[auth.operators.ops]\ntenants = ["mallory"]\n', "auth.operators.ops.tenants: no token"),
    ('[auth.operators.mallory]\ntenants = ["*"]\n', "auth.operators.mallory: no token"),
    ('[auth.operators.carol]\ntenants = ["bob"]\n', "auth.operators.carol: no token"),  # a [tenants] table is not a token
    ('[auth.operators.ops]\ntenants = ["*"]\nwrite = true\n', "auth.operators.ops.write: Extra inputs"),
])
def test_an_operator_naming_an_unknown_tenant_keeps_the_gateway_from_starting(
        tmp_path: Path, operators: str, named: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(ECHO_CONFIG + '[tenants.carol]\nweight = 2\n[auth]\nenabled = true\n[auth.tokens]\n'
                      '"tok-ops-5d0e" = "ops"\n"tok-bob-91c2" = "bob"\n' + operators)
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--listen",
                           "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("gateway: invalid configuration: ") and named in lines[0], lines[0]
    assert done.stdout == ""
