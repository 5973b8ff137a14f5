"""Every gateway error answers HTTP alike in every sub-app of the HTTP face (the OctoAI facade, the
dashboard's API), at the status of the one table that the gRPC status comes from too; on a real
listener (port 0) with a job service that raises the error under test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.api.auth import Authenticator
from gateway.api.status import to_status
from gateway.bus import MemoryBus
from gateway.errors import (
    AlreadyExists,
    Code,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from gateway.http import HttpFace
from gateway.settings import Settings

# (the error, the HTTP status it must answer): every code, the reasons with a status of their own,
# and the error classes with their default reasons.
CASES: list[tuple[GatewayError, int]] = [
    (GatewayError("cancelled", "CLIENT_GONE", Code.CANCELLED), 409),
    (GatewayError("unknown", "ERROR", Code.UNKNOWN), 500),
    (GatewayError("bad", "INVALID_REQUEST", Code.INVALID_ARGUMENT), 400),
    (GatewayError("late", "PREDICT_TIMEOUT", Code.DEADLINE_EXCEEDED), 504),
    (GatewayError("gone", "JOB_NOT_FOUND", Code.NOT_FOUND), 404),
    (GatewayError("again", "REQUEST_ID_CONFLICT", Code.ALREADY_EXISTS), 409),
    (GatewayError("no", "CROSS_ORIGIN_REQUEST", Code.PERMISSION_DENIED), 403),
    (GatewayError("full", "QUEUE_FULL", Code.RESOURCE_EXHAUSTED, retry_after=2.0), 429),
    (GatewayError("not yet", "JOB_NOT_DONE", Code.FAILED_PRECONDITION), 409),
    (GatewayError("raced", "ABORTED", Code.ABORTED), 409),
    (GatewayError("past", "INVALID_PAGE_TOKEN", Code.OUT_OF_RANGE), 400),
    (GatewayError("no such", "UNIMPLEMENTED", Code.UNIMPLEMENTED), 501),
    (GatewayError("oops", "INTERNAL", Code.INTERNAL), 500),
    (GatewayError("later", "SHUTTING_DOWN", Code.UNAVAILABLE), 503),
    (GatewayError("lost", "STORE_CORRUPT", Code.DATA_LOSS), 500),
    (GatewayError("who", "INVALID_TOKEN", Code.UNAUTHENTICATED), 401),
    (GatewayError("big", "REQUEST_TOO_LARGE", Code.RESOURCE_EXHAUSTED), 413),
    (GatewayError("big", "AUDIO_TOO_LARGE", Code.RESOURCE_EXHAUSTED), 413),
    (GatewayError("big", "INPUT_TOO_LARGE", Code.RESOURCE_EXHAUSTED), 413),
    (GatewayError("slow", "REQUEST_TIMEOUT", Code.DEADLINE_EXCEEDED), 408),
    (GatewayError("elsewhere", "HOST_NOT_ALLOWED", Code.PERMISSION_DENIED), 421),
    (AlreadyExists("request_id reused with another request"), 409),
    (InvalidArgument("bad"), 400),
    (NotFound("gone"), 404),
    (FailedPrecondition("not yet"), 409),
    (PermissionDenied("not yours"), 403),
    (PermissionDenied("not yours", reason="TENANT_NOT_ALLOWED"), 403),
    (ResourceExhausted("full"), 429),
    (Unauthenticated("who"), 401),
    (Unavailable("later"), 503),
]

# Each sub-app's path that reads one job (JobService.get): the error under test is raised there.
PATHS = {"facade": "/v1/requests/{id}", "dashboard": "/api/dashboard/jobs/{id}"}


class RaisingService:
    """A job service whose get() raises the error registered for the job id."""

    def __init__(self) -> None:
        self.errors: dict[str, BaseException] = {}
        self.bus = MemoryBus()  # (the dashboard counts the jobs that end on it)

    async def get(self, tenant: str, job_id: str) -> Any:
        raise self.errors[job_id]


@pytest.fixture
async def face() -> AsyncIterator[tuple[str, RaisingService]]:
    settings = Settings()
    service = RaisingService()
    http = HttpFace(settings, service, Authenticator(settings.auth), lambda name: True)  # type: ignore[arg-type]
    port = await http.start("127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        await http.stop()


async def _answers(base: str, job_id: str) -> dict[str, tuple[int, dict[str, Any], dict[str, str]]]:
    answers = {}
    async with aiohttp.ClientSession() as session:
        for face, path in PATHS.items():
            async with session.get(base + path.format(id=job_id)) as response:
                answers[face] = (response.status, await response.json(), dict(response.headers))
    return answers


def test_every_code_has_one_http_status_in_the_table() -> None:
    assert {type(error) for error, _ in CASES} >= {AlreadyExists, InvalidArgument, NotFound}
    assert {error.code for error, _ in CASES} == set(Code) - {Code.OK}


async def test_every_error_answers_alike_in_every_sub_app(face: tuple[str, RaisingService]) -> None:
    base, service = face
    for number, (error, status) in enumerate(CASES):
        job_id = f"job-{number}"
        service.errors[job_id] = error
        assert to_status(error).code == int(error.code)  # gRPC: the code of the same table
        answers = await _answers(base, job_id)
        for name, (got, body, headers) in answers.items():
            assert got == status, (name, error, got, body)
            assert body == {"status": "error", "error": {"code": error.code.name, "reason": error.reason,
                                                         "message": error.message}}, (name, body)
            assert headers.get("Cache-Control") == "no-store", (name, headers)
            assert headers.get("Retry-After") == ("2" if error.retry_after else None), (name, headers)
        assert answers["facade"][:2] == answers["dashboard"][:2]


async def test_already_exists_is_409_not_500(face: tuple[str, RaisingService]) -> None:
    base, service = face
    service.errors["again"] = AlreadyExists("request_id reused with another request")
    answers = await _answers(base, "again")
    assert {name: answer[0] for name, answer in answers.items()} == {"facade": 409, "dashboard": 409}


async def test_a_bug_is_500_internal_with_no_traceback(face: tuple[str, RaisingService]) -> None:
    base, service = face
    service.errors["bug"] = RuntimeError("a secret traceback")
    for name, (status, body, _) in (await _answers(base, "bug")).items():
        assert (status, body["error"]["code"], body["error"]["reason"]) == (500, "INTERNAL", "INTERNAL"), name
        assert "secret" not in body["error"]["message"]
