"""Audio by URL: the process that runs the job fetches it, under the [audio_url] rules (the webhooks'
rules for where the gateway may connect), streamed to disk, bounded; a presigned URL goes as given."""

from __future__ import annotations

import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from gateway_client import AudioUrl, Client, InvalidArgumentError, JobFailedError
from harness import FIXTURES, WHISPER_CONFIG, ServerProcess, cli

AUDIO = (FIXTURES / "seashells.wav").read_bytes()


class Origin:
    """A plain HTTP server on 127.0.0.1 serving the fixture, recording what each request asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                origin.requests.append({"path": self.path, "headers": dict(self.headers)})
                path = self.path.split("?", 1)[0]
                if path == "/audio.wav":
                    self._send(200, AUDIO)
                elif path == "/big.wav":
                    self._send(200, AUDIO * 8)
                elif path == "/away":  # to another origin than the allowed prefix's (localhost, not 127.0.0.1)
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{origin.port}/audio.wav")
                    self.end_headers()
                elif path.startswith("/flaky/"):  # busy (503) for its first two requests, then the audio
                    seen = sum(1 for r in origin.requests if r["path"].split("?", 1)[0] == path)
                    self._send(503, b"busy") if seen <= 2 else self._send(200, AUDIO)
                elif path == "/down.wav":
                    self._send(503, b"down for maintenance")
                elif path == "/here":
                    self.send_response(302)
                    self.send_header("Location", "/audio.wav?moved=1")
                    self.end_headers()
                else:
                    self._send(404, b"no such object")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[ServerProcess]:
    config = (f'[audio_url]\nallowed_prefixes = ["{origin.base}/"]\nallowed_networks = ["127.0.0.0/8"]\n'
              f"max_bytes = {len(AUDIO) * 4}\n" + WHISPER_CONFIG
              + "[routes.whisper.retry]\nmax_attempts = 3\ninitial_backoff_seconds = 0.2\n")
    server = ServerProcess(tmp_path_factory.mktemp("audio-url"), config).start()
    server.wait_serving("route/whisper")
    yield server
    server.stop()


def test_a_presigned_url_is_fetched_as_given_and_transcribed(gateway: ServerProcess, origin: Origin) -> None:
    url = f"{origin.base}/audio.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab%2Fcd&token={uuid.uuid4().hex}"
    with Client(gateway.target) as client:
        transcript = client.transcribe(AudioUrl(url)).result(timeout=60)
    assert "seashells" in transcript.text.lower()
    seen = [r for r in origin.requests if r["path"].endswith(url.split("/", 3)[3].split("?", 1)[1])]
    assert len(seen) == 1, origin.requests  # the query string kept, byte for byte
    assert "Authorization" not in seen[0]["headers"] and "Cookie" not in seen[0]["headers"]


def test_the_cli_transcribes_a_url_to_subtitles(gateway: ServerProcess, origin: Origin) -> None:
    result = cli(gateway.target, "transcribe", "--url", f"{origin.base}/here", "--format", "srt", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "-->" in result.stdout and "seashells" in result.stdout.lower()  # (after a redirect within the prefix)


def test_the_openai_face_takes_a_url_field(gateway: ServerProcess, origin: Origin) -> None:
    boundary = "gw" + uuid.uuid4().hex
    parts = [("model", "whisper-1"), ("url", f"{origin.base}/audio.wav"), ("response_format", "text")]
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in parts)
    request = urllib.request.Request(f"{gateway.http_url}/v1/audio/transcriptions", data=(body + f"--{boundary}--\r\n").encode(),
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert "seashells" in response.read().decode().lower()


@pytest.mark.parametrize(("path", "reason"), [("/away", "AUDIO_URL_NOT_ALLOWED"), ("/big.wav", "AUDIO_TOO_LARGE"),
                                              ("/missing.wav", "AUDIO_URL_FETCH_FAILED")])
def test_a_fetch_that_fails_ends_the_job_with_its_reason(gateway: ServerProcess, origin: Origin, path: str,
                                                         reason: str) -> None:
    with Client(gateway.target) as client:
        future = client.transcribe(AudioUrl(origin.base + path))
        with pytest.raises(JobFailedError) as failed:
            future.result(timeout=60)
    assert failed.value.reason == reason
    assert failed.value.job.attempt == 1  # none of these is transient: not run again
    if path == "/away":  # the redirect was not followed
        assert not any(r["headers"].get("Host", "").startswith("localhost") for r in origin.requests)


@pytest.mark.parametrize("url", ["http://127.0.0.2:9/audio.wav", "https://user:pw@example.com/a.wav",
                                 "file:///etc/passwd", "http://169.254.169.254/latest/meta-data"])
def test_urls_the_rules_refuse_are_refused_at_submit(gateway: ServerProcess, url: str) -> None:
    with Client(gateway.target) as client, pytest.raises(InvalidArgumentError) as refused:
        client.transcribe(AudioUrl(url))
    assert refused.value.reason in ("AUDIO_URL_NOT_ALLOWED", "AUDIO_URL_INVALID")


def test_loopback_is_refused_unless_allowed_networks_says_so(make_server, origin: Origin) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(f'[audio_url]\nallowed_prefixes = ["{origin.base}/"]\n' + WHISPER_CONFIG)
    with Client(server.target) as client, pytest.raises(InvalidArgumentError) as refused:
        client.transcribe(AudioUrl(f"{origin.base}/audio.wav"))
    assert refused.value.reason == "AUDIO_URL_NOT_ALLOWED" and "loopback" in str(refused.value)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_a_url_whose_server_is_briefly_busy_is_fetched_again_by_the_routes_retry_policy(
        gateway: ServerProcess, origin: Origin) -> None:
    with Client(gateway.target) as client:
        future = client.transcribe(AudioUrl(f"{origin.base}/flaky/{uuid.uuid4().hex}.wav"))
        assert "seashells" in future.result(timeout=120).text.lower()
        assert client.get(future.job_id).attempt == 3  # two 503s, then the audio
        down = client.transcribe(AudioUrl(f"{origin.base}/down.wav"))
        with pytest.raises(JobFailedError) as failed:
            down.result(timeout=120)
    assert failed.value.reason == "AUDIO_URL_FETCH_FAILED" and "503" in str(failed.value)
    assert failed.value.job.attempt == 3  # max_attempts, then the last run's error
