"""A whisper job that changes hands mid-transcription ends with the transcript of a run that did not.

Every way a job changes hands is tried, in both stores: a worker killed (kill -9), drained (SIGTERM),
stalled past its lease while alive (SIGSTOP: it must not write to the job once another worker owns it,
even after it wakes), and a process that comes back under its own identity. The property is the same
each time: the words of an uninterrupted run (but for a word whisper hears otherwise from another
start), segment times increasing, no segment twice, and every revision seen by a watcher once, in order.
"""

from __future__ import annotations

import itertools
import signal
import socket
import threading
from collections.abc import Callable

import pytest

from gateway_client import Client, Job, JobState, Transcript
from harness import FIXTURES, ServerProcess, wait_until
from harness.audio import word_error_rate
from harness.redis import RedisProcess

pytestmark = pytest.mark.slow

LEASE = 1.5


@pytest.fixture(scope="module")
def audio() -> bytes:
    """Twice the long fixture (105 s): long enough that a second worker can start while it runs."""
    from harness.audio import repeated_speech

    return repeated_speech((FIXTURES / "long.ogg").read_bytes(), 105.0)


def _words(text: str) -> list[str]:
    return [w.strip(".,!?;:\"'").lower() for w in text.replace("-", " ").split() if w.strip(".,!?;:\"'")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, audio: bytes) -> Transcript:
    """The transcript of an uninterrupted run of the same audio, in one process."""
    server = ServerProcess(tmp_path_factory.mktemp("reference"), '[routes.whisper]\nbackend = "whisper"\n').start()
    try:
        server.wait_serving("route/whisper")
        with Client(server.target, timeout=60) as client:
            result = client.transcribe(audio).result(timeout=300)
    finally:
        server.stop()
    assert isinstance(result, Transcript)
    return result


class Watcher:
    """Every revision of a job a watcher sees, from submission to the end, in a thread of its own."""

    def __init__(self, target: str, job_id: str) -> None:
        self.jobs: list[Job] = []
        self._client = Client(target, timeout=60)
        self._thread = threading.Thread(target=self._run, args=(job_id,), daemon=True)
        self._thread.start()

    def _run(self, job_id: str) -> None:
        for job in self._client.watch(job_id, timeout=600):
            self.jobs.append(job)

    def segments(self) -> int:
        return len(self.jobs[-1].segments) if self.jobs else 0

    def join(self) -> list[Job]:
        self._thread.join(timeout=300)
        assert not self._thread.is_alive(), "the watcher did not end"
        self._client.close()
        return self.jobs


