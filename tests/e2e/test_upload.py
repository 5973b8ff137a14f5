"""Uploads of any size: the Upload RPC (audio in chunks, the request before or after them), spooled to
disk as it arrives, kept by the store (SQLite: a file beside it; Redis: chunks another process's worker
reads), refused as soon as it is too large, and leaving nothing behind when it fails or is abandoned.

Every server here has max_receive_bytes = 1 MiB: a Submit of the same audio would be refused
REQUEST_TOO_LARGE, so a job that runs proves its audio came by Upload."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway_client import Client, InvalidArgumentError, ResourceExhaustedError
from harness import FIXTURES, WHISPER_CONFIG, ServerProcess, cli, wait_until
from harness.redis import RedisProcess
from harness.uploads import padded_wav

MiB = 1024 * 1024
TEXT = "She sells seashells by the seashore."
SMALL_RECEIVE = f"max_receive_bytes = {MiB}\nmax_inflight_submit_bytes = {4 * MiB}\n"
CHANNEL = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module")
def big_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seashells sentence (44.1 kHz stereo) and silence: 6 MiB, six chunks and more."""
    path = tmp_path_factory.mktemp("audio") / "big.wav"
    path.write_bytes(padded_wav((FIXTURES / "seashells_44k_stereo.wav").read_bytes(), 6 * MiB))
    return path


def _spooled(server: ServerProcess) -> list[Path]:
    """Files under the data dir's uploads folder (the spool and the kept uploads)."""
    folder = server.data_dir / "uploads"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _chunks(data: bytes, size: int = MiB) -> Iterator[pb.UploadRequest]:
    for start in range(0, len(data), size):
        yield pb.UploadRequest(audio_chunk=data[start:start + size])


def _redis_config(redis: RedisProcess) -> str:
    return (f'store = "{redis.url}"\nshutdown_grace_seconds = 0\n' + SMALL_RECEIVE + WHISPER_CONFIG
            + f"max_audio_bytes = {8 * MiB}\n")


def _header(route: str = "whisper", **transcription: object) -> pb.UploadRequest:
    return pb.UploadRequest(submit=pb.SubmitRequest(route=route, transcription=pb.TranscriptionRequest(**transcription)))


