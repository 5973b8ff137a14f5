"""The HTTP face against the operator's browser: Host names (DNS rebinding) and cross-site requests
(CSRF), on a real gateway process, for the facade and the dashboard's API alike; and the setting
that widens the Host names answered (http_allowed_hosts)."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.http import HostPolicy
from gateway.settings import Settings, load_settings, split_host
from harness import ECHO_CONFIG, ServerProcess, wait_until

FOREIGN = "rebind.attacker.example"
SLOW = {"delay_ms": 600_000}  # an echo job that stays running until cancelled
DASHBOARD = {"X-Dashboard": "1", "Content-Type": "application/json"}


def call(server: ServerProcess, method: str, path: str, host: str | None = "", body: bytes | str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request with exactly the Host given ("": the server's own address, None: no Host at all),
    as http.client sends it; the answer's status and its JSON (or text)."""
    name, port = server.http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        if host is None:  # HTTP/1.1 requires Host (aiohttp answers 400 without); HTTP/1.0 may leave it out
            connection._http_vsn, connection._http_vsn_str = 10, "HTTP/1.0"  # type: ignore[attr-defined]
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host or server.http_address)
        data = body.encode() if isinstance(body, str) else body
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        if data is not None:
            connection.putheader("Content-Length", str(len(data)))
        connection.endheaders(data)
        response = connection.getresponse()
        text = response.read().decode()
    finally:
        connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def reason(answer: Any) -> str:
    return str(answer["error"]["reason"]) if isinstance(answer, dict) and "error" in answer else ""


def submit(server: ServerProcess, inputs: dict[str, Any] | None = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {"X-OctoAI-Async": "1", "Content-Type": "application/json", **kwargs.pop("headers", {})}
    return call(server, "POST", "/echo/predict", body=json.dumps(inputs or SLOW), headers=headers, **kwargs)


def job_ids(server: ServerProcess, headers: dict[str, str] | None = None) -> set[str]:
    """Every job of the tenant, read through the dashboard's API from the gateway's own address."""
    status, answer = call(server, "GET", "/api/dashboard/jobs?page_size=1000", headers=headers)
    assert status == 200, answer
    return {job["id"] for job in answer["jobs"]}


@pytest.fixture(scope="module")
def local(echo_server: ServerProcess) -> ServerProcess:
    """The default local mode: auth off, listening on loopback."""
    return echo_server


@pytest.fixture(scope="module")
def running_job(local: ServerProcess) -> str:
    status, answer = submit(local)
    assert status == 201, answer
    return str(answer["response_id"])


# -- Host ---------------------------------------------------------------------------------------------


def test_a_rebinding_host_can_neither_read_nor_cancel(local: ServerProcess, running_job: str) -> None:
    port = local.http_address.rsplit(":", 1)[1]
    for host in (f"{FOREIGN}:{port}", FOREIGN, f"{FOREIGN.upper()}.:{port}", f"localhost.{FOREIGN}:{port}"):
        same_origin = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}  # what the rebound page sends
        reads = ["/api/dashboard/jobs", f"/api/dashboard/jobs/{running_job}", "/api/dashboard/events",
                 "/api/dashboard/config", f"/v1/requests/{running_job}", f"/v1/responses/{running_job}", "/",
                 "/dashboard/app.js", "/metrics", "/echo/healthcheck"]
        for path in reads:
            status, answer = call(local, "GET", path, host=host, headers=same_origin)
            assert (status, reason(answer)) == (421, "HOST_NOT_ALLOWED"), (host, path, status, answer)
            assert "http_allowed_hosts" in answer["error"]["message"] and answer["error"]["code"] == "PERMISSION_DENIED"
        status, answer = call(local, "POST", f"/api/dashboard/jobs/{running_job}/cancel", host=host, body="{}",
                              headers={**DASHBOARD, **same_origin})
        assert (status, reason(answer)) == (421, "HOST_NOT_ALLOWED"), answer
        status, answer = submit(local, host=host, headers=same_origin)
        assert (status, reason(answer)) == (421, "HOST_NOT_ALLOWED"), answer
    # Nothing was cancelled: the job still runs, as the gateway's own address shows.
    status, answer = call(local, "GET", f"/v1/requests/{running_job}")
    assert status == 200 and answer["status"] in ("pending", "running"), answer
    assert "refused Host" in local.log()  # the operator is told, once per name


def test_probes_answer_any_host(local: ServerProcess) -> None:
    """Kubelet and load-balancer probes name whatever they like (the pod's IP, a Service's name)."""
    for path in ("/healthz", "/readyz"):
        status, answer = call(local, "GET", path, host=f"{FOREIGN}:80")
        assert status == 200, answer