def _check(reference: Transcript, result: object, seen: list[Job]) -> None:
    assert isinstance(result, Transcript)
    # Whisper decodes each window in the context of where it starts, so a run resumed after a segment may
    # hear a word or two otherwise ("may" for "make"); a part transcribed twice (or skipped) is a tenth of
    # the words or more.
    words, expected = _words(result.text), _words(reference.text)
    assert abs(len(words) - len(expected)) <= max(3, len(expected) // 50), (result.text, reference.text)
    assert word_error_rate(" ".join(expected), " ".join(words)) < 0.04, (result.text, reference.text)
    for earlier, later in itertools.pairwise(result.segments):  # in order, none twice
        assert later.start >= earlier.end - 0.05, (earlier, later)
    revisions = [job.revision for job in seen]
    assert revisions == list(range(revisions[0], revisions[-1] + 1)), revisions  # each once, in order
    assert seen[-1].state is JobState.SUCCEEDED and seen[-1].segments == result.segments


def _interrupt(watcher: Watcher, how: Callable[[], None]) -> None:
    """Once the job has published a first part (and not the whole), ``how`` takes it from its worker."""
    wait_until(lambda: watcher.segments() >= 1, "a first segment", timeout=120, interval=0.01)
    assert watcher.jobs[-1].state is JobState.RUNNING and watcher.jobs[-1].progress < 0.6
    how()


# -- Redis: an API replica and worker processes -----------------------------------------------------


class Cluster:
    """An API replica that runs no jobs and whisper worker processes, on one real Redis."""

    def __init__(self, make_server: Callable[..., ServerProcess], redis: RedisProcess, lease: float) -> None:
        self.make_server = make_server
        self.config = (f'store = "{redis.url}"\nshutdown_grace_seconds = 0\nlease_seconds = {lease}\n'
                       '[routes.whisper]\nbackend = "whisper"\n')
        self.api = make_server(self.config, args=("--workers", "0"))

    def worker(self, identity: str = "") -> ServerProcess:
        env = {"GATEWAY_WORKER_ID": identity} if identity else None
        process = self.make_server(self.config, command="worker", args=("--route", "whisper", "--workers", "1"), env=env)
        process.wait_serving("route/whisper")
        return process

    def run(self, audio: bytes, reference: Transcript, interrupt: Callable[[], None]) -> None:
        with Client(self.api.target, timeout=60) as client:
            future = client.transcribe(audio)
            watcher = Watcher(self.api.target, future.job_id)
            _interrupt(watcher, interrupt)
            result = future.result(timeout=300)
        _check(reference, result, watcher.join())


@pytest.fixture
def cluster(make_server: Callable[..., ServerProcess], redis_process: RedisProcess) -> Cluster:
    redis_process.flush()
    return Cluster(make_server, redis_process, LEASE)


def test_a_killed_workers_whisper_job_resumes_on_another_with_the_same_transcript(
        cluster: Cluster, audio: bytes, reference: Transcript) -> None:
    first = cluster.worker()

    def kill() -> None:
        first.kill()
        cluster.worker()

    cluster.run(audio, reference, kill)


def test_a_drained_workers_whisper_job_goes_on_at_once_on_another_with_the_same_transcript(
        make_server: Callable[..., ServerProcess], redis_process: RedisProcess, audio: bytes,
        reference: Transcript) -> None:
    redis_process.flush()
    cluster = Cluster(make_server, redis_process, lease=600)  # no lease lapses: the drain hands the job over
    first = cluster.worker()
    taken: list[ServerProcess] = []

    def drain() -> None:
        taken.append(cluster.worker())
        first.stop()  # SIGTERM, with no grace: the job is interrupted and handed over

    cluster.run(audio, reference, drain)
    assert "took job" in taken[0].log()


def test_a_stalled_worker_past_its_lease_writes_nothing_once_another_took_its_job_over(
        cluster: Cluster, audio: bytes, reference: Transcript) -> None:
    first = cluster.worker()
    assert first.proc is not None
    proc = first.proc

    def stall() -> None:
        second = cluster.worker()
        proc.send_signal(signal.SIGSTOP)  # alive but silent: its lease lapses and the second takes over
        wait_until(lambda: "took job" in second.log(), "the second worker to take the job over", timeout=60)
        proc.send_signal(signal.SIGCONT)  # wakes mid-transcription, with revisions to write

    cluster.run(audio, reference, stall)
    wait_until(lambda: "taken over by another worker" in first.log(), "the first worker to let the job go")


def test_a_worker_back_under_its_own_identity_takes_its_job_back_at_once(
        make_server: Callable[..., ServerProcess], redis_process: RedisProcess, audio: bytes,
        reference: Transcript) -> None:
    redis_process.flush()
    cluster = Cluster(make_server, redis_process, lease=600)  # waiting the lease out would take ten minutes
    first = cluster.worker(identity="worker-a")

    def crash_and_restart() -> None:
        first.kill()
        first.start()  # the same identity: the job is its own, taken back without waiting for the lease
        first.wait_serving("route/whisper")

    cluster.run(audio, reference, crash_and_restart)


# -- SQLite: one process, restarted ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_restarted_process_resumes_its_whisper_job_with_the_same_transcript(
        make_server: Callable[..., ServerProcess], audio: bytes, reference: Transcript, how: str) -> None:
    server = make_server('shutdown_grace_seconds = 0\n[routes.whisper]\nbackend = "whisper"\n')
    server.wait_serving("route/whisper")
    with Client(server.target, timeout=60) as client:
        job_id = client.transcribe(audio).job_id
    watcher = Watcher(server.target, job_id)  # its client resumes the stream across the restart

    def restart() -> None:
        server.kill() if how == "kill" else server.stop()
        server.start()

    _interrupt(watcher, restart)
    seen = watcher.join()
    with Client(server.target, timeout=60) as client:
        result = client.fetch(job_id).result
    _check(reference, result, seen)


def test_a_replica_killed_with_jobs_accepted_finishes_them_at_once_after_its_restart(
        make_server: Callable[..., ServerProcess], redis_process: RedisProcess) -> None:
    """One Redis replica that runs its own workers, killed with 20 jobs accepted and restarted on its port:
    under its own identity again, it takes its jobs back at once instead of waiting out the lease of its
    previous life (ten minutes here)."""
    redis_process.flush()
    with socket.socket() as sock:  # a fixed port from the first start: with it, the process's identity
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = make_server(f'store = "{redis_process.url}"\nlease_seconds = 600\n[routes.echo]\nbackend = "echo"\n'
                         "workers = 4\n", args=("--listen", f"127.0.0.1:{port}"))
    with Client(server.target, timeout=60) as client:
        ids = [client.submit("echo", {"delay_ms": 1500, "steps": 3, "i": i}).job_id for i in range(20)]
        wait_until(lambda: client.get(ids[0]).state is JobState.RUNNING, "a job to start")
    server.kill()
    server.start()
    with Client(server.target, timeout=60) as client:
        wait_until(lambda: all(client.get(i).state is JobState.SUCCEEDED for i in ids), "every job to finish",
                   timeout=60)
        assert [client.fetch(i).result.value["i"] for i in ids] == list(range(20))  # type: ignore[union-attr]
