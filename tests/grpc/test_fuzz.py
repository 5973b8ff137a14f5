"""Fuzzing the request surface against real gateway processes: every answer is OK or a documented error
with details, and the generators' verdicts are checked both ways.

Hypothesis builds SubmitRequests (valid, invalid and unknown routes; odd labels and request ids; JSON
inputs with the echo keys given wrong types and ranges, NaN and infinities; transcriptions with random
bytes), raw random bytes, audio for a whisper route (the real fixtures, mutated and random), Watch and
List requests, and HTTP facade bodies. Whatever it sends, the server answers OK or a documented refusal
(INVALID_ARGUMENT / NOT_FOUND / ALREADY_EXISTS / RESOURCE_EXHAUSTED / OUT_OF_RANGE), always with a
google.rpc.Status holding an ErrorInfo; never UNKNOWN or INTERNAL. A request the generator knows to be
valid must be accepted, and one it knows to be invalid must be refused.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway_client import Client, Output
from harness import FIXTURES, ServerProcess

SUBMIT = "/inferencegateway.gateway.v1.GatewayService/Submit"
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies --------------------------------------------------------------------------------------

ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from([
    "", " ", "\n", "\t", "\x00", "\x7f", "\u200b", "é", "日本", "🙂", "a b", "-", "_", ".", "/", "a" * 300,
])
VALID_ROUTE = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
ROUTES = st.one_of(
    st.just("echo"), st.just("echo"), st.just("echo"),  # mostly the real route, so the inputs get checked
    st.sampled_from(["whisper", "nope", "Echo", "ECHO", "echo ", " echo", "ec ho", "", "a" * 64, "-x", "é"]),
    VALID_ROUTE,
    ODD_TEXT,
)
VALID_LABEL_KEY = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}", fullmatch=True)
# str.isprintable(): no control or separator characters, except the ASCII space.
VALID_LABEL_VALUE = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "),
                            max_size=40)
VALID_LABELS = st.dictionaries(VALID_LABEL_KEY, VALID_LABEL_VALUE, max_size=5)
ODD_LABELS = st.one_of(
    st.dictionaries(ODD_TEXT | VALID_LABEL_KEY, ODD_TEXT | VALID_LABEL_VALUE, max_size=6),
    st.dictionaries(VALID_LABEL_KEY, st.text(min_size=250, max_size=400), min_size=1, max_size=2),
    st.sets(st.integers(0, 999), min_size=65, max_size=70).map(lambda keys: {f"k{k}": "v" for k in keys}),
)
VALID_REQUEST_ID = st.just("") | st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True) | st.sampled_from(["r1", "r2"])
ODD_REQUEST_ID = ODD_TEXT | st.text(st.characters(codec="ascii"), min_size=120, max_size=140)

JSON_LEAF = (st.none() | st.booleans() | st.integers(-(2**60), 2**60)
             | st.floats() | st.text(max_size=20))  # NaN and infinities too: refused, as JSON has none
JSON = st.recursive(
    JSON_LEAF,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
WRONG_TYPE = st.one_of(st.text(max_size=10), st.booleans(), st.lists(JSON_LEAF, max_size=2),
                       st.dictionaries(st.text(max_size=3), JSON_LEAF, max_size=2))
# Valid values keep jobs short: the server runs every job it accepts.
DELAY_OK = st.integers(0, 50) | st.floats(0, 50)
DELAY_BAD = st.one_of(st.integers(max_value=-1), st.integers(3_600_001, 2**62),
                      st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                      st.floats(min_value=3_600_000.5, allow_nan=False, allow_infinity=False), WRONG_TYPE)
STEPS_OK = st.integers(0, 4) | st.sampled_from([0.0, 1.0, 3.0])
STEPS_BAD = st.one_of(st.integers(max_value=-1), st.integers(10_001, 2**62), st.sampled_from([0.5, 2.25, 9999.9]),
                      WRONG_TYPE)
FAIL_OK = st.text(min_size=1, max_size=50)
FAIL_BAD = st.one_of(st.just(""), st.text(min_size=1025, max_size=1100), st.integers(), st.booleans(),
                     st.lists(st.text(max_size=3), max_size=2))


@st.composite
def echo_key(draw: st.DrawFn, ok: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> tuple[str, Any, bool]:
    """('absent' | 'null' | 'ok' | 'bad', value, valid)."""
    kind = draw(st.sampled_from(["absent", "absent", "null", "ok", "ok", "bad"]))
    if kind == "absent":
        return kind, None, True
    if kind == "null":
        return kind, None, True
    if kind == "ok":
        return kind, draw(ok), True
    return kind, draw(bad), False


@st.composite
def submit_requests(draw: st.DrawFn) -> tuple[pb.SubmitRequest, str]:
    """A SubmitRequest, and the verdict for the echo-only server: "valid" (must be accepted),
    "invalid" (must be refused) or "unknown" (odd labels or request ids: either, with details)."""
    valid = True
    invalid = False
    route = draw(ROUTES)
    valid &= route == "echo"
    invalid |= route != "echo"  # no such route, or not a route name at all
    if draw(st.booleans()):
        labels = draw(VALID_LABELS)
    else:
        labels = draw(ODD_LABELS)
        valid = False  # maybe fine, maybe not: no claim
    if draw(st.booleans()):
        request_id = draw(VALID_REQUEST_ID)
    else:
        request_id = draw(ODD_REQUEST_ID)
        valid = False
    request = pb.SubmitRequest(route=route, labels=labels, request_id=request_id)

    kind = draw(st.sampled_from(["inputs", "inputs", "inputs", "transcription", "none"]))
    if kind == "inputs":
        inputs = draw(st.dictionaries(st.text(max_size=12), JSON, max_size=5))
        for key in ("delay_ms", "steps", "fail_with"):
            inputs.pop(key, None)
        for key, ok, bad in (("delay_ms", DELAY_OK, DELAY_BAD), ("steps", STEPS_OK, STEPS_BAD),
                             ("fail_with", FAIL_OK, FAIL_BAD)):
            state, value, key_valid = draw(echo_key(ok, bad))
            if state != "absent":
                inputs[key] = value
            valid &= key_valid
            invalid |= not key_valid
        request.inputs.SetInParent()  # an empty Struct is still a chosen input
        request.inputs.update(inputs)
        # Struct numbers are doubles: an integer beyond 2**53 may round onto a different value.
        for key in ("delay_ms", "steps"):
            value = inputs.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
                valid = False
        if _non_finite(request.inputs):
            valid, invalid = False, True
    elif kind == "transcription":
        transcription = pb.TranscriptionRequest(
            audio=draw(st.binary(max_size=2048)),
            language_code=draw(ODD_TEXT),
            task=draw(st.integers(0, 5)),
            beam_size=draw(st.integers(-(2**31), 2**31 - 1)),
            word_timestamps=draw(st.booleans()),
        )
        if draw(st.booleans()):
            transcription.vad_filter = draw(st.booleans())
        request.transcription.CopyFrom(transcription)
        valid, invalid = False, True  # the echo route takes JSON inputs
    else:
        valid, invalid = False, True  # no input at all
    return request, "valid" if valid else "invalid" if invalid else "unknown"


# -- checks ------------------------------------------------------------------------------------------

def details(error: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def check_error(error: grpc.RpcError, allowed: set[grpc.StatusCode] = ALLOWED,
                not_found: frozenset[str] = frozenset({"ROUTE_NOT_FOUND"})) -> tuple[str, list[Any]]:
    """Checks an error's code and details; answers (reason, field violations)."""
    code = error.code()
    assert code in allowed, f"{code}: {error.details()}"
    status = details(error)
    assert status is not None, f"{code} without grpc-status-details-bin: {error.details()}"
    assert status.code == code.value[0]
    infos, violations = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(bad.field_violations)
    assert len(infos) == 1, status
    reason = infos[0].reason
    assert reason and infos[0].domain == "gateway.inferencegateway.dev"
    if code is grpc.StatusCode.NOT_FOUND:
        assert reason in not_found, reason
    if code is grpc.StatusCode.INVALID_ARGUMENT and reason != "MALFORMED_REQUEST":
        assert violations, f"INVALID_ARGUMENT {reason} without field violations"
        assert all(v.field and v.description for v in violations)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert reason in {"QUEUE_FULL", "QUEUE_BYTES_FULL", "REQUEST_TOO_LARGE", "SUBMIT_BYTES_IN_FLIGHT"}
    return reason, violations


