"""The ``echo`` route: a built-in diagnostic, like Triton's identity model.

Inputs (all optional, other keys are echoed too):
- ``delay_ms``: total run time in milliseconds (0 to 3,600,000);
- ``steps``: how many progress updates to publish along the way (0 to 10,000);
- ``fail_with``: a message: the job ends FAILED with it (reason ECHO_FAILURE).
- ``fail_attempts``: its first N runs fail with a transient error (ECHO_TRANSIENT_FAILURE), which the
  route's retry policy ([routes.<name>.retry]) runs again.
The result is the inputs, unchanged. Useful to smoke-test a deployment and to load-test it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from gateway.backends.base import JobContext, ReadyState
from gateway.errors import Code, FieldViolation, InvalidArgument, JobError
from gateway.jobs import JobInput, JobOutput, Result
from gateway.settings import EchoRoute

__all__ = ["EchoBackend"]

MAX_DELAY_MS = 3_600_000
MAX_STEPS = 10_000


def _number(inputs: dict[str, Any], key: str, upper: float, integral: bool) -> FieldViolation | None:
    value = inputs.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return FieldViolation(f"inputs.{key}", "must be a number")
    if not 0 <= value <= upper:
        return FieldViolation(f"inputs.{key}", f"must be between 0 and {upper:g}")
    if integral and value != int(value):
        return FieldViolation(f"inputs.{key}", "must be a whole number")
    return None


class EchoBackend:
    def __init__(self, settings: EchoRoute) -> None:
        self.settings = settings
        self.readiness = ReadyState()
        self.reports_start = False
        self.concurrency: int | None = None

    async def start(self) -> None:
        self.readiness.set(True)

    async def close(self) -> None:
        self.readiness.set(False)

    async def validate(self, job_input: JobInput) -> JobInput:
        if job_input.transcription is not None:
            raise InvalidArgument.fields(FieldViolation("transcription", "the echo route takes JSON inputs"))
        inputs = dict(job_input.inputs or {})
        problems = [
            _number(inputs, "delay_ms", MAX_DELAY_MS, integral=False),
            _number(inputs, "steps", MAX_STEPS, integral=True),
            _number(inputs, "fail_attempts", 100, integral=True),
        ]
        fail_with = inputs.get("fail_with")
        if fail_with is not None and (not isinstance(fail_with, str) or not 0 < len(fail_with) <= 1024):
            problems.append(FieldViolation("inputs.fail_with", "must be a message of 1 to 1024 characters"))
        violations = [p for p in problems if p is not None]
        if violations:
            raise InvalidArgument.fields(*violations)
        return JobInput(inputs=inputs)

    async def run(self, ctx: JobContext) -> Result:
        inputs = dict(ctx.input.inputs or {})
        delay = float(inputs.get("delay_ms") or 0) / 1000.0
        steps = int(inputs.get("steps") or 0)
        if steps:
            done = round(ctx.job.progress * steps)  # resumed after a restart: skip what was done
            for step in range(done + 1, steps + 1):
                await asyncio.sleep(delay / steps)
                await ctx.report(progress=step / steps)
        elif delay:
            await asyncio.sleep(delay)
        if ctx.job.attempt <= int(inputs.get("fail_attempts") or 0):
            raise JobError(f"run {ctx.job.attempt} fails as asked (fail_attempts)", reason="ECHO_TRANSIENT_FAILURE",
                           code=Code.UNAVAILABLE, transient=True)
        if inputs.get("fail_with"):
            raise JobError(str(inputs["fail_with"]), reason="ECHO_FAILURE")
        return JobOutput(inputs)
