"""Crashes and restarts: kill -9 loses nothing; SIGTERM drains; client futures ride through both."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest

from gateway_client import NO_RETRY, Client, Job, JobFailedError, JobState, Output, Transcript, UnavailableError
from harness import FIXTURES, ServerProcess, wait_until
from harness.audio import word_error_rate

ONE_WORKER = '[routes.echo]\nbackend = "echo"\nworkers = 1\n'


def _wait_state(client: Client, job_id: str, state: JobState, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get(job_id).state is not state:
        assert time.monotonic() < deadline, f"{job_id} never reached {state}"
        time.sleep(0.05)


def test_kill9_keeps_results_and_resumes_queued_and_running_jobs(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server(ONE_WORKER)
    with Client(server.target) as client:
        finished = client.submit("echo", {"n": 1})
        assert finished.result(timeout=10) == Output({"n": 1})
        running = client.submit("echo", {"delay_ms": 3000, "steps": 30, "n": 2})
        queued = client.submit("echo", {"delay_ms": 100, "n": 3})
        _wait_state(client, running.job_id, JobState.RUNNING)
        wait_until(lambda: client.get(running.job_id).progress >= 0.1, "the running job's progress")
        progress_before = client.get(running.job_id).progress
        assert progress_before > 0
        seen: list[int] = []
        running.add_update_callback(lambda job: seen.append(job.revision))

        server.kill()
        time.sleep(0.5)
        assert not running.done() and not queued.done()
        server.start()

        # The futures created before the crash complete by themselves: their streams resume.
        assert running.result(timeout=30) == Output({"delay_ms": 3000, "steps": 30, "n": 2})
        assert queued.result(timeout=30) == Output({"delay_ms": 100, "n": 3})
        assert client.fetch(finished.job_id).result == Output({"n": 1})
        assert seen == sorted(set(seen))  # no revision twice, none out of order
        # The resumed echo job went on from where it was, not from zero.
        assert all(j.progress >= progress_before for j in client.watch(running.job_id, after_revision=seen[0]))


def test_kill9_mid_transcription_resumes_after_the_last_segment(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server('[routes.whisper]\nbackend = "whisper"\n')
    server.wait_serving("route/whisper")
    with Client(server.target) as client:
        future = client.transcribe(FIXTURES / "long.ogg")
        seen: list[Job] = []
        future.add_update_callback(seen.append)
        published: tuple = ()
        for job in client.watch(future.job_id):
            published = job.segments  # seen by a watcher: stored before the kill
            if len(published) >= 3:
                break
        server.kill()
        server.start()
        result = future.result(timeout=300)
    assert isinstance(result, Transcript)
    assert word_error_rate((FIXTURES / "long.txt").read_text(), result.text) < 0.1
    assert 52 < result.duration < 53.5
    # The segments published before the kill are kept as they were, and decoding went on after the
    # last of them: nothing transcribed twice, nothing started again from zero.
    assert len(published) >= 3 and result.segments[: len(published)] == published
    starts = [s.start for s in result.segments]
    assert starts == sorted(set(starts))  # strictly increasing: no segment twice
    assert all(s.start >= published[-1].end - 0.01 for s in result.segments[len(published):])
    # The future's stream resumed after the last revision it saw, and rebuilt exactly the transcript:
    # each revision's segments extend the previous ones, and the last revision's are the result's.
    revisions = [j.revision for j in seen]
    assert revisions == sorted(set(revisions))
    for earlier, later in itertools.pairwise(seen):
        assert later.segments[: len(earlier.segments)] == earlier.segments
    assert seen[-1].done and seen[-1].segments == result.segments


def test_sigterm_drains_and_streams_resume_after_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    """Two jobs running at SIGTERM: the short one ends within the drain; the long one is still running at
    the grace cut-off, is cut there (not failed), and resumes after the restart where it was."""
    server: ServerProcess = make_server('shutdown_grace_seconds = 1.0\n[routes.echo]\nbackend = "echo"\nworkers = 2\n')
    with Client(server.target) as client:
        short = client.submit("echo", {"delay_ms": 300})
        long = client.submit("echo", {"delay_ms": 4000, "steps": 40})
        _wait_state(client, short.job_id, JobState.RUNNING)
        _wait_state(client, long.job_id, JobState.RUNNING)
        seen: list[Job] = []
        long.add_update_callback(seen.append)
        started = time.monotonic()
        assert server.stop() == 0  # graceful exit
        took = time.monotonic() - started
        assert 1.0 <= took < 1.0 + 5  # it waited the whole grace for the long job, then cut it
        assert short.done() and short.result() == Output({"delay_ms": 300})  # finished within the drain
        assert not long.done()
        cut = max(j.progress for j in seen)
        assert 0 < cut < 1
        server.start()
        with Client(server.target) as other:
            assert other.get(long.job_id).state is JobState.RUNNING  # cut, not failed: it resumes
        assert long.result(timeout=30) == Output({"delay_ms": 4000, "steps": 40})
    revisions = [j.revision for j in seen]
    assert revisions == sorted(set(revisions))  # the future's stream resumed without gaps or repeats
    after = [j.progress for j in seen if j.revision > max(r.revision for r in seen if r.progress <= cut)]
    assert all(p >= cut for p in after)  # it went on from where the cut left it


def test_a_job_that_keeps_killing_the_gateway_is_given_up(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server("max_attempts = 1\n" + ONE_WORKER)
    with Client(server.target) as client:
        future = client.submit("echo", {"delay_ms": 10_000})
        _wait_state(client, future.job_id, JobState.RUNNING)
        server.kill()
        server.start()
        with pytest.raises(JobFailedError) as failed:
            future.result(timeout=30)
        assert failed.value.reason == "TOO_MANY_ATTEMPTS"


def test_submit_is_refused_while_shutting_down(make_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = make_server('shutdown_grace_seconds = 3.0\n' + ONE_WORKER)
    with Client(server.target, retry=NO_RETRY) as client:
        busy = client.submit("echo", {"delay_ms": 2500})
        _wait_state(client, busy.job_id, JobState.RUNNING)
        assert server.proc is not None
        server.proc.send_signal(15)
        wait_until(lambda: server.health() != 1, "NOT_SERVING while draining")
        with pytest.raises(UnavailableError) as refused:
            client.submit_job("echo", {})
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    server.proc.wait(30)


def test_graceful_restarts_and_failed_starts_do_not_count_as_crashed_attempts(make_server) -> None:  # type: ignore[no-untyped-def]
    """max_attempts 1: one crashed run would end the job. Three SIGTERM drains that cut it, and three starts
    that fail on a busy port in between, leave it running; it ends SUCCEEDED."""
    import socket
    import subprocess
    import sys

    server: ServerProcess = make_server("max_attempts = 1\nshutdown_grace_seconds = 0.2\n" + ONE_WORKER)
    with Client(server.target) as client:
        # Long enough that three cuts, each after a client reconnection (its backoff lets the job run a
        # second or more), leave it running: a resumed echo job goes on from its last step.
        future = client.submit("echo", {"delay_ms": 12000, "steps": 120})
        for _ in range(3):
            _wait_state(client, future.job_id, JobState.RUNNING)
            before = client.get(future.job_id).progress
            wait_until(lambda before=before: client.get(future.job_id).progress > before, "the job well into its run")
            assert server.stop() == 0  # the drain (0.2 s) cuts it: RUNNING, to resume
            with socket.socket() as busy:
                busy.bind(("127.0.0.1", 0))
                busy.listen()
                assert server.config_path is not None
                failed_start = subprocess.run(
                    [sys.executable, "-m", "gateway.cli", "serve", "--config", str(server.config_path),
                     "--listen", f"127.0.0.1:{busy.getsockname()[1]}", "--http-listen", "",
                     "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=60)
                assert failed_start.returncode == 5, failed_start.stderr
            server.start()
        assert future.result(timeout=60) == Output({"delay_ms": 12000, "steps": 120})
