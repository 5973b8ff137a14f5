"""The OctoAI-compatible facade: the seed's snippet, with the real octoai-sdk 0.2.0, against the gateway."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway_client import Client, JobState, Transcript
from harness import FIXTURES, ServerProcess
from harness.octoai_sdk import run_sdk_snippet

SENTENCE = "She sells seashells by the seashore"
AUTH = '[auth]\nenabled = true\n[auth.tokens]\nalpha-token = "alpha"\nbeta-token = "beta"\n'


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                             **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), dict(error.headers)


def test_seed_snippet_runs_unchanged_but_for_the_url(whisper_server: ServerProcess) -> None:
    out = run_sdk_snippet(f"{whisper_server.http_url}/whisper", FIXTURES / "seashells.wav")
    assert "error" not in out, out
    assert out["health_status"] == 200
    result = out["result"]
    assert SENTENCE in result["response"]["segments"][0]["text"]  # the seed's own check
    assert result["transcription"].strip() == SENTENCE + "."
    assert result["prediction_time_ms"] > 0
    words = result["response"]["segments"][0]["words"]
    assert [w["word"] for w in words][:3] == ["She", "sells", "seashells"] and {"start", "end", "score"} <= set(words[0])
    assert SENTENCE in out["infer"]["response"]["segments"][0]["text"]  # the synchronous infer() too
    # The facade's jobs are the gateway's own: the same id over gRPC.
    job_id = out["future"]["response_id"]
    assert out["future"]["poll_url"] == f"{whisper_server.http_url}/v1/requests/{job_id}"
    with Client(whisper_server.target) as client:
        job = client.get(job_id)
        assert job.state is JobState.SUCCEEDED and job.labels == {"via": "octoai-facade"}
        transcript = client.fetch(job_id).result
        assert isinstance(transcript, Transcript) and transcript.text == SENTENCE + "."


def test_a_failed_job_makes_the_sdk_raise_instead_of_spinning(whisper_server: ServerProcess, tmp_path: Path) -> None:
    mislabelled = bytearray((FIXTURES / "seashells.wav").read_bytes())
    mislabelled[20:22] = struct.pack("<H", 0x0055)  # says MP3, holds PCM: the job fails while decoding
    audio = tmp_path / "bad.wav"
    audio.write_bytes(bytes(mislabelled))
    out = run_sdk_snippet(f"{whisper_server.http_url}/whisper", audio, steps=("async",))
    assert out["error"]["step"] == "is_future_ready"  # the poll raised: no endless loop
    assert out["error"]["type"] == "OctoAIClientError"
    assert "AUDIO_DECODE_FAILED" in out["error"]["message"]


def test_status_and_errors_over_plain_http(whisper_server: ServerProcess) -> None:
    base = whisper_server.http_url
    status, body, headers = http("POST", f"{base}/echo/predict", {"delay_ms": 400}, {"X-OctoAI-Async": "1"})
    assert status == 201 and body["poll_url"].endswith(f"/v1/requests/{body['response_id']}")
    assert headers["X-User-Request-ID"] == body["response_id"]
    status, polled, _ = http("GET", body["poll_url"])
    assert status == 200 and polled["status"] in ("pending", "running")
    status, early, _ = http("GET", f"{base}/v1/responses/{body['response_id']}")
    assert status == 404 and early["error"]["reason"] == "JOB_NOT_DONE"
    status, echoed, _ = http("POST", f"{base}/echo/predict", {"x": [1, 2]})  # synchronous: waits
    assert status == 200 and echoed == {"x": [1, 2]}
    status, failed, _ = http("POST", f"{base}/echo/predict", {"fail_with": "boom"}, {"X-OctoAI-Async": "1"})
    with Client(whisper_server.target) as client:
        assert client.fetch(failed["response_id"], wait=10).job.done
    status, polled, _ = http("GET", failed["poll_url"])
    assert status == 500 and polled["error"]["reason"] == "ECHO_FAILURE" and polled["error"]["message"] == "boom"
    assert http("POST", f"{base}/nope/predict", {})[1]["error"]["reason"] == "ROUTE_NOT_FOUND"
    status, bad, _ = http("POST", f"{base}/echo/predict", raw=b"{not json")
    assert status == 400 and bad["error"]["reason"] == "MALFORMED_REQUEST"
    status, invalid, _ = http("POST", f"{base}/whisper/predict", {"audio": "@@@"})
    assert status == 400 and invalid["error"]["reason"] == "AUDIO_NOT_BASE64"
    assert http("GET", f"{base}/v1/requests/{'0' * 32}")[0] == 404
    assert http("GET", f"{base}/whisper/healthcheck")[0] == 200


def test_body_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    small: ServerProcess = make_server('max_receive_bytes = 2048\n[routes.echo]\nbackend = "echo"\n')
    status, body, _ = http("POST", f"{small.http_url}/echo/predict", {"blob": "x" * 5000})
    assert status == 413 and body["error"]["reason"] == "REQUEST_TOO_LARGE"


def test_healthcheck_is_503_while_a_route_cannot_serve(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broken: ServerProcess = make_server(f'[routes.whisper]\nbackend = "whisper"\nmodel = "{tmp_path}/none"\n')
    status, _body, _ = http("GET", f"{broken.http_url}/whisper/healthcheck")
    assert status == 503


def test_tokens_and_tenants_on_the_facade(make_server) -> None:  # type: ignore[no-untyped-def]
    secured: ServerProcess = make_server(AUTH + '[routes.echo]\nbackend = "echo"\n')
    base = secured.http_url
    status, body, _ = http("POST", f"{base}/echo/predict", {"a": 1}, {"X-OctoAI-Async": "1"})
    assert status == 401 and body["error"]["reason"] == "MISSING_TOKEN"
    assert http("POST", f"{base}/echo/predict", {}, {"Authorization": "Bearer nope"})[1]["error"]["reason"] == "INVALID_TOKEN"
    alpha = {"Authorization": "Bearer alpha-token"}
    status, body, _ = http("POST", f"{base}/echo/predict", {"a": 1}, {"X-OctoAI-Async": "1", **alpha})
    assert status == 201
    assert http("GET", body["poll_url"], headers={"Authorization": "Bearer beta-token"})[0] == 404
    with Client(secured.target, token="alpha-token") as client:
        assert client.fetch(body["response_id"], wait=10).job.done
    status, polled, _ = http("GET", body["poll_url"], headers=alpha)
    assert status == 200 and polled["status"] == "completed"
    assert http("GET", polled["response_url"], headers=alpha)[1] == {"a": 1}
    # Another tenant's token gets nothing at the response URL either: 404, as for a job that does not exist.
    status, hidden, _ = http("GET", polled["response_url"], headers={"Authorization": "Bearer beta-token"})
    assert status == 404 and hidden["error"]["reason"] == "JOB_NOT_FOUND"
    # The SDK with the right token, through the environment as users set it.
    out = run_sdk_snippet(f"{base}/echo", FIXTURES / "seashells.wav", token="alpha-token", steps=("async",))
    assert "error" not in out and out["result"]["task"] == "transcribe"
    refused = run_sdk_snippet(f"{base}/echo", FIXTURES / "seashells.wav", steps=("async",))
    assert refused["error"]["type"] == "OctoAIClientError"


# -- both faces accept and refuse the same inputs; every facade error is JSON with a reason ---------


def _grpc_submit(server: ServerProcess, inputs: dict[str, Any]) -> str:
    """'' if the gRPC face accepts these echo inputs, else the refusal's reason."""
    import grpc
    from google.protobuf import struct_pb2
    from inferencegateway.gateway.v1 import gateway_pb2 as pb
    from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

    from harness import error_info

    struct = struct_pb2.Struct()
    struct.update(inputs)
    with grpc.insecure_channel(server.target) as channel:
        try:
            pb_grpc.GatewayServiceStub(channel).Submit(pb.SubmitRequest(route="echo", inputs=struct), timeout=10)
        except grpc.RpcError as error:
            return error_info(error)[1].reason
    return ""


