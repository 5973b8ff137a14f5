"""The client library's surface: every RPC has its method (and uses it), the shape of the public API,
the types it hands out, its errors, its retry policy, and the Python versions it claims."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb

import gateway_client
from gateway_client import (
    AsyncClient,
    AsyncJobFuture,
    Client,
    FailedPreconditionError,
    GatewayError,
    InvalidArgumentError,
    Job,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobFuture,
    JobState,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    RpcError,
    UnavailableError,
)
from gateway_client._retry import retry_floor
from gateway_client._streams import TranscriptBuilder
from harness import ROOT, ServerProcess

SERVICE = pb.DESCRIPTOR.services_by_name["GatewayService"]
CLIENT_DIR = ROOT / "clients" / "python"


# RPCs whose method is named otherwise: ``retry`` was the client's retry policy before the Retry RPC came.
METHOD_NAMES = {"retry": "retry_job"}


def snake(name: str) -> str:
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return METHOD_NAMES.get(name, name)


def public_methods(cls: type) -> dict[str, Any]:
    return {name: fn for name, fn in inspect.getmembers(cls, callable) if not name.startswith("_")}


# -- every RPC, both clients -----------------------------------------------------------------------


@pytest.mark.parametrize("client_class", [AsyncClient, Client])
def test_every_rpc_has_a_public_method_with_timeout_and_metadata(client_class: type) -> None:
    methods = public_methods(client_class)
    for rpc in SERVICE.methods:
        name = snake(rpc.name)
        assert name in methods, f"{client_class.__name__} has no method for {rpc.name}"
        parameters = inspect.signature(methods[name]).parameters
        for keyword in ("timeout", "metadata"):
            assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (rpc.name, keyword)


@pytest.mark.parametrize("cls", [AsyncClient, Client, AsyncJobFuture, JobFuture])
def test_no_public_method_takes_arbitrary_keywords(cls: type) -> None:
    for name, fn in public_methods(cls).items():
        if inspect.isclass(fn):
            continue
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{cls.__name__}.{name} takes **kwargs"


def test_async_future_is_a_coroutine_exactly_where_it_talks_to_the_server() -> None:
    assert inspect.iscoroutinefunction(AsyncJobFuture.cancel)
    for local in ("done", "cancelled", "result", "exception", "add_done_callback", "add_update_callback"):
        assert not inspect.iscoroutinefunction(getattr(AsyncJobFuture, local)), local
    for rpc in ("submit", "submit_job", "upload", "transcribe", "future", "get", "fetch", "cancel", "delete", "list"):
        assert inspect.iscoroutinefunction(getattr(AsyncClient, rpc)), rpc
    for stream in ("watch", "watch_jobs", "iter_jobs"):  # they answer async iterators at once
        assert not inspect.iscoroutinefunction(getattr(AsyncClient, stream)), stream


def _method(details: Any) -> str:
    return details.method.decode() if isinstance(details.method, bytes) else details.method


class _UnaryRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, methods: set[str]) -> None:
        self.methods = methods

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.add(_method(details))
        return await continuation(details, request)


class _StreamRecorder(grpc.aio.UnaryStreamClientInterceptor):  # grpc.aio takes one kind per object
    def __init__(self, methods: set[str]) -> None:
        self.methods = methods

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.add(_method(details))
        return await continuation(details, request)


class _UploadRecorder(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, methods: set[str]) -> None:
        self.methods = methods

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.methods.add(_method(details))
        return await continuation(details, requests)


def test_each_method_calls_its_rpc(echo_server: ServerProcess) -> None:
    called: set[str] = set()
    recorders = [_UnaryRecorder(called), _StreamRecorder(called), _UploadRecorder(called)]

    async def run() -> None:
        async with AsyncClient(echo_server.target, interceptors=recorders) as client:
            job, _ = await client.submit_job("echo", {"delay_ms": 200})
            await client.get(job.id)
            assert [j async for j in client.watch(job.id)][-1].done
            assert (await client.fetch(job.id)).done
            await client.cancel(job.id)
            await client.list(page_size=1)
            active, _ = await client.submit_job("echo", {"delay_ms": 60_000})
            async with client.watch_jobs() as changes:  # the active jobs first
                async for item in changes:
                    if item.id == active.id:
                        break
            await client.delete(active.id, force=True)
            with pytest.raises(FailedPreconditionError, match="SUCCEEDED"):  # (only failed or cancelled jobs are)
                await client.retry_job(job.id)
            await client.delete(job.id)
            with pytest.raises(InvalidArgumentError, match="uploads"):  # (echo takes none)
                await client.upload("echo", b"RIFF")

    asyncio.run(run())
    assert called == {f"/{SERVICE.full_name}/{rpc.name}" for rpc in SERVICE.methods}


# -- types -----------------------------------------------------------------------------------------


def test_unknown_states_are_not_done_and_done_comes_from_the_server() -> None:
    later = Job.from_proto(pb.Job(id="a", state=99, revision=3))  # a state added after this client  # type: ignore[arg-type]
    assert later.state is JobState.UNKNOWN and not later.done and not later.state.done
    ended = Job.from_proto(pb.Job(id="a", state=99, done=True, revision=4))  # type: ignore[arg-type]
    assert ended.state is JobState.UNKNOWN and ended.done
    assert Job.from_proto(pb.Job(state=pb.JOB_STATE_SUCCEEDED, done=True)).state is JobState.SUCCEEDED
    assert JobState.parse("job_state_failed") is JobState.FAILED
    with pytest.raises(ValueError):
        JobState.parse("unknown")


def test_times_are_aware_and_utc() -> None:
    job = Job.from_proto(pb.Job(id="a", create_time={"seconds": 1_700_000_000, "nanos": 500_000_000}))
    assert job.create_time is not None and job.create_time.utcoffset() is not None
    assert job.create_time.timestamp() == 1_700_000_000.5 and job.start_time is None


def _segment(i: int) -> pb.Segment:
    return pb.Segment(start_seconds=i, end_seconds=i + 1, text=f"s{i}")


def test_the_transcript_is_rebuilt_from_offsets() -> None:
    transcript = TranscriptBuilder()
    assert transcript.apply(0, [_segment(0), _segment(1)])
    assert transcript.apply(2, [_segment(2)])
    assert transcript.apply(3, [])
    assert [s.text for s in transcript.segments] == ["s0", "s1", "s2"]
    assert not transcript.apply(5, [_segment(5)])  # a gap: segments 3 and 4 never arrived
    assert len(transcript) == 3
    assert transcript.apply(1, [_segment(7)])  # transcript[:offset] + added
    assert [s.text for s in transcript.segments] == ["s0", "s7"]
    job = transcript.job(pb.Job(id="a", revision=5, segments=[_segment(7)]))
    assert [s.text for s in job.segments] == ["s0", "s7"] and len(job.raw.segments) == 2
    assert job.segments[1].start == 7.0 and job.segments[1].end == 8.0  # seconds


# -- errors ----------------------------------------------------------------------------------------


def test_every_status_code_has_its_error_class() -> None:
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        error = RpcError.for_code(code, "m")
        assert type(error) is not RpcError and isinstance(error, GatewayError) and error.code is code
        assert not isinstance(error, JobError)
    assert isinstance(RpcError.for_code(grpc.StatusCode.NOT_FOUND, "m"), NotFoundError)
    assert issubclass(JobFailedError, JobError) and issubclass(JobCancelledError, JobError)
    assert not issubclass(JobError, RpcError)
    for name in ("JobError", "RpcError", "NotFoundError", "UnavailableError"):  # the tree, drawn once
        assert name in (gateway_client._errors.__doc__ or "")


def test_status_details_become_attributes() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="full")
    info, retry = any_pb2.Any(), any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="QUEUE_FULL", domain="gateway.inferencegateway.dev",
                                          metadata={"maxQueue": "1"}))
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)))
    status.details.extend([info, retry])
    error = RpcError.from_status(status)
    assert isinstance(error, ResourceExhaustedError)
    assert (error.reason, error.metadata, error.retry_delay) == ("QUEUE_FULL", {"maxQueue": "1"}, 2.5)
    assert retry_floor("Submit", error) == 2.5  # retried after at least the server's delay
    assert retry_floor("Get", error) is None  # ...but only Submit
    unavailable = UnavailableError("down")
    assert all(retry_floor(m, unavailable) == 0 for m in ("Submit", "Get", "Fetch", "List", "Cancel"))
    assert retry_floor("Delete", unavailable) is None


def test_retry_policy() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = RetryPolicy(initial_backoff=1.0, jitter=0.5)
    assert all(0.5 <= jittered.backoff(1) <= 1.5 for _ in range(100))
    for bad in ({"max_attempts": 0}, {"jitter": 2.0}, {"multiplier": 0.5}, {"initial_backoff": -1.0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


# -- static types ----------------------------------------------------------------------------------

TYPED_USE = """
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from typing_extensions import assert_type