@pytest.mark.parametrize("host", ["localhost", "LocalHost:{port}", "localhost.:{port}", "127.0.0.1:{port}",
                                  "127.0.0.1", "[::1]:{port}", "[::1]", "[0:0::1]:{port}", "10.1.2.3:80",
                                  "localhost:1234", None])
def test_the_gateways_own_hosts_pass(local: ServerProcess, running_job: str, host: str | None) -> None:
    """Case, a trailing dot, IPv6 brackets, another port (a port map, a port-forward) and IP addresses
    (the pod's, behind a probe or a Service) are the gateway's own; so is an HTTP/1.0 request with no Host."""
    port = local.http_address.rsplit(":", 1)[1]
    host = None if host is None else host.format(port=port)
    status, answer = call(local, "GET", f"/v1/requests/{running_job}", host=host)
    assert status == 200 and answer["response_id"] == running_job, (host, status, answer)
    status, answer = call(local, "GET", "/api/dashboard/jobs", host=host)
    assert status == 200 and running_job in {j["id"] for j in answer["jobs"]}, (host, status, answer)


@pytest.mark.parametrize("host", ["evil:abc", "[::1", "[127.0.0.1]:80", "localhost:99999", "a..b", "localhost:"])
def test_a_malformed_host_is_refused(local: ServerProcess, host: str) -> None:
    status, answer = call(local, "GET", "/api/dashboard/jobs", host=host)
    assert status in (400, 421), (host, status, answer)  # 400: refused by the HTTP parser itself
    assert status == 400 or reason(answer) == "HOST_NOT_ALLOWED"


# -- cross-site requests -------------------------------------------------------------------------------