def _http_submit(server: ServerProcess, raw: bytes) -> tuple[int, Any, dict[str, str]]:
    return http("POST", f"{server.http_url}/echo/predict", raw=raw, headers={"X-OctoAI-Async": "1"})


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_non_finite_numbers_are_refused_on_both_faces_alike(echo_server: ServerProcess) -> None:
    for text, number in (("NaN", float("nan")), ("Infinity", float("inf")), ("-Infinity", float("-inf")),
                         ("1e400", float("inf")), ("1" + "0" * 400, float("inf"))):
        status, body, headers = _http_submit(echo_server, f'{{"x": {text}}}'.encode())
        assert status == 400 and headers["Content-Type"].startswith("application/json"), (text, status, body)
        assert body["error"]["reason"] == "INVALID_REQUEST" and "finite" in body["error"]["message"]
        assert _grpc_submit(echo_server, {"x": number}) == body["error"]["reason"]
    # Large but finite numbers pass on both.
    status, body, _ = _http_submit(echo_server, b'{"x": 1e300, "y": 12345678901234567890}')
    assert status == 201, body
    assert _grpc_submit(echo_server, {"x": 1e300}) == ""


def test_deeply_nested_inputs_get_a_json_refusal(echo_server: ServerProcess) -> None:
    for depth in (33, 100_000):
        raw = b'{"a":' * depth + b"1" + b"}" * depth
        status, body, headers = _http_submit(echo_server, raw)
        assert status == 400 and headers["Content-Type"].startswith("application/json"), (depth, status)
        assert body["error"]["reason"] == "INPUT_TOO_DEEP"
    status, body, _ = _http_submit(echo_server, json.dumps(_nested(20)).encode())
    assert status == 201, body
    assert _grpc_submit(echo_server, _nested(20)) == ""
    # The server is healthy afterwards.
    assert http("GET", f"{echo_server.http_url}/echo/healthcheck")[0] == 200