from gateway_client import (
    AsyncClient, AsyncJobChanges, AsyncJobFuture, Client, Fetched, Heartbeat, Job, JobChanges, JobFuture, Output,
    Result, Transcript, as_completed, async_wait, wait,
)


def blocking(client: Client) -> None:
    assert_type(client.submit("echo", {}), JobFuture[Output])
    assert_type(client.submit("whisper", {}, result_type=Transcript), JobFuture[Transcript])
    assert_type(client.transcribe(b""), JobFuture[Transcript])
    assert_type(client.transcribe(b"", route="upstream", result_type=Output), JobFuture[Output])
    assert_type(client.future("id"), JobFuture[Result])
    assert_type(client.watch("id"), Iterator[Job])
    assert_type(client.watch("id", heartbeats=True), Iterator[Job | Heartbeat])
    assert_type(client.watch_jobs(), JobChanges[Job])
    assert_type(client.watch_jobs(heartbeats=True), JobChanges[Job | Heartbeat])
    assert_type(client.fetch("id", wait=1.0), Fetched)
    futures = [client.transcribe(b"")]
    done, _ = wait(futures)
    assert_type(done, set[JobFuture[Transcript]])
    for future in as_completed(futures):
        assert_type(future.result(), Transcript)


async def asynchronous(client: AsyncClient) -> None:
    future = await client.transcribe(b"")
    assert_type(future, AsyncJobFuture[Transcript])
    assert_type(await future, Transcript)
    assert_type(await client.submit("echo"), AsyncJobFuture[Output])
    assert_type(client.watch("id"), AsyncIterator[Job])
    assert_type(client.watch_jobs(heartbeats=True), AsyncJobChanges[Job | Heartbeat])
    done, _ = await async_wait([future])
    assert_type(done, set[AsyncJobFuture[Transcript]])