CROSS_SITE = [
    pytest.param({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, id="cross-site"),
    pytest.param({"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}, id="same-site-other-port"),
    pytest.param({"Origin": "https://evil.example"}, id="origin-only"),
    pytest.param({"Origin": "null"}, id="opaque-origin"),
    pytest.param({"Origin": "http://{address}.evil.example"}, id="origin-prefix"),
    pytest.param({"Referer": "https://evil.example/form.html"}, id="old-browser-referer"),
]
FORMS = [
    pytest.param("text/plain", id="text-plain"),
    pytest.param("application/x-www-form-urlencoded", id="urlencoded"),
    pytest.param("multipart/form-data; boundary=x", id="multipart"),
]


@pytest.mark.parametrize("content_type", FORMS)
@pytest.mark.parametrize("marks", CROSS_SITE)
def test_a_cross_site_form_post_to_predict_makes_no_job(local: ServerProcess, marks: dict[str, str],
                                                        content_type: str) -> None:
    """What <form enctype="text/plain" action="http://127.0.0.1:8080/echo/predict"> on another site
    sends: a body that parses as JSON, a simple content type, no preflight."""
    before = job_ids(local)
    headers = {k: v.format(address=local.http_address) for k, v in marks.items()}
    body = '{"delay_ms": 1, "padding": "="}'
    status, answer = call(local, "POST", "/echo/predict", body=body,
                          headers={**headers, "Content-Type": content_type, "X-OctoAI-Async": "1"})
    assert (status, reason(answer)) == (403, "CROSS_ORIGIN_REQUEST"), (status, answer)
    assert job_ids(local) == before


@pytest.mark.parametrize("marks", CROSS_SITE[:5])
def test_cross_site_writes_are_refused_whatever_their_type(local: ServerProcess, running_job: str,
                                                           marks: dict[str, str]) -> None:
    """JSON from another site would need a preflight that the gateway never grants; refused anyway,
    on the facade and on the dashboard's API (cancel, sign-in)."""
    headers = {k: v.format(address=local.http_address) for k, v in marks.items()}
    before = job_ids(local)
    status, answer = submit(local, {"delay_ms": 1}, headers=headers)
    assert (status, reason(answer)) == (403, "CROSS_ORIGIN_REQUEST"), answer
    status, answer = call(local, "POST", f"/api/dashboard/jobs/{running_job}/cancel", body="{}",
                          headers={**DASHBOARD, **headers})
    assert (status, reason(answer)) == (403, "CROSS_ORIGIN_REQUEST"), answer
    status, answer = call(local, "POST", "/api/dashboard/session", body='{"token": "x"}',
                          headers={**DASHBOARD, **headers})
    assert (status, reason(answer)) == (403, "CROSS_ORIGIN_REQUEST"), answer
    assert job_ids(local) == before
    status, answer = call(local, "GET", f"/v1/requests/{running_job}")
    assert answer["status"] in ("pending", "running"), answer


@pytest.mark.parametrize("headers", [
    pytest.param({"Content-Type": "application/json"}, id="json-no-browser"),
    pytest.param({"Content-Type": "text/plain"}, id="text-no-browser"),  # a script; curl -d sends urlencoded
    pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, id="curl-d"),
    pytest.param({}, id="no-type"),
    pytest.param({"Content-Type": "text/plain", "Sec-Fetch-Site": "same-origin", "Origin": "http://{address}"},
                 id="same-origin-page"),
    pytest.param({"Content-Type": "text/plain", "Origin": "http://{address}"}, id="same-origin-old-browser"),
    pytest.param({"Content-Type": "text/plain", "Referer": "http://{address}/"}, id="same-origin-referer"),
    pytest.param({"Content-Type": "application/json", "Sec-Fetch-Site": "none"}, id="user-initiated"),
])
def test_same_origin_and_non_browser_posts_pass(local: ServerProcess, headers: dict[str, str]) -> None:
    headers = {k: v.format(address=local.http_address) for k, v in headers.items()}
    status, answer = call(local, "POST", "/echo/predict", body='{"delay_ms": 1}',
                          headers={**headers, "X-OctoAI-Async": "1"})
    assert status == 201, (status, answer)
    assert answer["response_id"] in job_ids(local)


def test_the_dashboards_own_page_can_cancel(local: ServerProcess) -> None:
    """What the page's fetch() sends from the gateway's own origin."""
    status, answer = submit(local)
    assert status == 201, answer
    job_id = answer["response_id"]
    page = {**DASHBOARD, "Origin": f"http://{local.http_address}", "Sec-Fetch-Site": "same-origin"}
    status, answer = call(local, "POST", f"/api/dashboard/jobs/{job_id}/cancel", body="{}", headers=page)
    assert status == 200 and answer["job"]["id"] == job_id, answer

    def cancelled() -> bool:
        status, answer = call(local, "GET", f"/v1/requests/{job_id}")
        return status == 409 and answer["error"]["code"] == "CANCELLED"

    wait_until(cancelled, "the job to end CANCELLED")
    # without the dashboard's header it stays refused, as before
    status, answer = call(local, "POST", f"/api/dashboard/jobs/{job_id}/cancel", body="{}",
                          headers={"Content-Type": "application/json"})
    assert (status, reason(answer)) == (403, "MISSING_DASHBOARD_HEADER"), answer


# -- the setting, on a server ---------------------------------------------------------------------------


def test_http_allowed_hosts_widens_the_names(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(env={"GATEWAY_HTTP_ALLOWED_HOSTS": "gw.example.com, *.corp.example,api.example:8443"})
    port = server.http_address.rsplit(":", 1)[1]
    for host in ("gw.example.com", f"GW.example.com.:{port}", "a.b.corp.example", "api.example:8443",
                 "localhost", f"127.0.0.1:{port}"):
        status, answer = call(server, "GET", "/api/dashboard/jobs", host=host)
        assert status == 200, (host, status, answer)
    for host in ("corp.example", "api.example", "api.example:80", f"{FOREIGN}:{port}", "gw.example.com.evil"):
        status, answer = call(server, "GET", "/api/dashboard/jobs", host=host)
        assert (status, reason(answer)) == (421, "HOST_NOT_ALLOWED"), (host, status, answer)
    # A proxy that rewrites Host, with a browser that sends Origin but not Sec-Fetch-Site: a listed name is ours.
    status, answer = submit(server, {"delay_ms": 1}, headers={"Origin": "https://gw.example.com",
                                                                "Content-Type": "text/plain"})
    assert status == 201, answer
    status, answer = submit(server, {"delay_ms": 1}, headers={"Origin": "https://evil.example",
                                                                "Content-Type": "text/plain"})
    assert (status, reason(answer)) == (403, "CROSS_ORIGIN_REQUEST"), answer


def test_any_host_when_the_operator_says_so(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server('http_allowed_hosts = ["*"]\n' + ECHO_CONFIG)
    status, answer = call(server, "GET", "/api/dashboard/jobs", host=FOREIGN)
    assert status == 200, answer
    status, answer = submit(server, {"delay_ms": 1}, headers={"Origin": "https://evil.example"})
    assert (status, reason(answer)) == (403, "CROSS_ORIGIN_REQUEST"), answer  # cross-site writes stay refused


AUTH = '[auth]\nenabled = true\n[auth.tokens]\nalpha-token = "alpha"\n'


def test_with_auth_on_host_is_free_and_cross_site_writes_are_not(make_server: Callable[..., ServerProcess]) -> None:
    """With auth on a rebinding page has no token (the cookie belongs to the real name; browsers add no
    bearer header by themselves), so any Host is answered, as Kubernetes Services need; a request that
    a browser marks as cross-site is still refused, token or not."""
    server = make_server(ECHO_CONFIG + AUTH)
    bearer = {"Authorization": "Bearer alpha-token"}
    status, answer = call(server, "GET", "/api/dashboard/jobs", host=FOREIGN)
    assert (status, reason(answer)) == (401, "MISSING_TOKEN"), answer
    status, answer = call(server, "GET", "/api/dashboard/jobs", host="gateway.ns.svc.cluster.local", headers=bearer)
    assert status == 200, answer
    status, answer = submit(server, {"delay_ms": 1}, host="gateway.ns.svc.cluster.local", headers=bearer)
    assert status == 201, answer
    status, answer = submit(server, {"delay_ms": 1}, headers={**bearer, "Content-Type": "text/plain",
                                                               "Origin": "https://evil.example",
                                                               "Sec-Fetch-Site": "cross-site"})
    assert (status, reason(answer)) == (403, "CROSS_ORIGIN_REQUEST"), answer
    assert len(job_ids(server, bearer)) == 1


def test_with_auth_on_listed_hosts_are_enforced(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server('http_allowed_hosts = ["gw.example.com"]\n' + ECHO_CONFIG + AUTH)
    bearer = {"Authorization": "Bearer alpha-token"}
    status, answer = call(server, "GET", "/api/dashboard/jobs", host="gw.example.com", headers=bearer)
    assert status == 200, answer
    status, answer = call(server, "GET", "/api/dashboard/jobs", host=FOREIGN, headers=bearer)
    assert (status, reason(answer)) == (421, "HOST_NOT_ALLOWED"), answer


# -- the setting, on its own ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    yield


def test_the_setting_is_normalised() -> None:
    settings = Settings(http_allowed_hosts=["GW.Example.com.", "*.Corp.Example", "[0:0::1]:99", "::2", "a:8443", "*"])
    assert settings.http_allowed_hosts == ["gw.example.com", "*.corp.example", "[::1]:99", "[::2]", "a:8443", "*"]
    assert Settings().http_allowed_hosts == []


@pytest.mark.parametrize(("value", "expected"), [
    ("gw.example.com", ["gw.example.com"]),
    ("gw.a, GW.b ,", ["gw.a", "gw.b"]),
    ('["gw.a", "*.b.example"]', ["gw.a", "*.b.example"]),
    ("", []),
])
def test_the_setting_from_the_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch, value: str,
                                          expected: list[str]) -> None:
    monkeypatch.setenv("GATEWAY_HTTP_ALLOWED_HOSTS", value)
    assert load_settings().http_allowed_hosts == expected


@pytest.mark.parametrize("value", ["a b", "http://gw.example.com", "gw.example.com/", "gw:0x50", "gw:70000",
                                   "[::1", "[1.2.3.4]", "*.[::1]", "*", "**.a", "-a.example", "a..b", ""])
def test_the_setting_refuses_what_is_not_a_host(value: str) -> None:
    if value == "*":
        Settings(http_allowed_hosts=[value])  # the one wildcard on its own is fine
        return
    with pytest.raises(ValidationError, match="http_allowed_hosts"):
        Settings(http_allowed_hosts=[value])


@pytest.mark.parametrize(("host", "expected"), [
    ("LOCALHOST.:8080", ("localhost", 8080)), ("[::1]:80", ("::1", 80)), ("[::1]", ("::1", None)),
    ("127.0.0.1", ("127.0.0.1", None)), ("gw.example.com.", ("gw.example.com", None)),
])
def test_split_host(host: str, expected: tuple[str, int | None]) -> None:
    assert split_host(host) == expected


def test_the_policy_derives_names_from_the_listener_and_public_url() -> None:
    policy = HostPolicy(Settings(http_listen="gw.internal:8080", public_url="https://api.example.com/base"), False)
    assert policy.allows("gw.internal:8080") and policy.allows("api.example.com") and policy.allows("[fe80::1]:1")
    assert not policy.allows("example.com") and not policy.allows("localhost.example.com")
    assert policy.own_origin("https://api.example.com", "127.0.0.1:8080")  # a proxy that rewrites Host
    assert not policy.own_origin("http://localhost:3000", "localhost:8080")  # another local port: another site
    assert not policy.own_origin("http://127.0.0.1:3000", "127.0.0.1:8080")
    assert policy.own_origin("http://localhost", "localhost") and not policy.own_origin("null", "localhost")
    assert HostPolicy(Settings(), True).any and not HostPolicy(Settings(http_allowed_hosts=["a"]), True).any
