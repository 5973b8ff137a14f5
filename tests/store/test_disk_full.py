"""A full disk under the SQLite store: new jobs are refused with UNAVAILABLE and a clear reason, the
gateway reports NOT_SERVING, accepted jobs are not stranded (their writes wait and go through), and
it all comes back by itself when space returns; a start on a disk that is already full exits 3 with
one line, leaving nothing behind. The data dir is a small tmpfs, which needs root to mount: in CI
this must run (it fails if it cannot mount); elsewhere it is skipped, saying why."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ROOT, ServerProcess, error_info, unavailable, wait_until

CONFIG = '[routes.echo]\nbackend = "echo"\nworkers = 4\n'


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a small tmpfs ({mounted.stderr.strip() or 'mount failed'}); run as root to test a full disk")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(where: Path) -> Path:
    filler = where / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def _health(channel: grpc.Channel) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def test_a_full_disk_refuses_new_jobs_strands_none_and_heals(make_server, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(CONFIG, start=False)
    server.data_dir = small_disk
    server.start()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        inputs = struct_pb2.Struct()
        inputs.update({"delay_ms": 3000, "steps": 60})
        accepted = stub.Submit(pb.SubmitRequest(route="echo", inputs=inputs), timeout=10).job
        filler = _fill(small_disk)
        # Its progress revisions cannot be written now: the gateway notices and stops serving.
        wait_until(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_info(refused.value)[1].reason == "STORE_UNAVAILABLE"
        filler.unlink()  # space returns
        wait_until(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, "SERVING again")
        done = stub.Fetch(pb.FetchRequest(job_id=accepted.id, timeout=duration_pb2.Duration(seconds=30)), timeout=40)
        assert done.job.state == pb.JOB_STATE_SUCCEEDED  # not stranded: its writes waited and went through
        again = stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()), timeout=10).job
        fetched = stub.Fetch(pb.FetchRequest(job_id=again.id, timeout=duration_pb2.Duration(seconds=30)), timeout=40)
        assert fetched.job.state == pb.JOB_STATE_SUCCEEDED


def _serve(data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    config = cwd / "gateway.toml"
    config.write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--listen", "127.0.0.1:0",
         "--http-listen", "", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def _refused_for_room(done: subprocess.CompletedProcess[str], data_dir: Path) -> None:
    """One line (besides log lines) that says what (a full disk), where (the data dir) and what to do
    (free space, or --data-dir), exit 3 as for any unusable data dir, and it never served."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("gateway: ")]
    assert len(lines) == 1, done.stderr
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert "full disk" in lines[0] and str(data_dir) in lines[0] and "free space" in lines[0], lines[0]
    assert "--data-dir" in lines[0]


@pytest.mark.parametrize("data_dir_exists", [False, True], ids=["new-data-dir", "empty-data-dir"])
def test_a_start_on_a_full_disk_says_so_and_leaves_nothing(small_disk: Path, tmp_path: Path,
                                                          data_dir_exists: bool) -> None:
    """Before: a 29-line traceback, exit 1, and an empty lock file and database left behind, which
    look like a store that once ran. What the start made goes; what was there stays as it was."""
    data_dir = small_disk / "nested" / "data" if not data_dir_exists else small_disk / "data"
    if data_dir_exists:
        data_dir.mkdir()
        (data_dir / "README").write_text("the operator's\n")
    before = sorted(p.relative_to(small_disk) for p in small_disk.rglob("*"))
    filler = _fill(small_disk)
    done = _serve(data_dir, tmp_path)
    _refused_for_room(done, data_dir)
    assert sorted(p.relative_to(small_disk) for p in small_disk.rglob("*") if p != filler) == before
    if data_dir_exists:
        assert (data_dir / "README").read_text() == "the operator's\n"
    # Once there is room the same data dir starts (nothing half-made stands in its way).
    filler.unlink()
    (tmp_path / "again").mkdir()
    server = ServerProcess(tmp_path / "again", CONFIG)
    server.data_dir = data_dir
    try:
        server.start()
    finally:
        server.stop()


def test_a_store_on_a_disk_that_filled_while_stopped_is_left_as_it_was(small_disk: Path, tmp_path: Path) -> None:
    """SQLite says "disk I/O error" here, not "disk is full" (its shared-memory file cannot be made):
    the line still names the full disk, and the store's own files are not touched, let alone removed."""
    data_dir = small_disk / "data"
    server = ServerProcess(tmp_path, CONFIG)
    server.data_dir = data_dir
    server.start()
    assert server.stop() == 0
    store = data_dir / "gateway.sqlite3"
    kept = store.read_bytes()
    _fill(small_disk)
    done = _serve(data_dir, tmp_path)
    _refused_for_room(done, data_dir)
    assert store.read_bytes() == kept
    assert sorted(p.name for p in data_dir.iterdir()) == ["gateway.lock", "gateway.sqlite3"]


def test_an_upload_the_disk_cannot_hold_is_unavailable_and_leaves_room(make_server, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    """The 3 MiB disk cannot hold a 6 MiB upload: UNAVAILABLE UPLOAD_DISK_FULL with RetryInfo, the partial
    spool deleted (the disk's room back), the gateway still serving and taking the next job."""
    from harness import FIXTURES
    from harness.uploads import padded_wav

    server: ServerProcess = make_server(CONFIG + '[routes.whisper]\nbackend = "whisper"\n', start=False,
                                        args=("--workers", "0"))
    server.data_dir = small_disk
    server.start()
    audio = padded_wav((FIXTURES / "seashells_44k_stereo.wav").read_bytes(), 6 * 1024 * 1024)
    header = pb.UploadRequest(submit=pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest()))
    chunks = [pb.UploadRequest(audio_chunk=audio[i:i + (1 << 20)]) for i in range(0, len(audio), 1 << 20)]
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Upload(iter([header, *chunks]), timeout=30)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        status, info = error_info(refused.value)
        assert info.reason == "UPLOAD_DISK_FULL"
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        spool = small_disk / "uploads" / "incoming"
        assert not spool.exists() or not any(spool.iterdir())
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub.Submit(pb.SubmitRequest(route="echo", inputs=struct_pb2.Struct()), timeout=10)