@pytest.fixture(scope="module")
def channel(echo_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(echo_server.target) as ch:
        yield ch


@FUZZ
@given(case=submit_requests())
def test_fuzz_submit(channel: grpc.Channel, case: tuple[pb.SubmitRequest, str]) -> None:
    request, verdict = case
    event(verdict)
    stub = pb_grpc.GatewayServiceStub(channel)
    try:
        response = stub.Submit(request, timeout=10)
    except grpc.RpcError as error:
        reason, _ = check_error(error)
        event(f"{error.code().name} {reason}")
        if verdict == "valid":  # a valid request may only clash with an earlier one's request_id
            assert error.code() is grpc.StatusCode.ALREADY_EXISTS and reason == "REQUEST_ID_CONFLICT", (
                f"a valid request was refused: {error.code()} {reason}: {error.details()}")
        if verdict == "invalid":
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.details()
        return
    assert verdict != "invalid", f"an invalid request was accepted: {request}"
    event("OK existing" if response.existing else "OK")
    job = response.job
    assert len(job.id) == 32 and job.route == request.route
    assert job.labels == request.labels and job.request_id == request.request_id
    if not response.existing:
        assert job.state == pb.JOB_STATE_QUEUED and job.revision == 1


TEMPLATES = [
    pb.SubmitRequest(route="echo", inputs={"note": "hi", "ok": True}, labels={"team": "a"}).SerializeToString(),
    pb.SubmitRequest(route="echo", inputs={}).SerializeToString(),
    pb.SubmitRequest(route="nope", inputs={"x": "y"}).SerializeToString(),
    pb.SubmitRequest(route="echo", transcription=pb.TranscriptionRequest(audio=b"RIFF")).SerializeToString(),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A well-formed request with a few bytes changed, cut or added, so parsing sometimes succeeds."""
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "append"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _parsed(data: bytes) -> pb.SubmitRequest | None:
    try:
        return pb.SubmitRequest.FromString(data)
    except Exception:  # not a SubmitRequest
        return None


def _non_finite(message: Any) -> bool:
    """Whether a Struct, ListValue or Value holds NaN or an infinity anywhere."""
    if isinstance(message, struct_pb2.Struct):
        return any(_non_finite(v) for v in message.fields.values())
    if isinstance(message, struct_pb2.ListValue):
        return any(_non_finite(v) for v in message.values)
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        return not math.isfinite(message.number_value)
    if kind in ("struct_value", "list_value"):
        return _non_finite(getattr(message, kind))
    return False


@FUZZ
@given(data=st.binary(max_size=512) | mutated() | st.sampled_from([b"", b"\xff", b"\x0a", b"\x0a\xff",
                                                                  b"\x12\x05\xff\xff\xff\xff\xff"]))
def test_fuzz_raw_bytes(channel: grpc.Channel, data: bytes) -> None:
    request = _parsed(data)
    raw = channel.unary_unary(SUBMIT)  # no serializers: bytes in, bytes out
    try:
        answer = raw(data, timeout=10)
    except grpc.RpcError as error:
        event(error.code().name)
        if error.code() is grpc.StatusCode.NOT_FOUND:
            # Only for bytes that are a well-formed SubmitRequest naming a route that does not exist.
            assert request is not None and request.route
        else:
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
        check_error(error)
        return
    event("OK")
    assert request is not None and pb.SubmitResponse.FromString(answer).job.id


def test_still_healthy_after_the_fuzzing(echo_server: ServerProcess) -> None:
    assert echo_server.health() == health_pb2.HealthCheckResponse.SERVING
    assert echo_server.health("route/echo") == health_pb2.HealthCheckResponse.SERVING
    with Client(echo_server.target) as client:
        assert client.submit("echo", {"after": "fuzz", "delay_ms": 20}).result(timeout=30) == Output(
            {"after": "fuzz", "delay_ms": 20})
    assert "Traceback" not in echo_server.log(), echo_server.log()[-5000:]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_in_inputs_are_invalid_argument(channel: grpc.Channel, value: float) -> None:
    """Struct numbers are doubles, so a client can send NaN or Infinity; they must be refused cleanly."""
    stub = pb_grpc.GatewayServiceStub(channel)
    request = pb.SubmitRequest(route="echo")
    request.inputs.update({"delay_ms": 1, "nested": {"x": [value]}})
    with pytest.raises(grpc.RpcError) as refused:
        stub.Submit(request, timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    check_error(refused.value)


def test_a_trailing_newline_is_not_a_valid_label_key_or_request_id(channel: grpc.Channel) -> None:
    stub = pb_grpc.GatewayServiceStub(channel)
    for request in (pb.SubmitRequest(route="echo", inputs={}, labels={"key\n": "v"}),
                    pb.SubmitRequest(route="echo", inputs={}, request_id="order-1\n")):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Submit(request, timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        check_error(refused.value)


# -- audio, Watch, List, the HTTP facade ---------------------------------------------------------------

SEASHELLS = (FIXTURES / "seashells.wav").read_bytes()
LONG_OGG = (FIXTURES / "long.ogg").read_bytes()
AUDIO_ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def audio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A whisper route that runs nothing (--workers 0): Submit's audio probe alone, with no model load."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzz-audio"), '[routes.whisper]\nbackend = "whisper"\n'
                           'max_queue = 100000\nmax_audio_bytes = 4096000\n', args=("--workers", "0")).start()
    yield server
    server.stop()


@st.composite
def audio_cases(draw: st.DrawFn) -> tuple[bytes, str]:
    """Audio bytes and the verdict: "valid" (a real file: accepted), "invalid" (refused), "unknown"."""
    kind = draw(st.sampled_from(["fixture", "fixture", "empty", "random", "mutated", "cut", "text"]))
    if kind == "fixture":
        return draw(st.sampled_from([SEASHELLS, LONG_OGG])), "valid"
    if kind == "empty":
        return b"", "invalid"
    if kind == "text":
        return draw(st.text(min_size=1, max_size=200)).encode(), "invalid"
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=4096)), "unknown"
    data = bytearray(draw(st.sampled_from([SEASHELLS, LONG_OGG])))
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, 26))]), "invalid"  # less than any whole header (Ogg's is 27+)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, min(len(data) - 1, 512)))  # the header, mostly
        data[at] = draw(st.integers(0, 255))
    return bytes(data), "unknown"


@FUZZ
@given(case=audio_cases())
def test_fuzz_audio_probe(audio_server: ServerProcess, case: tuple[bytes, str]) -> None:
    audio, verdict = case
    event(verdict)
    with grpc.insecure_channel(audio_server.target) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        request = pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest(audio=audio))
        try:
            stub.Submit(request, timeout=30)
        except grpc.RpcError as error:
            reason, _ = check_error(error, AUDIO_ALLOWED)
            event(reason)
            assert verdict != "valid", f"a real audio file was refused: {reason}"
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                assert reason.startswith("AUDIO_"), reason
            return
    assert verdict != "invalid", f"{len(audio)} bytes of non-audio were accepted"


@st.composite
def upload_cases(draw: st.DrawFn) -> tuple[list[pb.UploadRequest], str]:
    """An Upload's messages, in any order and number: requests from Submit's strategy or a plain whisper
    one, the audio cases above cut into chunks at random, empty messages; and the verdict."""
    audio, verdict = draw(audio_cases())
    cuts = sorted(draw(st.lists(st.integers(0, len(audio)), max_size=6)))
    chunks = [audio[a:b] for a, b in zip([0, *cuts], [*cuts, len(audio)], strict=True)]
    messages = [pb.UploadRequest(audio_chunk=c) for c in chunks]
    plain = pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest())
    headers = draw(st.lists(st.just(plain) | submit_requests().map(lambda case: case[0]), max_size=2))
    for header in headers:
        messages.insert(draw(st.integers(0, len(messages))), pb.UploadRequest(submit=header))
    if draw(st.integers(0, 9)) == 0:
        messages.insert(draw(st.integers(0, len(messages))), pb.UploadRequest())
    ok = len(headers) == 1 and headers[0] is plain and len(messages) == len(chunks) + 1 and verdict == "valid"
    bad = len(headers) != 1 or len(messages) != len(chunks) + 1 or verdict == "invalid"
    return messages, "valid" if ok else "invalid" if bad else "unknown"


@FUZZ
@given(case=upload_cases())
def test_fuzz_upload(audio_server: ServerProcess, case: tuple[list[pb.UploadRequest], str]) -> None:
    messages, verdict = case
    event(verdict)
    with grpc.insecure_channel(audio_server.target) as ch:
        stub = pb_grpc.GatewayServiceStub(ch)
        try:
            stub.Upload(iter(messages), timeout=30)
        except grpc.RpcError as error:
            reason, _ = check_error(error, ALLOWED)
            event(reason)
            assert verdict != "valid", f"a valid upload was refused: {reason}"
            return
    assert verdict != "invalid", "an invalid upload was accepted"


def test_no_upload_is_left_on_disk_after_the_fuzzing(audio_server: ServerProcess) -> None:
    spool = audio_server.data_dir / "uploads" / "incoming"
    assert not spool.exists() or not any(spool.iterdir())


JOB_IDS = st.one_of(st.just(""), ODD_TEXT, st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
                    st.text(st.characters(codec="ascii"), min_size=30, max_size=300))


@FUZZ
@given(job_id=JOB_IDS, after=st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 10))
def test_fuzz_watch(channel: grpc.Channel, job_id: str, after: int) -> None:
    stub = pb_grpc.GatewayServiceStub(channel)
    try:
        for _ in stub.Watch(pb.WatchRequest(job_id=job_id, after_revision=after), timeout=10):
            break
    except grpc.RpcError as error:
        reason, _ = check_error(error, {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                        grpc.StatusCode.OUT_OF_RANGE}, not_found=frozenset({"JOB_NOT_FOUND"}))
        if after >= 0:  # an id that cannot be one is INVALID_ARGUMENT with a field violation (AIP-193)
            well_formed = re.fullmatch(r"[0-9a-f]{32}", job_id) is not None
            assert reason == ("JOB_NOT_FOUND" if well_formed else "INVALID_JOB_ID"), (job_id, reason)
        event(reason)
        return
    raise AssertionError(f"Watch of a job that does not exist answered: {job_id!r}")  # every id here is unknown


@FUZZ
@given(page_size=st.integers(-(2**31), 2**31 - 1), token=st.just("") | ODD_TEXT | st.text(max_size=80),
       states=st.lists(st.integers(-5, 10), max_size=4), route=st.just("") | ROUTES, labels=VALID_LABELS | ODD_LABELS)
def test_fuzz_list(channel: grpc.Channel, page_size: int, token: str, states: list[int], route: str,
                   labels: dict[str, str]) -> None:
    stub = pb_grpc.GatewayServiceStub(channel)
    request = pb.ListRequest(page_size=page_size, page_token=token, route=route, labels=labels)
    request.states.extend(states)  # unknown enum numbers included: proto3 keeps them
    try:
        page = stub.List(request, timeout=10)
    except grpc.RpcError as error:
        reason, _ = check_error(error, {grpc.StatusCode.INVALID_ARGUMENT})
        event(reason)
        return
    event("OK")
    assert token == "", "a page token that no answer gave out was accepted"
    assert page_size >= 0 and all(0 <= s <= 5 for s in states)
    assert len(page.jobs) <= max(page_size, 50) if page_size else len(page.jobs) <= 50


FACADE_BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    JSON.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.dictionaries(st.text(max_size=8), JSON, max_size=4).map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.sampled_from([b"{", b"[]", b"null", b'{"audio": 1}', b"NaN", b"1e400", b'{"x": 1e400}', b"[" * 1000]),
)


@FUZZ
@given(body=FACADE_BODIES, route=st.sampled_from(["echo", "nope", "whisper"]), asynchronous=st.booleans())
def test_fuzz_facade_bodies(echo_server: ServerProcess, body: bytes, route: str, asynchronous: bool) -> None:
    headers = {"Content-Type": "application/json", **({"X-OctoAI-Async": "1"} if asynchronous else {})}
    request = urllib.request.Request(f"{echo_server.http_url}/{route}/predict", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    event(str(status))
    assert status in (200, 201, 400, 404, 413, 422), (status, text[:300])
    answer_json = json.loads(text)  # every answer is JSON, refusals included
    if status >= 400:
        assert answer_json.get("reason") or answer_json.get("error"), answer_json
    else:
        assert route == "echo"