def test_a_synchronous_predict_answers_504_with_its_job_at_the_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server("predict_timeout_seconds = 1\n[routes.echo]\nbackend = \"echo\"\n")
    status, body, headers = http("POST", f"{server.http_url}/echo/predict", {"delay_ms": 3000})
    assert status == 504 and body["error"]["reason"] == "PREDICT_TIMEOUT", body
    job_id = headers["X-User-Request-ID"]
    assert body["response_id"] == job_id and body["poll_url"].endswith(f"/v1/requests/{job_id}")
    with Client(server.target) as client:  # the job went on
        assert client.fetch(job_id, wait=30).job.state is JobState.SUCCEEDED


def test_a_synchronous_predict_cut_by_shutdown_answers_json(make_server) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    server: ServerProcess = make_server("shutdown_grace_seconds = 0.5\n[routes.echo]\nbackend = \"echo\"\n")
    answer: list[tuple[int, Any, dict[str, str]]] = []
    caller = threading.Thread(target=lambda: answer.append(http("POST", f"{server.http_url}/echo/predict",
                                                                   {"delay_ms": 30_000})))
    caller.start()
    with Client(server.target) as client:
        deadline = time.monotonic() + 10
        while not client.list(states=[JobState.RUNNING]).jobs:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    server.stop(timeout=20)  # SIGTERM
    caller.join(timeout=30)
    status, body, headers = answer[0]
    assert status == 503 and headers["Content-Type"].startswith("application/json"), (status, body)
    assert body["error"]["reason"] == "SHUTTING_DOWN" and body["response_id"] == headers["X-User-Request-ID"]


def test_slow_uploads_are_cut_and_bounded_without_flooding_the_log(make_server) -> None:  # type: ignore[no-untyped-def]
    """Clients that trickle a body get a 408 at the read timeout; beyond max_concurrent_uploads a new
    upload is refused at once (503, Retry-After); clients that vanish cost one log line at most, and no
    traceback; the facade still answers the others."""
    import socket
    import time

    server: ServerProcess = make_server("http_read_timeout_seconds = 1.5\nmax_concurrent_uploads = 8\n"
                                        "[routes.echo]\nbackend = \"echo\"\n")
    host, port = server.http_address.rsplit(":", 1)
    head = (f"POST /echo/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-OctoAI-Async: 1\r\nContent-Length: 100000\r\n\r\n").encode()
    slow = []
    for _ in range(8):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(head + b'{"x": "')
        slow.append(sock)
    deadline = time.monotonic() + 10  # until the server is reading the eight bodies
    while (answer := http("POST", f"{server.http_url}/echo/predict", {"n": 1}, headers={"X-OctoAI-Async": "1"}))[0] == 201:
        assert time.monotonic() < deadline, "the eight slow uploads never filled the places"
    status, body, headers = answer
    assert status == 503 and body["error"]["reason"] == "TOO_MANY_UPLOADS" and "Retry-After" in headers, body
    started = time.monotonic()
    answers = []
    for sock in slow:
        sock.sendall(b"a")  # a byte now and then is not enough
        answers.append(sock.recv(4096).decode(errors="replace"))
    assert time.monotonic() - started < 10
    assert all(a.startswith("HTTP/1.1 408") and "REQUEST_TIMEOUT" in a for a in answers), answers[0]
    # Clients that vanish mid-body.
    for _ in range(20):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(head + b'{"x": "abc')
        sock.close()
    for sock in slow:
        sock.close()
    deadline = time.monotonic() + 10  # the vanished ones free their places by the read timeout at the latest
    while (answer := http("POST", f"{server.http_url}/echo/predict", {"n": 2}, headers={"X-OctoAI-Async": "1"}))[0] != 201:
        assert answer[1]["error"]["reason"] == "TOO_MANY_UPLOADS" and time.monotonic() < deadline, answer
        time.sleep(0.2)
    log = server.log_path.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    assert log.count("\n") < 60, log[-3000:]
