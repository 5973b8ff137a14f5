"""The fake Replicate is faithful: the official `replicate==1.0.7` client works against it, errors and all.

Two halves: the client (in its own venv, see harness/replicate_sdk.py) against the fake as a subprocess, written
as a user would write it with only ``base_url`` changed; and quick in-process checks of the wire details and the
fault knobs with aiohttp. The protocol is recorded in docs/research/replicate.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from harness.fakes.common import FakeProcess, Faults
from harness.fakes.replicate import (
    DEFAULT_MODEL,
    DEFAULT_VERSION,
    SECRET,
    FakeReplicate,
    Settings,
    parse_duration,
    parse_prefer_wait,
    sign,
)
from harness.replicate_sdk import run_sdk
from harness.webhook_receiver import Answer, Receiver

TOKEN = "r8_fake-token"
V = DEFAULT_VERSION
FAST: dict[str, Any] = {"queue_seconds": 0.05}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


# ---------------------------------------------------------------------------------------------------------------
# The fake as a subprocess, and the official client against it
# ---------------------------------------------------------------------------------------------------------------

def defaults(**changes: Any) -> dict[str, Any]:
    """Every fault and setting back to its default (FAST timing), then ``changes``: what /_control takes."""
    settings = dataclasses.asdict(Settings(**FAST))
    settings["missing_models"] = sorted(settings["missing_models"])
    return {**Faults().to_json(), **settings, "reset_stats": True, "clear_predictions": True, **changes}


@pytest.fixture(scope="module")
def fake_proc() -> Iterator[FakeProcess]:
    fake = FakeProcess("harness.fakes.replicate", "--token", TOKEN, "--settings", json.dumps(FAST))
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_proc: FakeProcess) -> FakeProcess:
    fake_proc.control(**defaults())
    return fake_proc


def sdk(fake: FakeProcess, snippet: str, token: str | None = TOKEN, **kwargs: Any) -> dict[str, Any]:
    out = run_sdk(fake.url, snippet, token=token, **kwargs)
    return out


def no_error(out: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in out, out
    return out


def test_subprocess_takes_its_command_line(fake: FakeProcess) -> None:
    config = fake.control()
    assert config["token_required"] is True and config["settings"]["queue_seconds"] == 0.05
    assert config["settings"]["webhook_secret"] == SECRET


def test_sdk_create_wait_reload_get(fake: FakeProcess) -> None:
    out = no_error(sdk(fake, r'''
p = client.predictions.create(version=args["v"], input={"steps": 3, "delay": 0.2})
out["created"] = pred(p)
time.sleep(0.3)
p.reload()
out["reloaded"] = pred(p)
p.wait()
out["waited"] = pred(p)
out["got"] = pred(client.predictions.get(p.id))
q = client.predictions.create(version="acme/llm:" + args["v"], input={"steps": 1, "delay": 0})
q.wait()
out["qualified"] = pred(q)
''', args={"v": V}))
    created, done = out["created"], out["waited"]
    assert created["status"] == "starting" and created["output"] is None and created["started_at"] is None
    assert (created["model"], created["version"]) == (DEFAULT_MODEL, V)
    pid = created["id"]
    assert created["urls"]["get"] == f"{fake.url}/v1/predictions/{pid}"
    assert created["urls"]["cancel"] == f"{fake.url}/v1/predictions/{pid}/cancel"
    assert created["urls"]["stream"] == f"{fake.url}/v1/streams/{pid}"
    assert out["reloaded"]["status"] == "processing" and len(out["reloaded"]["output"] or []) < 3
    assert done["status"] == "succeeded" and done["output"] == ["tok0", "tok1", "tok2"]
    assert done["logs"] == "step 0\nstep 1\nstep 2\n" and done["error"] is None
    assert done["metrics"]["predict_time"] >= 0.6 and done["metrics"]["total_time"] >= done["metrics"]["predict_time"]
    assert all(ISO.match(done[k]) for k in ("created_at", "started_at", "completed_at"))
    assert out["got"] == done
    assert (out["qualified"]["model"], out["qualified"]["version"], out["qualified"]["status"]) == \
        ("acme/llm", V, "succeeded")
    stats = fake.stats()
    assert stats["total_creates"] == 2 and stats["requests"]["create"] == 2
    assert set(stats["authorization"]) == {f"Bearer {TOKEN}"}


def test_sdk_models_and_deployments(fake: FakeProcess) -> None:
    out = no_error(sdk(fake, r'''
m = client.models.predictions.create(model="acme/official", input={"steps": 2, "delay": 0})
m.wait()
out["model"] = pred(m)
n = client.predictions.create(model="acme/official", input={"steps": 1})
out["model_via_predictions"] = pred(n)
d = client.deployments.predictions.create(deployment="acme/my-app", input={"steps": 1, "delay": 0})
d.wait()
out["deployment"] = pred(d)
dep = client.deployments.get("acme/my-app")
out["release"] = [dep.current_release.model, dep.current_release.version]
out["via_get"] = pred(dep.predictions.create(input={"steps": 1}))
'''))
    assert (out["model"]["model"], out["model"]["version"], out["model"]["output"]) == \
        ("acme/official", "hidden", ["tok0", "tok1"])
    assert out["model_via_predictions"]["model"] == "acme/official"
    assert (out["deployment"]["model"], out["deployment"]["version"], out["deployment"]["status"]) == \
        (DEFAULT_MODEL, V, "succeeded")
    assert out["release"] == [DEFAULT_MODEL, V] and out["via_get"]["status"] == "starting"
    requests = fake.stats()["requests"]
    assert requests["create_model"] == 2 and requests["create_deployment"] == 2 and requests["deployment"] == 1


def test_sdk_run_holds_the_request_with_prefer_wait(fake: FakeProcess) -> None:
    out = no_error(sdk(fake, r'''
out["run"] = client.run("acme/official", input={"steps": 3, "delay": 0.02})
out["run_version"] = list(client.run("acme/llm:" + args["v"], input={"steps": 2, "delay": 0.02}))
out["run_wait2"] = client.run("acme/official", input={"steps": 1}, wait=2)
out["audio"] = client.run("acme/whisper", input={"audio": "https://example.com/a.wav", "steps": 1, "delay": 0})
try:
    client.run("acme/official", input={"steps": 1, "delay": 0, "fail": "CUDA out of memory"})
except ModelError as exc:
    out["model_error"] = {"message": str(exc), "status": exc.prediction.status, "output": exc.prediction.output}
''', args={"v": V}))
    assert out["run"] == ["tok0", "tok1", "tok2"] and out["run_version"] == ["tok0", "tok1"]
    assert out["run_wait2"] == ["tok0"]
    assert out["audio"] == {"text": " She sells seashells by the seashore."}
    assert out["model_error"] == {"message": "CUDA out of memory", "status": "failed", "output": ["tok0"]}
    stats = fake.stats()
    assert stats["counts"]["prefer:wait"] == 4 and stats["counts"]["prefer:wait=2"] == 1
    assert stats["requests"].get("get", 0) == 0  # answered in the held request: no polling
    assert stats["requests"]["version"] == 1  # run("owner/name:version") reads the version's output schema


def test_sdk_run_polls_when_the_wait_runs_out(fake: FakeProcess) -> None:
    """A held request that ends while the prediction is still "starting" makes run() poll to the end. One that
    ends while it is "processing" is taken as final by replicate 1.0.7 (run.py): the output is cut short
    (replicate-python#385). A gateway must not do the same: poll until the status is terminal."""
    fake.control(max_wait_seconds=0.3, queue_seconds=0.6)
    starting = no_error(sdk(fake, 'out["run"] = client.run("acme/official", input={"steps": 2, "delay": 0.05})'))
    assert starting["run"] == ["tok0", "tok1"] and fake.stats()["requests"]["get"] >= 1
    fake.control(queue_seconds=0.0)
    cut = no_error(sdk(fake, 'out["run"] = client.run("acme/official", input={"steps": 8, "delay": 0.1})'))
    assert len(cut["run"]) < 8


def test_sdk_cancel(fake: FakeProcess) -> None:
    out = no_error(sdk(fake, r'''
p = client.predictions.create(version=args["v"], input={"steps": 100, "delay": 0.05})
time.sleep(0.3)
p.cancel()
out["canceled"] = pred(p)
p.wait()  # returns at once: canceled is terminal
out["after"] = pred(client.predictions.get(p.id))
q = client.run("acme/official", input={"steps": 1, "delay": 0})
done = client.models.predictions.create(model="acme/official", input={"steps": 1, "delay": 0}, wait=5)
out["cancel_finished"] = pred(client.predictions.cancel(done.id))
''', args={"v": V}))
    canceled = out["canceled"]
    assert canceled["status"] == "canceled" and canceled["completed_at"] and 0 < len(canceled["output"]) < 100
    assert out["after"]["status"] == "canceled" and out["after"]["output"] == canceled["output"]
    assert out["cancel_finished"]["status"] == "succeeded"  # canceling a finished one leaves it as it is


def test_sdk_list_paginates(fake: FakeProcess) -> None:
    fake.control(page_size=2)
    out = no_error(sdk(fake, r'''
ids = [client.predictions.create(version=args["v"], input={"steps": 0}).id for _ in range(3)]
out["ids"] = ids
first = client.predictions.list()
out["first"] = [[p.id for p in first], first.next, first.previous]
second = client.predictions.list(first.next)
out["second"] = [[p.id for p in second], second.next, second.previous]
out["all"] = [p.id for page in replicate.paginate(client.predictions.list) for p in page]
''', args={"v": V}))
    newest_first = out["ids"][::-1]
    assert out["first"][0] == newest_first[:2] and out["first"][1].startswith(f"{fake.url}/v1/predictions?cursor=")
    assert out["first"][2] is None
    assert out["second"] == [newest_first[2:], None, f"{fake.url}/v1/predictions?cursor=MA"]
    assert out["all"] == newest_first


def test_sdk_streams_over_sse(fake: FakeProcess) -> None:
    out = no_error(sdk(fake, r'''
events = [event(e) for e in client.stream("acme/official", input={"steps": 3, "delay": 0.05})]
out["events"] = events
p = client.predictions.create(version=args["v"], input={"steps": 2, "delay": 0.05}, stream=True)
out["text"] = "".join(str(e) for e in p.stream())
f = client.predictions.create(version=args["v"], input={"steps": 1, "delay": 0, "fail": "boom"})
try:
    for e in f.stream():
        pass
except RuntimeError as exc:
    out["stream_error"] = str(exc)
''', args={"v": V}))
    events = out["events"]
    assert [e["event"] for e in events] == ["logs", "output"] * 3 + ["done"]
    assert [e["data"] for e in events if e["event"] == "output"] == ["tok0", "tok1", "tok2"]
    assert events[-1]["data"] == "{}" and len({e["id"] for e in events}) == len(events)
    assert out["text"] == "tok0tok1"  # str(event) is the output chunk, "" for the others
    assert json.loads(out["stream_error"]) == {"detail": "boom"}  # the client raises on an error event


def test_sdk_stream_cut_ends_the_iteration_without_done(fake: FakeProcess) -> None:
    fake.control(stream_cut_after=3)
    out = no_error(sdk(fake, r'''
out["events"] = [event(e)["event"] for e in client.stream("acme/official", input={"steps": 3, "delay": 0.01})]
'''))
    assert out["events"] == ["logs", "output", "logs"]  # replicate 1.0.7 neither notices nor reconnects
    assert fake.stats()["counts"]["stream_cuts"] == 1


def test_sdk_errors(fake: FakeProcess) -> None:
    snippet = r'''
for name, call in [("get", lambda: client.predictions.get("nope")),
                   ("version", lambda: client.predictions.create(version="not-a-version", input={})),
                   ("model_version", lambda: client.predictions.create(version="acme/x:abc", input={})),
                   ("missing", lambda: client.models.predictions.create(model="acme/gone", input={})),
                   ("create", lambda: client.predictions.create(version=args["v"], input={"steps": 0}))]:
    try:
        out[name] = pred(call())
    except ReplicateError as exc:
        out[name] = err(exc)
'''
    fake.control(missing_models=["acme/gone"])
    out = no_error(sdk(fake, snippet, args={"v": V}))
    assert out["get"]["status"] == 404 and out["get"]["type"] == "ReplicateError"
    assert out["version"]["status"] == 422 and out["version"]["detail"] == "Invalid version or not permitted"
    assert out["model_version"]["status"] == 422 and out["missing"]["status"] == 404
    assert out["create"]["status"] == "starting"

    wrong = no_error(sdk(fake, snippet, token="wrong", args={"v": V}))
    assert wrong["create"]["status"] == 401 and wrong["create"]["title"] == "Unauthenticated"
    assert "ReplicateError Details:" in wrong["create"]["message"]
    fake.control(bad_token=True)
    assert no_error(sdk(fake, snippet, args={"v": V}))["get"]["status"] == 401


def test_sdk_retries_gets_on_503_and_429_but_not_posts(fake: FakeProcess) -> None:
    """RetryTransport (client.py) retries GET/PUT/DELETE on 429, 503 and 504, never a POST."""
    snippet = r'''
p = client.predictions.create(version=args["v"], input={"steps": 0})
try:
    out["got"] = client.predictions.get(p.id).status
except ReplicateError as exc:
    out["got"] = err(exc)
try:
    client.predictions.create(version=args["v"], input={"steps": 0})
except ReplicateError as exc:
    out["create"] = err(exc)
'''
    fake.control(fail_rate=1.0, fail_statuses=[503], max_faults=2, targets=["get"])
    out = sdk(fake, snippet, args={"v": V})
    assert out["got"] in ("starting", "processing", "succeeded") and "create" not in out
    assert fake.stats()["requests"]["get"] == 3
    fake.control(**defaults(throttle_rate=1.0, retry_after=0, max_faults=1, targets=["get"]))
    out = sdk(fake, snippet, args={"v": V})
    assert out["got"] in ("starting", "processing", "succeeded") and fake.stats()["requests"]["get"] == 2
    fake.control(**defaults(fail_rate=1.0, fail_statuses=[503], max_faults=1, targets=["create"]))
    out = sdk(fake, snippet, args={"v": V})
    assert out["error"]["status"] == 503 and out["error"]["detail"] == "injected 503 on create"  # the first POST
    assert fake.stats()["requests"]["create"] == 1


def test_sdk_cannot_parse_an_aborted_prediction(fake: FakeProcess) -> None:
    """Replicate's API has an `aborted` status (a Cancel-After deadline reached before the prediction started);
    replicate 1.0.7's Prediction model (prediction.py: status Literal[...]) lacks it and fails to parse it."""
    fake.control(queue_seconds=5.0, min_cancel_after_seconds=0.0)
    request = urllib.request.Request(f"{fake.url}/v1/predictions", method="POST", data=json.dumps(
        {"version": V, "input": {"steps": 1}}).encode(), headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Cancel-After": "200ms"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        created = json.load(resp)
    time.sleep(0.4)
    out = sdk(fake, 'out["got"] = pred(client.predictions.get(args))', args=created["id"])
    assert out["error"]["type"] == "ValidationError" and "aborted" in out["error"]["message"]
    assert fake.stats()["predictions"][created["id"]] == "aborted"


def test_sdk_validates_the_fakes_signed_webhooks(fake: FakeProcess) -> None:
    receiver = Receiver(SECRET).start()  # checks every signature with the standardwebhooks library as well
    try:
        fake.control(webhook_interval=0.0)
        out = no_error(sdk(fake, r'''
p = client.predictions.create(version=args["v"], input={"steps": 2, "delay": 0.05}, webhook=args["hook"],
                              webhook_events_filter=["start", "output", "completed"])
p.wait()
out["id"] = p.id
''', args={"v": V, "hook": receiver.url()}))
        receiver.wait_for(lambda: any(r.job["status"] == "succeeded" for r in receiver.of(out["id"])), "the terminal hook")
        hooks = receiver.of(out["id"])
        assert all(r.verified for r in hooks) and [r.job["status"] for r in hooks][-1] == "succeeded"
        assert hooks[0].job["status"] == "processing" and hooks[-1].job["output"] == ["tok0", "tok1"]
        deliveries = [{"headers": r.headers, "body": r.body.decode()} for r in hooks]
        checked = no_error(sdk(fake, r'''
secret = client.webhooks.default.secret()
out["key"] = secret.key
out["valid"] = []
for d in args:
    out["valid"].append(Webhooks.validate(headers=d["headers"], body=d["body"], secret=secret, tolerance=300))
try:
    Webhooks.validate(headers=args[0]["headers"], body=args[0]["body"].replace("processing", "succeeded"),
                      secret=secret)
except Exception as exc:
    out["tampered"] = err(exc)
''', args=deliveries))
        assert checked["key"] == SECRET and checked["valid"] == [None] * len(deliveries)  # validate() returns None
        assert checked["tampered"]["type"] == "InvalidSignatureError"
    finally:
        receiver.stop()


# ---------------------------------------------------------------------------------------------------------------
# In process, with aiohttp
# ---------------------------------------------------------------------------------------------------------------

AUTH = {"Authorization": "Bearer t"}


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeReplicate, aiohttp.ClientSession]]:
    async with FakeReplicate(token="t", settings=Settings(queue_seconds=0.05, webhook_interval=0.0,
                                                          min_cancel_after_seconds=0.0)) as fake, \
            aiohttp.ClientSession(headers=AUTH) as session:
        yield fake, session


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def create(fake: FakeReplicate, session: aiohttp.ClientSession, inputs: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    status, prediction = await call(session, "POST", f"{fake.url}/v1/predictions",
                                    {"version": V, "input": inputs or {}, **body}, headers)
    assert status in (201, 202), prediction
    return dict(prediction)


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def sse(session: aiohttp.ClientSession, url: str, last_id: str | None = None) -> list[dict[str, str]]:
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        text = await resp.text()
    events = []
    for block in filter(None, text.split("\n\n")):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
        events.append(fields)
    return events


async def test_lifecycle_and_urls_on_the_callers_origin(served: Any) -> None:
    fake, session = served
    p = await create(fake, session, {"steps": 2, "delay": 0.2})
    assert p["status"] == "starting" and p["logs"] == "" and p["metrics"] == {} and p["data_removed"] is False
    await asyncio.sleep(0.15)
    _, mid = await call(session, "GET", p["urls"]["get"])
    assert mid["status"] == "processing" and mid["started_at"] and mid["completed_at"] is None
    host = f"localhost:{fake.port}"  # another name for the same server: the urls follow the Host asked for
    _, other = await call(session, "GET", p["urls"]["get"], headers={"Host": host})
    assert other["urls"]["get"] == f"http://{host}/v1/predictions/{p['id']}"
    assert other["urls"]["web"] == f"https://replicate.com/p/{p['id']}"
    await asyncio.sleep(0.45)
    _, done = await call(session, "GET", p["urls"]["get"])
    assert done["status"] == "succeeded" and done["output"] == ["tok0", "tok1"] and set(done["metrics"]) == {
        "predict_time", "total_time"}
    assert fake.stats.creates == {p["id"]: 1}


async def test_prefer_wait(served: Any) -> None:
    fake, session = served
    started = time.monotonic()
    done = await create(fake, session, {"steps": 2, "delay": 0.05}, {"Prefer": "wait"})
    assert done["status"] == "succeeded" and done["output"] == ["tok0", "tok1"]
    fake.own.max_wait_seconds = 0.2  # caps Prefer: wait=N
    status, partial = await call(session, "POST", f"{fake.url}/v1/predictions",
                                 {"version": V, "input": {"steps": 5, "delay": 0.1}}, {"Prefer": "wait=1"})
    assert status == 202 and partial["status"] == "processing" and time.monotonic() - started < 1.0
    fake.own.wait_timeout_status = "starting"  # what Replicate's docs say a timed-out wait shows
    _, shown = await call(session, "POST", f"{fake.url}/v1/predictions", {"version": V, "input": {"steps": 5}},
                          {"Prefer": "wait=1"})
    assert shown["status"] == "starting"
    assert parse_prefer_wait("wait") == 60 and parse_prefer_wait("wait=5") == 5 and parse_prefer_wait("wait=600") == 60
    assert parse_prefer_wait("respond-async, wait=3") == 3 and parse_prefer_wait("return=minimal") is None


async def test_cancel_after_cancels_or_aborts(served: Any) -> None:
    fake, session = served
    running = await create(fake, session, {"steps": 50, "delay": 0.02}, {"Cancel-After": "300ms"})
    assert running["deadline"] and ISO.match(running["deadline"])
    fake.own.queue_seconds = 5.0
    queued = await create(fake, session, {"steps": 1}, {"Cancel-After": "0.2s"})
    await asyncio.sleep(0.45)
    _, canceled = await call(session, "GET", running["urls"]["get"])
    assert canceled["status"] == "canceled" and 0 < len(canceled["output"]) < 50
    _, aborted = await call(session, "GET", queued["urls"]["get"])
    assert aborted["status"] == "aborted" and aborted["started_at"] is None and "predict_time" not in aborted["metrics"]
    for value in ("soon", "5x", ""):
        status, body = await call(session, "POST", f"{fake.url}/v1/predictions", {"version": V, "input": {}},
                                  {"Cancel-After": value})
        assert status == 422 and "Cancel-After" in body["detail"]
    fake.own.min_cancel_after_seconds = 5.0  # Replicate's documented minimum
    status, _ = await call(session, "POST", f"{fake.url}/v1/predictions", {"version": V, "input": {}},
                           {"Cancel-After": "4s"})
    assert status == 422
    assert parse_duration("1h30m45s") == 5445 and parse_duration("90") == 90 and parse_duration("500ms") == 0.5


async def test_cancel_and_unknown_ids(served: Any) -> None:
    fake, session = served
    p = await create(fake, session, {"steps": 0})
    await asyncio.sleep(0.1)
    status, body = await call(session, "POST", p["urls"]["cancel"])
    assert status == 200 and body["status"] == "succeeded"
    p = await create(fake, session, {"steps": 10})
    status, body = await call(session, "POST", p["urls"]["cancel"])
    assert status == 200 and body["status"] == "canceled" and body["started_at"] is None
    for method, path in (("GET", "/v1/predictions/nope"), ("POST", "/v1/predictions/nope/cancel"),
                         ("GET", "/v1/streams/nope")):
        status, body = await call(session, method, f"{fake.url}{path}")
        assert status == 404 and body["status"] == 404 and body["title"] == "Not found"


async def test_stream_reconnects_after_cuts(served: Any) -> None:
    fake, session = served
    p = await create(fake, session, {"steps": 3, "delay": 0.02})
    fake.faults.stream_cut_after = 2
    seen: list[dict[str, str]] = []
    for _ in range(10):
        got = await sse(session, p["urls"]["stream"], seen[-1]["id"] if seen else None)
        assert len(got) <= 2
        seen += got
        if got and got[-1]["event"] == "done":
            break
    assert [e["event"] for e in seen] == ["logs", "output"] * 3 + ["done"]
    assert [e["data"] for e in seen if e["event"] == "output"] == ["tok0", "tok1", "tok2"]
    assert fake.counts["stream_resumes"] == 3 and fake.counts["stream_cuts"] == 3
    fake.faults.stream_cut_after = None
    async with aiohttp.ClientSession() as anonymous:  # the stream URL needs no token
        replay = await sse(anonymous, p["urls"]["stream"])
    assert replay == seen


async def test_stream_ends_of_failed_canceled_audio(served: Any) -> None:
    fake, session = served
    failed = await create(fake, session, {"steps": 1, "delay": 0, "fail": "line one\nline two"})
    events = await sse(session, failed["urls"]["stream"])
    assert [e["event"] for e in events] == ["logs", "output", "error", "done"]
    assert json.loads(events[2]["data"]) == {"detail": "line one\nline two"}
    assert json.loads(events[3]["data"]) == {"reason": "error"}
    canceled = await create(fake, session, {"steps": 100, "delay": 0.02})
    task = asyncio.create_task(sse(session, canceled["urls"]["stream"]))
    await asyncio.sleep(0.15)
    await call(session, "POST", canceled["urls"]["cancel"])
    events = await task
    assert events[-1] == {"event": "done", "id": events[-1]["id"], "data": '{"reason": "canceled"}'}
    audio = await create(fake, session, {"audio": "x", "steps": 1, "delay": 0})
    events = await sse(session, audio["urls"]["stream"])
    assert [e["event"] for e in events] == ["logs", "output", "done"]
    assert json.loads(events[1]["data"]) == {"text": " She sells seashells by the seashore."}
    fake.own.streaming = False
    assert "stream" not in (await create(fake, session))["urls"]


async def test_create_validation(served: Any) -> None:
    fake, session = served
    url = f"{fake.url}/v1/predictions"
    for body, detail in [
        ({"version": V}, "input is required"),
        ({"version": V, "input": [1]}, "Expected: object"),
        ({"version": V, "input": {}, "prompt": "x"}, "Additional property prompt"),
        ({"version": V, "input": {}, "webhook_events_filter": ["done"]}, "webhook_events_filter"),
        ({"version": V, "input": {}, "webhook": "ftp://x"}, "webhook"),
        ({"input": {}}, "version is required"),
        ({"version": V, "input": {"steps": "many"}}, "- input:"),
    ]:
        status, answer = await call(session, "POST", url, body)
        assert status == 422 and detail in answer["detail"], (body, answer)
    status, _ = await call(session, "POST", f"{fake.url}/v1/models/a/b/predictions", {"version": V, "input": {}})
    assert status == 422
    async with session.post(url, data=b"{nope", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and resp.headers["Content-Type"].startswith("application/problem+json")
    fake.own.missing_models = frozenset({"a/gone"})
    for path in ("/v1/models/a/gone/predictions", "/v1/deployments/a/gone/predictions"):
        assert (await call(session, "POST", f"{fake.url}{path}", {"input": {}}))[0] == 404
    assert (await call(session, "POST", url, {"version": "a/gone", "input": {}}))[0] == 404
    assert not fake.stats.creates


async def test_faults_auth_control_and_stats(served: Any) -> None:
    fake, session = served
    async with aiohttp.ClientSession() as anonymous:
        status, body = await call(anonymous, "POST", f"{fake.url}/v1/predictions", {"version": V, "input": {}})
        assert status == 401 and body == {"title": "Unauthenticated", "detail": body["detail"], "status": 401}
        status, config = await call(anonymous, "POST", f"{fake.url}/_control",
                                    {"fail_rate": 1.0, "fail_statuses": [502], "targets": ["create"]})
        assert status == 200 and config["faults"]["targets"] == ["create"]
    status, body = await call(session, "POST", f"{fake.url}/v1/predictions", {"version": V, "input": {}})
    assert status == 502 and body["title"] == "Bad Gateway" and body["status"] == 502
    assert (await call(session, "GET", f"{fake.url}/v1/predictions"))[0] == 200  # another route: spared
    fake.configure(fail_rate=0.0, throttle_rate=1.0, retry_after=3, targets=["get"])
    p = await create(fake, session)
    async with session.get(p["urls"]["get"]) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "3"
        assert (await resp.json(content_type=None))["title"] == "Request was throttled"
    status, stats = await call(session, "GET", f"{fake.url}/_stats")
    assert stats["faults"] == {"error": 1, "throttle": 1} and stats["predictions"] == {p["id"]: "starting"}
    assert (await call(session, "POST", f"{fake.url}/_control", {"no_such_knob": 1}))[0] == 400
    status, config = await call(session, "POST", f"{fake.url}/_control", {"reset_stats": True, "page_size": 7})
    assert config["settings"]["page_size"] == 7 and fake.stats.creates == {} and fake.counts == {}


async def test_secret_version_and_deployment_routes(served: Any) -> None:
    fake, session = served
    assert await call(session, "GET", f"{fake.url}/v1/webhooks/default/secret") == (200, {"key": SECRET})
    status, version = await call(session, "GET", f"{fake.url}/v1/models/a/b/versions/{V}")
    assert status == 200 and version["openapi_schema"]["components"]["schemas"]["Output"]["x-cog-array-type"] == "iterator"
    assert (await call(session, "GET", f"{fake.url}/v1/models/a/b/versions/short"))[0] == 404
    status, deployment = await call(session, "GET", f"{fake.url}/v1/deployments/a/app")
    assert deployment["current_release"]["version"] == V


# -- webhooks --

@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hooks = Receiver(SECRET).start()
    yield hooks
    hooks.stop()


def statuses(hooks: list[Any]) -> list[tuple[str, int]]:
    return [(r.job["status"], len(r.job["output"] or [])) for r in hooks]


async def test_webhooks_signed_filtered_and_complete(served: Any, receiver: Receiver) -> None:
    fake, session = served
    p = await create(fake, session, {"steps": 2, "delay": 0.05}, webhook=receiver.url("/hook/a?x=1"))
    await until(lambda: any(r.job["status"] == "succeeded" for r in receiver.of(p["id"])), "the terminal hook")
    await asyncio.sleep(0.05)
    hooks = receiver.of(p["id"])
    assert all(r.verified and r.path == "/hook/a?x=1" for r in hooks)
    assert statuses(hooks) == [("processing", 0), ("processing", 0), ("processing", 1), ("processing", 1),
                               ("processing", 2), ("succeeded", 2)]  # start, then logs/output per step, completed
    assert hooks[-1].job == (await call(session, "GET", p["urls"]["get"]))[1]  # the body is what GET answers
    assert len({r.id for r in hooks}) == len(hooks) and all(r.id.startswith("msg_") for r in hooks)
    assert int(hooks[0].headers["webhook-timestamp"]) == pytest.approx(time.time(), abs=5)
    assert fake.counts["webhook_delivered"] == 6 and fake.counts["webhook_delivered:completed"] == 1
    only = await create(fake, session, {"steps": 3, "delay": 0.01}, webhook=receiver.url(),
                        webhook_events_filter=["completed"])
    await until(lambda: receiver.of(only["id"]), "the completed hook")
    await asyncio.sleep(0.1)
    assert statuses(receiver.of(only["id"])) == [("succeeded", 3)]


async def test_webhooks_are_throttled(served: Any, receiver: Receiver) -> None:
    fake, session = served
    fake.own.webhook_interval = 0.3
    p = await create(fake, session, {"steps": 12, "delay": 0.05}, webhook=receiver.url())
    await until(lambda: any(r.job["status"] == "succeeded" for r in receiver.of(p["id"])), "the terminal hook")
    hooks = receiver.of(p["id"])
    times = [r.time for r in hooks if r.job["status"] == "processing"][1:]  # the start hook is not throttled
    assert 2 <= len(times) <= 4 and all(b - a >= 0.25 for a, b in itertools.pairwise(times))
    assert hooks[-1].job["output"] == [f"tok{i}" for i in range(12)] and fake.counts["webhook_throttled"] > 10


async def test_terminal_webhook_is_retried(served: Any, receiver: Receiver) -> None:
    fake, session = served
    fake.own.webhook_backoff = 0.05
    receiver.script = [Answer(status=500), Answer(drop=True)]
    p = await create(fake, session, {"steps": 0}, webhook=receiver.url(), webhook_events_filter=["completed"])
    await until(lambda: any(r.answered == 200 for r in receiver.of(p["id"])), "a delivered terminal hook")
    hooks = receiver.of(p["id"])
    assert [r.answered for r in hooks] == [500, 0, 200] and len({r.id for r in hooks}) == 1  # one message, 3 tries
    assert fake.counts["webhook_failed"] == 2
    fake.own.webhook_terminal_fail_first = 2
    q = await create(fake, session, {"steps": 0}, webhook=receiver.url(), webhook_events_filter=["completed"])
    await until(lambda: receiver.of(q["id"]), "the terminal hook")
    assert len(receiver.of(q["id"])) == 1 and fake.counts["webhook_injected_failures"] == 2
    fake.own.webhook_terminal_fail_first, fake.own.webhook_retries = 5, 2  # more failures than tries: it never comes
    r = await create(fake, session, {"steps": 0}, webhook=receiver.url(), webhook_events_filter=["completed"])
    await until(lambda: fake.counts["webhook_gave_up"] == 1, "giving up")
    assert receiver.of(r["id"]) == []


async def test_webhook_repeat_drop_and_shuffle(served: Any, receiver: Receiver) -> None:
    fake, session = served
    fake.own.webhook_repeat_rate = 1.0
    p = await create(fake, session, {"steps": 1, "delay": 0}, webhook=receiver.url(),
                     webhook_events_filter=["start", "completed"])
    await until(lambda: len(receiver.of(p["id"])) == 4, "four hooks")
    hooks = receiver.of(p["id"])
    assert [r.job["status"] for r in hooks] == ["processing", "processing", "succeeded", "succeeded"]
    assert hooks[0].id == hooks[1].id and hooks[2].id == hooks[3].id and hooks[0].body == hooks[1].body

    fake.own.webhook_repeat_rate, fake.own.webhook_drop_rate = 0.0, 1.0
    q = await create(fake, session, {"steps": 3, "delay": 0}, webhook=receiver.url())
    await until(lambda: receiver.of(q["id"]), "the terminal hook")
    await asyncio.sleep(0.1)
    assert statuses(receiver.of(q["id"])) == [("succeeded", 3)] and fake.counts["webhook_dropped"] == 7

    fake.own.webhook_drop_rate, fake.own.webhook_shuffle, fake.own.webhook_shuffle_seconds = 0.0, True, 0.4
    fake.configure(seed=3)
    s = await create(fake, session, {"steps": 8, "delay": 0.01}, webhook=receiver.url(),
                     webhook_events_filter=["output", "completed"])
    await until(lambda: len(receiver.of(s["id"])) == 9, "nine hooks")
    lengths = [n for status, n in statuses(receiver.of(s["id"])) if status == "processing"]
    assert sorted(lengths) == list(range(1, 9)) and lengths != sorted(lengths)  # all there, out of order


async def test_signature_matches_standard_webhooks() -> None:
    from standardwebhooks.webhooks import Webhook

    body = b'{"id": "x"}'
    header = sign(SECRET, "msg_1", "1700000000", body)
    assert header.startswith("v1,")
    expected = Webhook(SECRET).sign("msg_1", datetime_of(1700000000), body.decode())
    assert header == expected


def datetime_of(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)
