"""Webhooks end to end: a real gateway process delivers to a real HTTP receiver on 127.0.0.1, which
verifies every signature with the Standard Webhooks reference library. Delivered once per event and
in order, retried (same webhook-id) after 500s, a dropped connection and 429 with Retry-After,
stopped by 410, not retried on other refusals, redirects not followed, carried on across a kill -9
(SQLite) and by another replica (Redis); refused URLs get INVALID_ARGUMENT; a slow receiver delays
no other."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, ServerProcess, cli, error_info, wait_until
from harness.redis import RedisProcess
from harness.webhook_receiver import Answer, Receiver, webhook_config

State = pb.WebhookDelivery.State
START, PROGRESS, COMPLETED = pb.WEBHOOK_EVENT_START, pb.WEBHOOK_EVENT_PROGRESS, pb.WEBHOOK_EVENT_COMPLETED


def _config(receiver: Receiver, top: str = "", **settings: object) -> str:
    return top + ECHO_CONFIG + webhook_config(receiver.url("/"), **settings)


def _stub(server: ServerProcess) -> pb_grpc.GatewayServiceStub:
    return pb_grpc.GatewayServiceStub(grpc.insecure_channel(server.target))


def _submit(stub: pb_grpc.GatewayServiceStub, url: str, events: tuple[int, ...] = (), **inputs: object) -> pb.Job:
    struct = struct_pb2.Struct()
    struct.update(inputs)
    request = pb.SubmitRequest(route="echo", inputs=struct, webhook=pb.Webhook(url=url, events=events))
    return stub.Submit(request, timeout=30).job


def _delivery(stub: pb_grpc.GatewayServiceStub, job_id: str) -> pb.WebhookDelivery:
    return stub.Get(pb.GetRequest(job_id=job_id), timeout=10).job.webhook_delivery


def _settled(stub: pb_grpc.GatewayServiceStub, job_id: str, *states: int) -> Callable[[], bool]:
    def check() -> bool:
        job = stub.Get(pb.GetRequest(job_id=job_id), timeout=10).job
        return job.done and job.webhook_delivery.state in states
    return check


def test_completion_arrives_once_signed_as_the_reference_library_verifies(
        make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    stub = _stub(make_server(_config(receiver)))
    job = _submit(stub, receiver.url("/hook"), words="hello")
    assert job.webhook.url == receiver.url("/hook") and list(job.webhook.events) == [COMPLETED]
    assert job.webhook_delivery.state == State.STATE_PENDING
    wait_until(_settled(stub, job.id, State.STATE_DELIVERED), "the delivery")
    [hit] = receiver.of(job.id)
    assert hit.verified and hit.path == "/hook"
    assert hit.headers["content-type"] == "application/json"
    body = hit.job
    assert body["state"] == "JOB_STATE_SUCCEEDED" and body["done"] is True and body["revision"] == "3"
    assert body["queuePosition"] == 0 and body["labels"] == {} and body["segments"] == []  # zero values printed too
    assert body["webhook"]["url"] == receiver.url("/hook")
    delivery = _delivery(stub, job.id)
    assert (delivery.event, delivery.attempts, delivery.delivered_count, delivery.last_status_code) == (COMPLETED, 1, 1, 200)
    assert delivery.message_id == hit.id and not delivery.last_error
    # Once: a later job's delivery arrives, and still the first job's is the only one of it.
    other = _submit(stub, receiver.url("/hook"))
    wait_until(lambda: receiver.of(other.id), "the second job's delivery")
    assert len(receiver.of(job.id)) == 1


def test_start_progress_and_completed_in_order_progress_at_most_every_half_second(
        make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    stub = _stub(make_server(_config(receiver)))
    job = _submit(stub, receiver.url("/hook"), (START, PROGRESS, COMPLETED), delay_ms=2500, steps=25)
    wait_until(_settled(stub, job.id, State.STATE_DELIVERED), "every delivery", timeout=30)
    hits = receiver.of(job.id)
    assert all(h.verified for h in hits)
    states = [h.job["state"] for h in hits]
    assert states[0] == "JOB_STATE_RUNNING" and states[-1] == "JOB_STATE_SUCCEEDED"
    assert [h.job["done"] for h in hits] == [False] * (len(hits) - 1) + [True]
    assert states.count("JOB_STATE_SUCCEEDED") == 1
    progress = hits[1:-1]
    assert progress, "25 steps over 2.5 s gave no progress delivery"
    assert all(h.job["state"] == "JOB_STATE_RUNNING" and h.job.get("progress", 0) > 0 for h in progress)
    gaps = [b.time - a.time for a, b in itertools.pairwise(progress)]
    assert all(gap >= 0.45 for gap in gaps), gaps  # throttled: 25 changes, a handful of deliveries
    assert len(progress) <= 7
    revisions = [int(h.job["revision"]) for h in hits]
    assert revisions == sorted(set(revisions))  # in order, none twice
    assert len({h.id for h in hits}) == len(hits)


@pytest.mark.parametrize("failures", [
    [Answer(500), Answer(503)],
    [Answer(drop=True)],
], ids=["500s", "dropped connection"])
def test_retried_with_the_same_id_until_it_is_taken(
        make_server: Callable[..., ServerProcess], receiver: Receiver, failures: list[Answer]) -> None:
    stub = _stub(make_server(_config(receiver)))
    receiver.script = list(failures)
    job = _submit(stub, receiver.url("/hook"))
    wait_until(_settled(stub, job.id, State.STATE_DELIVERED), "the delivery after the retries")
    hits = receiver.of(job.id)
    assert len(hits) == len(failures) + 1
    assert len({h.id for h in hits}) == 1  # deduplicable: one webhook-id in every attempt
    assert all(h.verified for h in hits)  # each attempt signed afresh
    assert [h.answered for h in hits] == [a.status if not a.drop else 0 for a in failures] + [200]
    delivery = _delivery(stub, job.id)
    assert delivery.attempts == len(hits) and delivery.delivered_count == 1


def test_retry_after_is_honoured(make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    stub = _stub(make_server(_config(receiver, backoff_initial_seconds=0.05)))
    receiver.script = [Answer(429, {"Retry-After": "2"})]
    job = _submit(stub, receiver.url("/hook"))
    wait_until(_settled(stub, job.id, State.STATE_RETRYING), "the first, refused attempt")
    delivery = _delivery(stub, job.id)
    assert delivery.last_status_code == 429 and delivery.HasField("next_attempt_time")
    wait_until(_settled(stub, job.id, State.STATE_DELIVERED), "the retry")
    first, second = receiver.of(job.id)
    assert second.time - first.time >= 1.9  # not the 0.05 s backoff


def test_410_stops_the_jobs_deliveries(make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    stub = _stub(make_server(_config(receiver)))
    receiver.script = [Answer(410)]
    job = _submit(stub, receiver.url("/hook"), (START, COMPLETED), delay_ms=300)
    wait_until(_settled(stub, job.id, State.STATE_DISABLED), "the job's deliveries stopped")
    later = _submit(stub, receiver.url("/hook"))  # another job's completion still goes out
    wait_until(lambda: receiver.of(later.id), "the other job's delivery")
    [only] = receiver.of(job.id)
    assert only.job["state"] == "JOB_STATE_RUNNING"  # the start, refused; no completion after it


def test_other_refusals_and_redirects_are_not_retried(make_server: Callable[..., ServerProcess],
                                                       receiver: Receiver) -> None:
    stub = _stub(make_server(_config(receiver)))
    receiver.script = [Answer(302, {"Location": receiver.url("/elsewhere")}), Answer(400)]
    job = _submit(stub, receiver.url("/hook"), (START, COMPLETED), delay_ms=300)
    wait_until(_settled(stub, job.id, State.STATE_FAILED), "both events given up")
    hits = receiver.of(job.id)
    assert [(h.path, h.answered) for h in hits] == [("/hook", 302), ("/hook", 400)]  # /elsewhere never asked
    delivery = _delivery(stub, job.id)
    assert delivery.last_status_code == 400 and "not retried" in delivery.last_error


def test_a_retry_survives_a_kill_9(make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    server = make_server(_config(receiver, backoff_initial_seconds=1.0))
    stub = _stub(server)
    receiver.default = Answer(500)
    job = _submit(stub, receiver.url("/hook"))
    wait_until(_settled(stub, job.id, State.STATE_RETRYING), "a failed attempt")
    server.kill()
    first = receiver.of(job.id)
    receiver.default = Answer(200)
    server.start()
    stub = _stub(server)
    wait_until(_settled(stub, job.id, State.STATE_DELIVERED), "the delivery after the restart")
    hits = receiver.of(job.id)
    assert len(hits) > len(first) and hits[-1].answered == 200 and hits[-1].verified
    assert {h.id for h in hits} == {first[0].id}


def test_a_url_no_longer_allowed_is_not_called_again(make_server: Callable[..., ServerProcess],
                                                     receiver: Receiver) -> None:
    server = make_server(_config(receiver, backoff_initial_seconds=1.0))
    receiver.default = Answer(500)
    job = _submit(_stub(server), receiver.url("/hook"))
    wait_until(_settled(_stub(server), job.id, State.STATE_RETRYING), "a failed attempt")
    server.stop()
    tried = len(receiver.of(job.id))
    assert server.config_path is not None  # the operator takes the receiver off the allowlist
    server.config_path.write_text(ECHO_CONFIG + webhook_config("https://hooks.example.com/"))
    receiver.default = Answer(200)
    server.start()
    stub = _stub(server)
    wait_until(_settled(stub, job.id, State.STATE_FAILED), "the delivery given up")
    assert "no longer allowed" in _delivery(stub, job.id).last_error
    assert len(receiver.of(job.id)) == tried


def test_a_slow_receiver_delays_no_other(make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    fast = Receiver().start()
    try:
        config = ECHO_CONFIG + webhook_config(receiver.url("/"), fast.url("/"), max_concurrent_per_host=2)
        stub = _stub(make_server(config))
        receiver.default = Answer(200, delay=3.0)
        slow_jobs = [_submit(stub, receiver.url("/slow")) for _ in range(6)]
        receiver.wait_for(lambda: receiver.in_flight == 2, "the slow receiver's two deliveries in flight")
        quick = _submit(stub, fast.url("/fast"))
        fast.wait_for(lambda: fast.of(quick.id), "the fast receiver's delivery")
        # It came while the slow receiver still had most of its deliveries to take (2 at a time, 3 s each).
        assert len(receiver.received) <= 2
        assert receiver.in_flight <= 2
        wait_until(lambda: all(_settled(stub, j.id, State.STATE_DELIVERED)() for j in slow_jobs), "the slow ones",
                   timeout=60)
    finally:
        fast.stop()


@pytest.mark.parametrize(("url", "reason"), [
    ("https://elsewhere.example.com/hook", "WEBHOOK_URL_NOT_ALLOWED"),
    ("{base}.evil.example.com/hook", "WEBHOOK_URL_INVALID"),  # the allowed host with a suffix: a port parse error
    ("http://127.0.0.1:1/hook", "WEBHOOK_URL_NOT_ALLOWED"),  # same host, another port
    ("https://127.0.0.1:{port}/hook", "WEBHOOK_URL_NOT_ALLOWED"),  # the allowed prefix is http, not https
    ("http://user:pw@127.0.0.1:{port}/hook", "WEBHOOK_URL_INVALID"),
    ("http://127.0.0.1:{port}/hook#x", "WEBHOOK_URL_INVALID"),
    ("ftp://127.0.0.1:{port}/hook", "WEBHOOK_URL_INVALID"),
    ("", "WEBHOOK_URL_INVALID"),
    ("http://10.1.2.3/hook", "WEBHOOK_ADDRESS_NOT_ALLOWED"),  # allowed as a prefix, but a private address
    ("http://[::1]:{port}/hook", "WEBHOOK_ADDRESS_NOT_ALLOWED"),  # loopback, not in allowed_networks
    ("http://169.254.169.254/latest", "WEBHOOK_ADDRESS_NOT_ALLOWED"),  # link-local: cloud metadata
])
def test_refused_urls(make_server: Callable[..., ServerProcess], receiver: Receiver, url: str, reason: str) -> None:
    base, port = receiver.url("").rstrip("/"), receiver.port
    config = ECHO_CONFIG + webhook_config(receiver.url("/"), "http://10.1.2.3/", f"http://[::1]:{port}/",
                                          "http://169.254.169.254/")
    server = make_server(config)
    stub = _stub(server)
    with pytest.raises(grpc.RpcError) as refused:
        _submit(stub, url.format(base=base, port=port))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value)[1].reason == reason
    assert stub.List(pb.ListRequest(), timeout=10).jobs == []  # nothing stored
    assert _submit(stub, receiver.url("/hook")).id  # and the server goes on


def test_webhooks_are_refused_where_none_are_allowed(make_server: Callable[..., ServerProcess]) -> None:
    stub = _stub(make_server())
    with pytest.raises(grpc.RpcError) as refused:
        _submit(stub, "https://hooks.example.com/x")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value)[1].reason == "WEBHOOK_URL_NOT_ALLOWED"
    with pytest.raises(grpc.RpcError) as unknown:
        _submit(stub, "https://hooks.example.com/x", (7,))
    assert error_info(unknown.value)[1].reason == "INVALID_REQUEST"


def test_per_tenant_prefixes_and_secrets(make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    other_secret = "whsec_" + "c2Vjb25kLXNlY3JldC1vZi10ZW5hbnQtYg=="
    config = ECHO_CONFIG + webhook_config(receiver.url("/a/")) + (
        f'[webhooks.tenants.b]\nallowed_prefixes = ["{receiver.url("/b/")}"]\nsecret = "{other_secret}"\n'
        '[auth]\nenabled = true\ntokens = { "token-a" = "a", "token-b" = "b" }\n')
    stub = _stub(make_server(config))

    def submit(token: str, path: str) -> pb.Job:
        struct = struct_pb2.Struct()
        return stub.Submit(pb.SubmitRequest(route="echo", inputs=struct, webhook=pb.Webhook(url=receiver.url(path))),
                           metadata=(("authorization", f"Bearer {token}"),), timeout=30).job

    with pytest.raises(grpc.RpcError) as refused:
        submit("token-b", "/a/hook")  # tenant b has its own prefixes
    assert error_info(refused.value)[1].reason == "WEBHOOK_URL_NOT_ALLOWED"
    job_a, job_b = submit("token-a", "/a/hook"), submit("token-b", "/b/hook")
    receiver.wait_for(lambda: receiver.of(job_a.id) and receiver.of(job_b.id), "both deliveries")
    assert receiver.of(job_a.id)[0].verified  # signed with the [webhooks] secret
    assert not receiver.of(job_b.id)[0].verified  # tenant b's own secret, which the receiver does not hold
    from standardwebhooks.webhooks import Webhook

    hit = receiver.of(job_b.id)[0]
    assert Webhook(other_secret).verify(hit.body, hit.headers)["id"] == job_b.id


def test_the_cli_submits_with_a_webhook(make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    server = make_server(_config(receiver))
    done = cli(server.target, "submit", "--route", "echo", "--inputs", '{"delay_ms": 200}',
               "--webhook", receiver.url("/cli"), "--webhook-events", "start,completed")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["job"]
    assert job["webhook"] == {"url": receiver.url("/cli"), "events": ["WEBHOOK_EVENT_START", "WEBHOOK_EVENT_COMPLETED"]}
    receiver.wait_for(lambda: len(receiver.of(job["id"])) == 2, "start and completed")
    assert [h.job["state"] for h in receiver.of(job["id"])] == ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    bad = cli(server.target, "submit", "--route", "echo", "--inputs", "{}", "--webhook-events", "completed")
    assert bad.returncode == 2 and "--webhook-events needs --webhook" in bad.stderr
    bad = cli(server.target, "submit", "--route", "echo", "--inputs", "{}", "--webhook", receiver.url("/x"),
              "--webhook-events", "finished")
    assert bad.returncode == 2 and "unknown webhook event" in bad.stderr


def test_another_replica_carries_on_a_killed_ones_retries(
        redis_process: RedisProcess, make_server: Callable[..., ServerProcess], receiver: Receiver) -> None:
    redis_process.flush()
    config = _config(receiver, top=f'store = "{redis_process.url}"\nshutdown_grace_seconds = 0\n',
                     backoff_initial_seconds=1.0)
    a = make_server(config)
    receiver.default = Answer(500)
    job = _submit(_stub(a), receiver.url("/hook"))
    stub_a = _stub(a)
    wait_until(_settled(stub_a, job.id, State.STATE_RETRYING), "a failed attempt through A")
    a.kill()
    tried = receiver.of(job.id)
    receiver.default = Answer(200)
    b = make_server(config)
    stub_b = _stub(b)
    wait_until(_settled(stub_b, job.id, State.STATE_DELIVERED), "B's delivery", timeout=60)
    hits = receiver.of(job.id)
    assert hits[-1].answered == 200 and hits[-1].verified and {h.id for h in hits} == {tried[0].id}