"""


def test_the_public_api_is_typed_as_documented(tmp_path: Path) -> None:
    """Generic futures and the overloads resolve as documented, checked by mypy for Python 3.10."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    (tmp_path / "typed_use.py").write_text(TYPED_USE)
    done = subprocess.run(
        [mypy, "--python-version", "3.10", "--no-incremental", "--follow-imports", "silent",
         "--ignore-missing-imports", str(tmp_path / "typed_use.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(CLIENT_DIR)},
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the Pythons it claims -------------------------------------------------------------------------


def test_vermin_agrees_with_requires_python() -> None:
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (pip install -e '.[dev]')")
    declared = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)", declared)
    assert match, f"requires-python {declared!r} is not '>=X.Y'"
    done = subprocess.run(
        [vermin, "--no-tips", "--feature", "union-types", "--eval-annotations", "--no-parse-comments",
         "--exclude-regex", "_proto", str(CLIENT_DIR / "gateway_client")],
        capture_output=True, text=True, timeout=120,
    )
    found = re.search(r"Minimum required versions:\s*(\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert found.group(1) == match.group(1), done.stdout


def test_the_jobs_a_watch_yields_keep_their_own_transcript_as_it_grows_or_is_rewritten() -> None:
    """TranscriptBuilder shares its segments between the jobs it makes (an update costs what it adds): each job
    keeps the transcript of its revision, after later appends and after a revision that rewrites the tail."""
    def seg(i: int) -> pb.Segment:
        return pb.Segment(start_seconds=i, end_seconds=i + 1, text=f"s{i}")

    builder = TranscriptBuilder()
    made = []
    for i in range(5):
        assert builder.apply(i, [seg(i)])
        made.append(builder.job(pb.Job(id="j", revision=i + 1, segments=[seg(i)])))
    assert builder.apply(3, [seg(30)])  # revision 6 rewrote the tail from index 3
    rewritten = builder.job(pb.Job(id="j", revision=6, segments=[seg(30)]))
    assert [[s.text for s in job.segments] for job in made] == [[f"s{k}" for k in range(i + 1)] for i in range(5)]
    assert [s.text for s in rewritten.segments] == ["s0", "s1", "s2", "s30"]
    assert [s.text for s in made[4].raw.segments] == ["s0", "s1", "s2", "s3", "s4"]  # made when read
    assert [s.text for s in rewritten.raw.segments] == ["s0", "s1", "s2", "s30"]
    # Tuple-like: equality, slicing, concatenation, hashing, negative indexes.
    assert made[1].segments == tuple(made[1].segments) and made[1].segments[-1].text == "s1"
    assert made[2].segments[:2] == made[1].segments and isinstance(made[2].segments[:2], tuple)
    assert len(made[0].segments + made[1].segments) == 3 and hash(made[1].segments) == hash(tuple(made[1].segments))
    with pytest.raises(IndexError):
        made[0].segments[1]