def _reason(error: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


def _refused(stub: pb_grpc.GatewayServiceStub, messages: Iterator[pb.UploadRequest],
             metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Upload(messages, timeout=60, metadata=metadata)
    return caught.value.code(), _reason(caught.value)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = SMALL_RECEIVE + WHISPER_CONFIG + f"max_audio_bytes = {8 * MiB}\n"
    server = ServerProcess(tmp_path_factory.mktemp("upload"), config).start()
    server.wait_serving("route/whisper")
    yield server
    server.stop()


def test_a_file_too_large_for_submit_is_uploaded_in_chunks_and_transcribed(gateway: ServerProcess,
                                                                           big_wav: Path) -> None:
    with Client(gateway.target) as client:  # 6 MiB: over the client's 4 MiB, it goes by Upload by itself
        transcript = client.transcribe(big_wav).result(timeout=180)
        assert transcript.text.strip() == TEXT
        assert transcript.duration == pytest.approx(big_wav.stat().st_size / (44100 * 4), abs=0.1)
    with Client(gateway.target, upload_above=1 << 40) as whole, pytest.raises(ResourceExhaustedError) as caught:
        whole.submit_job("whisper", audio=big_wav)  # the same bytes in one Submit: too large
    assert caught.value.reason == "REQUEST_TOO_LARGE"
    wait_until(lambda: not _spooled(gateway), "the upload's file to go once the job ended")


def test_the_request_may_come_after_the_chunks_and_a_retried_upload_is_one_job(gateway: ServerProcess,
                                                                               big_wav: Path) -> None:
    data = big_wav.read_bytes()
    with grpc.insecure_channel(gateway.target, options=CHANNEL) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)

        def upload() -> pb.SubmitResponse:
            header = pb.UploadRequest(submit=pb.SubmitRequest(
                route="whisper", request_id="upload-retried", labels={"via": "upload"},
                transcription=pb.TranscriptionRequest(language_code="en")))
            return stub.Upload(iter([*_chunks(data), header]), timeout=60)

        first, again = upload(), upload()
    assert not first.existing and again.existing
    assert again.job.id == first.job.id
    with Client(gateway.target) as client:
        assert client.future(first.job.id).result(timeout=180).text.strip() == TEXT
        assert client.get(first.job.id).labels == {"via": "upload"}
    wait_until(lambda: not _spooled(gateway), "nothing kept: the retry's copy dropped, the job's gone with it")


@pytest.mark.parametrize(("messages", "code", "reason"), [
    (lambda d: iter(_chunks(d)), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),  # no request at all
    (lambda d: iter([_header(), _header(), *_chunks(d)]), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
    (lambda d: iter([pb.UploadRequest()]), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),  # neither part
    (lambda d: iter([_header()]), grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_EMPTY"),  # no chunks
    (lambda d: iter([_header(audio=b"RIFF"), *_chunks(d)]), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (lambda d: iter([_header(audio_url="https://example.com/a.wav"), *_chunks(d)]), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_REQUEST"),
    (lambda d: iter([pb.UploadRequest(submit=pb.SubmitRequest(route="whisper")), *_chunks(d)]),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),  # JSON inputs (none here): not a transcription
    (lambda d: iter([_header("echo"), *_chunks(d)]), grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_NOT_SUPPORTED"),
    (lambda d: iter([_header("nowhere"), *_chunks(d)]), grpc.StatusCode.NOT_FOUND, "ROUTE_NOT_FOUND"),
    (lambda d: iter([_header(), *_chunks(b"not audio at all" * 70_000)]), grpc.StatusCode.INVALID_ARGUMENT,
     "AUDIO_UNREADABLE"),
    (lambda d: iter([_header(), *_chunks(d * 2)]), grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_TOO_LARGE"),  # 12 > 8 MiB
    (lambda d: iter([_header(), pb.UploadRequest(audio_chunk=bytes(5 * MiB))]), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "REQUEST_TOO_LARGE"),  # one chunk over 4 MiB
], ids=["no-request", "two-requests", "empty-message", "no-audio", "audio-in-request", "audio-url-too", "json-inputs",
        "route-without-uploads", "unknown-route", "undecodable", "too-large", "chunk-too-large"])
def test_a_bad_upload_is_refused_with_its_reason_and_leaves_nothing(
    gateway: ServerProcess, big_wav: Path, messages: Callable[[bytes], Iterator[pb.UploadRequest]],
    code: grpc.StatusCode, reason: str,
) -> None:
    with grpc.insecure_channel(gateway.target, options=CHANNEL) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        assert _refused(stub, messages(big_wav.read_bytes())) == (code, reason)
    wait_until(lambda: not _spooled(gateway), "the refused upload's spool to go")
    assert gateway.health() == 1  # SERVING


def test_an_upload_abandoned_midway_leaves_no_file(gateway: ServerProcess, big_wav: Path) -> None:
    data = big_wav.read_bytes()
    sent = []

    def slow() -> Iterator[pb.UploadRequest]:
        yield _header()
        for message in _chunks(data, 256 * 1024):
            sent.append(message)
            yield message
            if len(sent) >= 3:
                time.sleep(30)  # the client goes quiet: its deadline ends the call

    with grpc.insecure_channel(gateway.target, options=CHANNEL) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        future = stub.Upload.future(slow(), timeout=60)
        wait_until(lambda: _spooled(gateway), "the upload to be spooled as it arrives")
        future.cancel()
    wait_until(lambda: not _spooled(gateway), "the abandoned upload's spool to go")


def test_a_stranger_cannot_upload(make_server: Callable[..., ServerProcess], big_wav: Path) -> None:
    config = SMALL_RECEIVE + '[auth]\nenabled = true\n[auth.tokens]\n"tok" = "team"\n' + WHISPER_CONFIG
    server = make_server(config)
    server.wait_serving("route/whisper")
    data = big_wav.read_bytes()
    with grpc.insecure_channel(server.target, options=CHANNEL) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            assert _refused(stub, iter([_header(), *_chunks(data)]), metadata)[0] is grpc.StatusCode.UNAUTHENTICATED
        assert not _spooled(server)
    with Client(server.target, token="tok", upload_above=0) as client:
        assert client.transcribe(big_wav).result(timeout=180).text.strip() == TEXT


def test_the_cli_uploads_a_large_file(gateway: ServerProcess, big_wav: Path) -> None:
    done = cli(gateway.target, "transcribe", str(big_wav), "--format", "text")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == TEXT


def test_an_uploaded_job_survives_kill_9_before_it_runs(make_server: Callable[..., ServerProcess],
                                                        big_wav: Path) -> None:
    server = make_server(SMALL_RECEIVE + WHISPER_CONFIG + f"max_audio_bytes = {8 * MiB}\n",
                         args=("--workers", "0"))  # it takes the job and runs nothing
    with Client(server.target) as client:
        job, _ = client.submit_job("whisper", audio=big_wav)
    assert len(_spooled(server)) == 1  # kept beside the store, durably, before the answer
    server.kill()
    server.args = ()  # (back with its workers)
    server.start()
    with Client(server.target) as client:
        assert client.future(job.id).result(timeout=180).text.strip() == TEXT
    wait_until(lambda: not _spooled(server), "the upload's file to go once the job ended")


def test_with_redis_the_worker_of_another_process_gets_the_upload(
    make_server: Callable[..., ServerProcess], redis_process: RedisProcess, big_wav: Path,
) -> None:
    redis_process.flush()
    config = _redis_config(redis_process)
    api = make_server(config, args=("--workers", "0"))
    with Client(api.target) as client:
        job, _ = client.submit_job("whisper", audio=big_wav, request_id="redis-upload")
        again, existing = client.submit_job("whisper", audio=big_wav, request_id="redis-upload")
        assert existing and again.id == job.id
        assert redis_process.command("LLEN", f"gw:audio:{job.id}") == "6"  # six chunks of 1 MiB
        assert redis_process.command("TTL", f"gw:audio:{job.id}") == "-1"  # as long as the job lasts
        assert not _spooled(api)  # nothing left on the API replica's disk
        worker = make_server(config, command="worker", args=("--route", "whisper", "--workers", "1"))
        assert client.future(job.id).result(timeout=180).text.strip() == TEXT
    assert not _spooled(worker)  # its copy went with the run
    assert redis_process.command("EXISTS", f"gw:audio:{job.id}") == "0"  # and the store's with the job's end


def test_with_redis_an_upload_over_max_queued_bytes_is_refused_as_it_arrives(
    make_server: Callable[..., ServerProcess], redis_process: RedisProcess, big_wav: Path,
) -> None:
    redis_process.flush()
    config = (f'store = "{redis_process.url}"\n' + SMALL_RECEIVE + WHISPER_CONFIG
              + f"max_audio_bytes = {8 * MiB}\nmax_queued_bytes = {4 * MiB}\n")
    api = make_server(config, args=("--workers", "0"))
    with Client(api.target, retry=None) as client, pytest.raises(InvalidArgumentError) as caught:
        client.upload("whisper", big_wav)  # 6 MiB: Redis would never queue it
    assert caught.value.reason == "AUDIO_TOO_LARGE"
    assert caught.value.metadata["limitBytes"] == str(4 * MiB)
    assert redis_process.command("KEYS", "gw:audio:*") == ""  # nothing was sent to Redis
    assert not _spooled(api)


def test_refused_uploads_are_counted_by_reason(gateway: ServerProcess, big_wav: Path) -> None:
    import re
    import urllib.request

    def refused(reason: str) -> float:
        with urllib.request.urlopen(f"{gateway.http_url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        found = re.findall(r'^gateway_submits_refused_total\{([^}]*)\} (\S+)$', text, re.MULTILINE)
        return sum(float(v) for labels, v in found if f'reason="{reason}"' in labels)

    before = {r: refused(r) for r in ("AUDIO_TOO_LARGE", "MALFORMED_REQUEST", "UPLOAD_NOT_SUPPORTED")}
    data = big_wav.read_bytes()
    with grpc.insecure_channel(gateway.target, options=CHANNEL) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        _refused(stub, iter([_header(), *_chunks(data * 2)]))
        _refused(stub, iter(_chunks(data)))
        _refused(stub, iter([_header("echo"), *_chunks(data)]))
    for reason, count in before.items():
        assert refused(reason) == count + 1, reason


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_spool_left_by_kill_9_is_deleted_at_the_next_start(
    make_server: Callable[..., ServerProcess], request: pytest.FixtureRequest, big_wav: Path, store: str,
) -> None:
    config = SMALL_RECEIVE + WHISPER_CONFIG
    if store == "redis":
        redis: RedisProcess = request.getfixturevalue("redis_process")
        redis.flush()
        config = f'store = "{redis.url}"\n' + config
    server = make_server(config, args=("--workers", "0"))
    data = big_wav.read_bytes()

    def slow() -> Iterator[pb.UploadRequest]:
        yield _header()
        for n, message in enumerate(_chunks(data, 256 * 1024)):
            yield message
            if n >= 2:
                time.sleep(60)  # never finished: the server dies first

    with grpc.insecure_channel(server.target, options=CHANNEL) as channel:
        future = pb_grpc.GatewayServiceStub(channel).Upload.future(slow(), timeout=90)
        wait_until(lambda: _spooled(server), "the upload to be spooled")
        server.kill()
        future.cancel()
    assert _spooled(server)  # what the crash left
    server.start()
    assert not _spooled(server)


def test_a_cancelled_upload_keeps_its_audio_and_retry_transcribes_it(gateway: ServerProcess, big_wav: Path) -> None:
    with Client(gateway.target) as client:
        job, _ = client.submit_job("whisper", audio=big_wav)
        client.cancel(job.id)
        assert list(client.watch(job.id))[-1].state.name == "CANCELLED"
        assert (gateway.data_dir / "uploads" / job.id).is_file()  # kept for Retry while the job is
        retried, existing = client.retry_job(job.id)
        assert not existing and retried.retry_of == job.id
        assert client.future(retried.id).result(timeout=180).text.strip() == TEXT
        assert (gateway.data_dir / "uploads" / job.id).is_file()  # the old job still has its own
        client.delete(job.id)
        client.delete(retried.id)
    wait_until(lambda: not _spooled(gateway), "the uploads to go with their jobs")


def test_with_redis_a_cancelled_upload_is_retried_on_another_process(
    make_server: Callable[..., ServerProcess], redis_process: RedisProcess, big_wav: Path,
) -> None:
    redis_process.flush()
    config = _redis_config(redis_process)
    api = make_server(config, args=("--workers", "0"))
    other = make_server(config, args=("--workers", "0"))
    with Client(api.target) as client, Client(other.target) as second:
        job, _ = client.submit_job("whisper", audio=big_wav)
        client.cancel(job.id)  # queued: no worker runs it yet
        assert int(redis_process.command("PTTL", f"gw:audio:{job.id}")) > 0  # kept as long as the job
        retried, _ = second.retry_job(job.id)
        assert redis_process.command("LLEN", f"gw:audio:{retried.id}") == "6"
        make_server(config, command="worker", args=("--route", "whisper", "--workers", "1"))
        assert second.future(retried.id).result(timeout=180).text.strip() == TEXT
    assert not _spooled(api) and not _spooled(other)
