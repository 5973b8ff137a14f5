"""The table of active jobs: what this process holds of each job it has a hand in, one record per job.

A record lives while any of its parts does, and goes with the last of them:

- ``head``: the latest snapshot handed to the store, for a job this process runs or queues. Every
  change is computed from it synchronously, so two concurrent changes never take the same revision.
- ``committed``: the latest committed revision, what readers here see. Also kept for a job submitted
  here and run by another process (a shared store): it follows the bus, so a reader here never sees
  older than a watcher did.
- ``input``: the job's input, kept in memory within a byte budget shared by every job, so that the
  worker that starts it need not read it back; beyond the budget it is read from the store.
- ``submitting``: a job this process's Submit is storing in a shared store. A worker here may take it
  from the shared queue before the store's answer is back (the queue is written in the same step).
- ``attempt``, ``counted``, ``checkpoint``: of the job's current run.

Finished jobs have no record: they are read from the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.hub import JobEvent
from gateway.jobs import Job, JobInput

__all__ = ["INPUTS_IN_MEMORY_BYTES", "ActiveJob", "ActiveJobs", "Submitting"]

# Queued jobs' inputs stay in memory too (no read when they start) within this budget; beyond it
# they are read back from the store.
INPUTS_IN_MEMORY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Submitting:
    """A job being stored by this process's Submit, as it made it, with its input and its size."""

    job: Job
    input: JobInput
    size: int


@dataclass(slots=True)
class ActiveJob:
    """One job's record; see the module docstring for what each part means."""

    head: Job | None = None
    committed: JobEvent | None = None
    input: JobInput | None = None
    input_size: int = 0
    submitting: Submitting | None = None
    attempt: int | None = None  # the current run (0: not run yet); None: not known here
    counted: bool = False  # taken over from another worker: the attempt is counted already
    checkpoint: Mapping[str, Any] | None = None

    def empty(self) -> bool:
        return (self.head is None and self.committed is None and self.input is None and self.submitting is None
                and self.attempt is None and not self.counted and self.checkpoint is None)


class ActiveJobs:
    """The records by job id. Every change goes through a method here, which drops a record once it
    holds nothing, and keeps the inputs' byte count with the inputs."""

    def __init__(self, input_budget: int = INPUTS_IN_MEMORY_BYTES) -> None:
        self._jobs: dict[str, ActiveJob] = {}
        self.input_budget = input_budget
        self.input_bytes = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> ActiveJob | None:
        return self._jobs.get(job_id)

    def _record(self, job_id: str) -> ActiveJob:
        record = self._jobs.get(job_id)
        if record is None:
            record = self._jobs[job_id] = ActiveJob()
        return record

    def _tidy(self, job_id: str, record: ActiveJob) -> None:
        if record.empty() and self._jobs.get(job_id) is record:
            del self._jobs[job_id]

    # -- reads -----------------------------------------------------------------------------------

    def head(self, job_id: str) -> Job | None:
        record = self._jobs.get(job_id)
        return record.head if record is not None else None

    def committed(self, job_id: str) -> JobEvent | None:
        record = self._jobs.get(job_id)
        return record.committed if record is not None else None

    def attempt(self, job_id: str) -> int | None:
        record = self._jobs.get(job_id)
        return record.attempt if record is not None else None

    def heads(self) -> list[tuple[str, Job]]:
        """The jobs this process holds (runs or queues), with their heads: a copy, safe to change under."""
        return [(job_id, r.head) for job_id, r in self._jobs.items() if r.head is not None]

    def cached(self) -> list[str]:
        """The jobs with a committed revision here that this process does not hold (run elsewhere)."""
        return [job_id for job_id, r in self._jobs.items() if r.committed is not None and r.head is None]

    # -- changes ---------------------------------------------------------------------------------

    def set_head(self, job_id: str, job: Job) -> None:
        self._record(job_id).head = job

    def set_committed(self, job_id: str, event: JobEvent) -> None:
        self._record(job_id).committed = event

    def drop_committed(self, job_id: str) -> None:
        record = self._jobs.get(job_id)
        if record is not None:
            record.committed = None
            self._tidy(job_id, record)

    def set_attempt(self, job_id: str, attempt: int) -> None:
        self._record(job_id).attempt = attempt

    def drop_attempt(self, job_id: str) -> None:
        record = self._jobs.get(job_id)
        if record is not None:
            record.attempt = None
            self._tidy(job_id, record)

    def mark_counted(self, job_id: str) -> None:
        self._record(job_id).counted = True

    def take_counted(self, job_id: str) -> bool:
        """Whether the job's attempt was counted as it was taken over; the mark goes."""
        record = self._jobs.get(job_id)
        if record is None or not record.counted:
            return False
        record.counted = False
        self._tidy(job_id, record)
        return True

    def set_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any] | None) -> None:
        record = self._record(job_id)
        record.checkpoint = checkpoint
        self._tidy(job_id, record)

    def take_checkpoint(self, job_id: str) -> Mapping[str, Any] | None:
        record = self._jobs.get(job_id)
        if record is None:
            return None
        checkpoint, record.checkpoint = record.checkpoint, None
        self._tidy(job_id, record)
        return checkpoint

    def keep_input(self, job_id: str, job_input: JobInput, size: int) -> None:
        """Keeps the input if the budget has room for it (it goes when the job starts or ends)."""
        if self.input_bytes + size > self.input_budget:
            return
        record = self._record(job_id)
        if record.input is not None:
            self.input_bytes -= record.input_size
        record.input, record.input_size = job_input, size
        self.input_bytes += size

    def take_input(self, job_id: str) -> JobInput | None:
        record = self._jobs.get(job_id)
        if record is None or record.input is None:
            return None
        job_input, record.input = record.input, None
        self.input_bytes -= record.input_size
        record.input_size = 0
        self._tidy(job_id, record)
        return job_input

    def start_submitting(self, job_id: str, submitting: Submitting) -> None:
        self._record(job_id).submitting = submitting

    def take_submitting(self, job_id: str) -> Submitting | None:
        record = self._jobs.get(job_id)
        if record is None or record.submitting is None:
            return None
        submitting, record.submitting = record.submitting, None
        self._tidy(job_id, record)
        return submitting

    def ended(self, job_id: str) -> None:
        """The job's terminal revision was made: it is no longer held here (its committed revision
        stays until the store commits that one)."""
        record = self._jobs.get(job_id)
        if record is None:
            return
        record.head = None
        record.checkpoint = None
        self.take_input(job_id)
        self._tidy(job_id, record)

    def forget(self, job_id: str) -> None:
        """Drops what this process holds of a job (deleted, or taken over elsewhere); a Submit still
        storing it keeps its part, which that Submit takes back itself."""
        record = self._jobs.get(job_id)
        if record is None:
            return
        self.take_input(job_id)
        record.head = record.committed = record.checkpoint = None
        record.attempt = None
        record.counted = False
        self._tidy(job_id, record)
