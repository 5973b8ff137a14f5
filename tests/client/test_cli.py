"""The `gateway-client` command line against real gateway processes, run as a user would.

Golden files: every command's output is compared with ``tests/golden/cli/<name>.json``, a list of
invocations, each with its arguments, exit code, stdout (one parsed JSON message per line) and
stderr (lines), after the volatile values are replaced by placeholders: job ids by ``<job-1>``,
``<job-2>``... in order of appearance, times by ``<timestamp>``, resume and page tokens by
``<resume-token-1>`` and ``<page-token-2>``, and the model's scores and timings (transcribe) by
``<number>``. After an intended change of the output, regenerate them and review the diff:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/client/test_cli.py -k golden

The golden tests run on a gateway of their own, so that nothing else runs beside their jobs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import ECHO_CONFIG, ROOT, ServerProcess, wait_until

GOLDEN_DIR = ROOT / "tests" / "golden" / "cli"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
SEASHELLS = "tests/fixtures/seashells.wav"  # relative to ROOT, where the CLI runs
SENTENCE = "She sells seashells by the seashore."
AUTH_CONFIG = ECHO_CONFIG + '[auth]\nenabled = true\n[auth.tokens]\nalpha-token = "alpha"\n'
_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def run(target: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0,
        input_bytes: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `gateway-client --target TARGET ARGS...` from the repository root, with no GATEWAY_*
    variable but those of ``env``."""
    stdin: dict[str, Any] = {"stdin": subprocess.DEVNULL} if input_bytes is None else {"input": input_bytes.decode()}
    return subprocess.run(
        [sys.executable, "-m", "gateway_client.cli", "--target", target, *args], cwd=ROOT, capture_output=True,
        timeout=timeout, env={**_CLEAN_ENV, **(env or {})}, text=True, **stdin,
    )


def messages(done: subprocess.CompletedProcess[str]) -> list[Any]:
    """stdout as JSON messages, checking that each line is one compact JSON object."""
    parsed = []
    for line in done.stdout.splitlines():
        message = json.loads(line)
        assert isinstance(message, dict), line
        assert line == json.dumps(message, separators=(",", ":"), ensure_ascii=False), f"not compact: {line}"
        parsed.append(message)
    return parsed


def ok(server: ServerProcess, *args: str, **kwargs: Any) -> list[Any]:
    """Runs the CLI, expects exit 0 and a clean stderr; answers its stdout's messages."""
    done = run(server.target, *args, **kwargs)
    assert done.returncode == 0 and done.stderr == "", f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return messages(done)


def fails(server: ServerProcess, code: int, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = run(server.target, *args, **kwargs)
    assert done.returncode == code, f"exit {done.returncode}, not {code}\n{done.stdout}\n{done.stderr}"
    return done


def submit(server: ServerProcess, inputs: dict[str, Any], *extra: str) -> dict[str, Any]:
    """Submits to the echo route; answers the job."""
    [response] = ok(server, "submit", "--route", "echo", "--inputs", json.dumps(inputs), *extra)
    return response["job"]  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    wait_until(condition, what, timeout)


def job_state(server: ServerProcess, job_id: str) -> str:
    return ok(server, "get", job_id)[0]["job"]["state"]  # type: ignore[no-any-return]


def wait_running(server: ServerProcess, job_id: str) -> None:
    wait_for(lambda: job_state(server, job_id) == "JOB_STATE_RUNNING", f"{job_id} to run")


def wait_done(server: ServerProcess, job_id: str) -> dict[str, Any]:
    """Waits (in the server, with Fetch's timeout) for the job to end; answers the FetchResponse."""
    done = run(server.target, "fetch", job_id, "--timeout", "60")
    assert done.returncode in (0, 3, 4), done.stderr
    return messages(done)[0]  # type: ignore[no-any-return]


# -- golden files --------------------------------------------------------------------------------

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_JOB_ID = re.compile(r"\b[0-9a-f]{32}\b")
_MODEL_NUMBERS = {"avgLogprob", "noSpeechProb", "languageProbability", "probability", "startSeconds", "endSeconds"}
_TOKENS = {"resumeToken": "resume-token", "nextPageToken": "page-token"}


class Normaliser:
    """Replaces the values that change from run to run; the same job id gets the same placeholder."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.tokens: dict[str, str] = {}

    def text(self, text: str) -> str:
        for token, placeholder in self.tokens.items():
            text = text.replace(token, placeholder)
        return _JOB_ID.sub(lambda m: self.ids.setdefault(m.group(), f"<job-{len(self.ids) + 1}>"), text)

    def value(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, key) for v in value]
        if key.endswith("Time") or key == "time":
            assert isinstance(value, str) and _TIME.fullmatch(value), f"{key}: {value!r} is not an RFC 3339 time"
            return "<timestamp>"
        if key in _TOKENS and value:
            return self.tokens.setdefault(value, f"<{_TOKENS[key]}-{len(self.tokens) + 1}>")
        if key in _MODEL_NUMBERS:
            assert isinstance(value, (int, float)), f"{key}: {value!r}"
            return "<number>"
        return self.text(value) if isinstance(value, str) else value


class Golden:
    """A session of CLI invocations, recorded and compared with its golden file."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.normaliser = Normaliser()
        self.record: list[dict[str, Any]] = []

    def __call__(self, *args: str, expect: int = 0) -> list[Any]:
        done = run(self.server.target, *args)
        assert done.returncode == expect, f"exit {done.returncode}, not {expect}\n{done.stdout}\n{done.stderr}"
        output = messages(done)
        self.record.append({
            "args": [self.normaliser.text(a) for a in args],
            "exitCode": done.returncode,
            "stdout": self.normaliser.value(output),
            "stderr": [self.normaliser.text(line) for line in done.stderr.splitlines()],
        })
        return output

    def check(self, name: str) -> None:
        path = GOLDEN_DIR / f"{name}.json"
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.record, indent=2, ensure_ascii=False) + "\n")
            return
        assert path.exists(), f"{path} is missing: run UPDATE_GOLDEN=1 pytest {__file__} -k golden"
        assert self.record == json.loads(path.read_text()), f"{name}: the output differs from {path}"


@pytest.fixture(scope="module")
def golden_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A gateway for the golden tests alone: queue positions and listings depend on nothing else."""
    server = ServerProcess(tmp_path_factory.mktemp("golden"), ECHO_CONFIG).start()
    yield server
    server.stop()


@pytest.fixture
def golden(golden_server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[Golden]:
    session = Golden(golden_server)
    yield session
    name = request.node.name.removeprefix("test_golden_")
    session.check(name)


def test_golden_submit(golden: Golden) -> None:
    [response] = golden("submit", "--route", "echo", "--inputs", '{"delay_ms": 10, "text": "héllo\\nworld"}',
                        "--label", "golden=submit", "--label", "kind=a=b", "--request-id", "golden-submit")
    assert response["existing"] is False and response["job"]["state"] == "JOB_STATE_QUEUED"
    wait_done(golden.server, response["job"]["id"])
    [again] = golden("submit", "--route", "echo", "--inputs", '{"delay_ms": 10, "text": "héllo\\nworld"}',
                     "--label", "golden=submit", "--label", "kind=a=b", "--request-id", "golden-submit")
    assert again["existing"] is True and again["job"]["id"] == response["job"]["id"]


def test_golden_get(golden: Golden) -> None:
    job = submit(golden.server, {"n": 1}, "--label", "golden=get")
    wait_done(golden.server, job["id"])
    [response] = golden("get", job["id"])
    assert response["job"]["state"] == "JOB_STATE_SUCCEEDED" and response["job"]["done"] is True


def test_golden_watch(golden: Golden) -> None:
    job = submit(golden.server, {"delay_ms": 100, "steps": 2}, "--label", "golden=watch")
    wait_done(golden.server, job["id"])
    replay = golden("watch", job["id"], "--after-revision", "1")
    assert [int(m["update"]["job"]["revision"]) for m in replay] == [2, 3, 4, 5]
    golden("watch", job["id"])  # a finished job: its terminal revision alone
    failed = submit(golden.server, {"fail_with": "the model fell over"}, "--label", "golden=watch")
    wait_done(golden.server, failed["id"])
    golden("watch", failed["id"], expect=3)


def test_golden_fetch(golden: Golden) -> None:
    job = submit(golden.server, {"delay_ms": 10, "nested": {"a": [1, "two", None, True]}}, "--label", "golden=fetch")
    [response] = golden("fetch", job["id"], "--timeout", "60")
    assert response["output"] == {"delay_ms": 10, "nested": {"a": [1, "two", None, True]}}
    golden("fetch", job["id"])
    failed = submit(golden.server, {"fail_with": "the model fell over"}, "--label", "golden=fetch")
    golden("fetch", failed["id"], "--wait", expect=3)


def test_golden_cancel(golden: Golden) -> None:
    job = submit(golden.server, {"delay_ms": 600_000}, "--label", "golden=cancel")
    wait_running(golden.server, job["id"])
    [response] = golden("cancel", job["id"])
    assert response["job"]["id"] == job["id"]
    wait_done(golden.server, job["id"])
    golden("cancel", job["id"])  # already CANCELLED: unchanged


def test_golden_delete(golden: Golden) -> None:
    job = submit(golden.server, {"n": 1}, "--label", "golden=delete")
    wait_done(golden.server, job["id"])
    assert golden("delete", job["id"]) == [{}]
    golden("get", job["id"], expect=1)
    running = submit(golden.server, {"delay_ms": 600_000}, "--label", "golden=delete")
    wait_running(golden.server, running["id"])
    golden("delete", running["id"], expect=1)
    golden("delete", running["id"], "--force")


def test_golden_list(golden: Golden) -> None:
    jobs = [submit(golden.server, {"i": i}, "--label", "golden=list") for i in range(2)]
    jobs.append(submit(golden.server, {"fail_with": "nope"}, "--label", "golden=list"))
    for job in jobs:
        wait_done(golden.server, job["id"])
    pages = golden("list", "--label", "golden=list", "--page-size", "2")
    assert [j["id"] for page in pages for j in page["jobs"]] == [j["id"] for j in reversed(jobs)]  # newest first
    golden("list", "--label", "golden=list", "--state", "failed", "--route", "echo")
    golden("list", "--label", "golden=nothing")


def test_golden_watch_jobs(golden: Golden) -> None:
    job = submit(golden.server, {"delay_ms": 600_000}, "--label", "golden=watch-jobs")
    wait_running(golden.server, job["id"])
    [first] = golden("watch-jobs", "--label", "golden=watch-jobs", "--limit", "1")
    assert first["job"]["id"] == job["id"] and first["resumeToken"]
    ok(golden.server, "cancel", job["id"])
    wait_done(golden.server, job["id"])
    [resumed] = golden("watch-jobs", "--label", "golden=watch-jobs", "--resume-token", first["resumeToken"],
                       "--limit", "1")
    assert resumed["job"]["state"] == "JOB_STATE_CANCELLED" and resumed["resumeToken"]


def test_golden_transcribe(whisper_server: ServerProcess) -> None:
    session = Golden(whisper_server)
    [response] = session("transcribe", SEASHELLS, "--json", "--quiet", "--language", "en", "--label", "golden=transcribe")
    assert response["transcript"]["text"] == SENTENCE
    session.check("transcribe")


def test_golden_errors(golden: Golden) -> None:
    golden("get", "0" * 32, expect=1)
    golden("submit", "--route", "echo", "--inputs", '{"delay_ms": -1, "steps": "x"}', expect=1)
    golden("submit", "--route", "nope", "--inputs", "{}", expect=1)
    job = submit(golden.server, {"delay_ms": 600_000}, "--label", "golden=errors")
    wait_running(golden.server, job["id"])
    golden("fetch", job["id"], expect=1)  # FAILED_PRECONDITION JOB_NOT_DONE
    ok(golden.server, "cancel", job["id"])
    golden("watch", job["id"], "--after-revision", "99", expect=1)  # OUT_OF_RANGE REVISION_AHEAD


# -- exit codes ----------------------------------------------------------------------------------


def test_help_has_the_synopsis_and_the_exit_codes(echo_server: ServerProcess) -> None:
    done = run(echo_server.target, "--help")
    assert done.returncode == 0
    for command in ("submit", "get", "watch", "fetch", "cancel", "delete", "list", "watch-jobs", "transcribe"):
        assert f"gateway-client {command} " in done.stdout, command
        assert run(echo_server.target, command, "--help").returncode == 0
    for code, meaning in (("0", "ok"), ("1", "an RPC failed"), ("2", "usage"), ("3", "FAILED"),
                          ("4", "CANCELLED"), ("5", "--timeout"), ("130", "interrupted")):
        assert re.search(rf"^  {code} +.*{meaning}", done.stdout, re.M), code
    assert "GATEWAY_TOKEN_FILE" in done.stdout and "visible to" in done.stdout


def test_usage_errors_exit_2(echo_server: ServerProcess, tmp_path: Path) -> None:
    def usage(*args: str, says: str, **kwargs: Any) -> None:
        done = fails(echo_server, 2, *args, **kwargs)
        assert says in done.stderr and done.stdout == ""

    usage("submit", "--route", "echo", "--inputs", "{nope", says="not JSON")
    usage("submit", "--route", "echo", "--inputs", "[1]", says="JSON object")
    usage("submit", "--route", "echo", says="one of the arguments --inputs --inputs-file --audio is required")
    usage("submit", "--route", "echo", "--inputs", "{}", "--audio", SEASHELLS, says="not allowed with")
    usage("submit", "--route", "echo", "--inputs", "{}", "--label", "novalue", says="KEY=VALUE")
    usage("submit", "--route", "echo", "--inputs", "{}", "--language", "en", says="apply to --audio only")
    usage("submit", "--route", "echo", "--inputs-file", str(tmp_path / "absent.json"), says="absent.json")
    usage("list", "--state", "DONE", says="unknown state 'DONE'")
    usage("watch", "0" * 32, "--timeout", "-1", says="positive")
    usage("fetch", "0" * 32, "--timeout", "1", "--wait", says="not allowed with")
    usage("transcribe", str(tmp_path / "absent.wav"), says="absent.wav")
    usage("frobnicate", says="invalid choice")


def test_rpc_error_prints_the_servers_message_unaltered(echo_server: ServerProcess) -> None:
    job_id = "f" * 32
    with grpc.insecure_channel(echo_server.target) as channel, pytest.raises(grpc.RpcError) as raw:
        pb_grpc.GatewayServiceStub(channel).Get(pb.GetRequest(job_id=job_id), timeout=10)
    done = fails(echo_server, 1, "get", job_id)
    assert done.stdout == ""
    first, second = done.stderr.splitlines()
    assert first == f"NOT_FOUND JOB_NOT_FOUND: {raw.value.details()}"
    assert json.loads(second) == {"jobId": job_id}


def test_invalid_inputs_print_the_field_violations(echo_server: ServerProcess) -> None:
    done = fails(echo_server, 1, "submit", "--route", "echo", "--inputs", '{"delay_ms": -1, "steps": "x"}')
    assert done.stderr.startswith("INVALID_ARGUMENT INVALID_REQUEST: ")
    assert "\n  inputs.delay_ms: must be between 0 and 3.6e+06\n" in done.stderr
    assert done.stderr.endswith("\n  inputs.steps: must be a number\n")
    labels = fails(echo_server, 1, "submit", "--route", "echo", "--inputs", "{}", "--label", "bad key=v")
    assert "labels['bad key']" in labels.stderr


def test_request_id_twice_gives_the_same_job(echo_server: ServerProcess) -> None:
    key = f"cli-{uuid.uuid4().hex}"
    first = ok(echo_server, "submit", "--route", "echo", "--inputs", '{"a": 1}', "--request-id", key)[0]
    second = ok(echo_server, "submit", "--route", "echo", "--inputs", '{"a": 1}', "--request-id", key)[0]
    assert first["job"]["id"] == second["job"]["id"] and first["job"]["requestId"] == key
    assert (first["existing"], second["existing"]) == (False, True)
    conflict = fails(echo_server, 1, "submit", "--route", "echo", "--inputs", '{"a": 2}', "--request-id", key)
    assert conflict.stderr.startswith("ALREADY_EXISTS REQUEST_ID_CONFLICT: ")


def test_watch_exits_by_how_the_job_ended(echo_server: ServerProcess) -> None:
    good = submit(echo_server, {"delay_ms": 300, "steps": 3})
    updates = [m["update"]["job"] for m in ok(echo_server, "watch", good["id"]) if "update" in m]
    revisions = [int(u["revision"]) for u in updates]
    assert revisions == list(range(revisions[0], 7)) and updates[-1]["state"] == "JOB_STATE_SUCCEEDED"
    assert [u["done"] for u in updates] == [False] * (len(updates) - 1) + [True]
    assert ok(echo_server, "watch", good["id"], "--after-revision", "6") == []  # exit 0 still: it SUCCEEDED

    bad = submit(echo_server, {"fail_with": "the model fell over"})
    failed = fails(echo_server, 3, "watch", bad["id"])
    assert messages(failed)[-1]["update"]["job"]["error"]["message"] == "the model fell over"
    assert failed.stderr == f"gateway-client: job {bad['id']} failed: UNKNOWN ECHO_FAILURE: the model fell over\n"
    terminal = messages(failed)[-1]["update"]["job"]["revision"]
    nothing_after = fails(echo_server, 3, "watch", bad["id"], "--after-revision", terminal)
    assert nothing_after.stdout == ""  # nothing printed, and still the exit code of a failed job

    slow = submit(echo_server, {"delay_ms": 600_000})
    wait_running(echo_server, slow["id"])
    ok(echo_server, "cancel", slow["id"])
    cancelled = fails(echo_server, 4, "watch", slow["id"])
    assert messages(cancelled)[-1]["update"]["job"]["state"] == "JOB_STATE_CANCELLED"
    assert f"job {slow['id']} was cancelled" in cancelled.stderr


def test_fetch_exit_codes_and_timeout(echo_server: ServerProcess) -> None:
    slow = submit(echo_server, {"delay_ms": 600_000})
    early = fails(echo_server, 1, "fetch", slow["id"])
    assert early.stdout == "" and early.stderr.startswith("FAILED_PRECONDITION JOB_NOT_DONE: ")
    started = time.monotonic()
    waited = fails(echo_server, 5, "fetch", slow["id"], "--timeout", "0.5")
    assert time.monotonic() - started >= 0.5
    [response] = messages(waited)
    assert response["job"]["done"] is False and "output" not in response and "transcript" not in response
    assert "timed out after 0.5 s" in waited.stderr
    ok(echo_server, "cancel", slow["id"])
    cancelled = fails(echo_server, 4, "fetch", slow["id"], "--timeout", "30")
    assert messages(cancelled)[0]["job"]["state"] == "JOB_STATE_CANCELLED"
    bad = submit(echo_server, {"fail_with": "nope"})
    assert messages(fails(echo_server, 3, "fetch", bad["id"], "--wait"))[0]["job"]["error"]["message"] == "nope"
    good = submit(echo_server, {"delay_ms": 200, "x": "é"})
    assert ok(echo_server, "fetch", good["id"], "--timeout", "30")[0]["output"] == {"delay_ms": 200, "x": "é"}


def test_watch_timeout_exits_5_with_the_job_as_it_is(echo_server: ServerProcess) -> None:
    slow = submit(echo_server, {"delay_ms": 600_000})
    wait_running(echo_server, slow["id"])
    done = fails(echo_server, 5, "watch", slow["id"], "--timeout", "0.5")
    assert messages(done)[-1]["update"]["job"]["state"] == "JOB_STATE_RUNNING"
    assert f"timed out after 0.5 s: job {slow['id']} is still JOB_STATE_RUNNING at revision 2" in done.stderr
    ok(echo_server, "cancel", slow["id"])


def test_watch_jobs_ends_at_its_timeout_and_resumes(echo_server: ServerProcess) -> None:
    label = f"run={uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    assert ok(echo_server, "watch-jobs", "--label", label, "--timeout", "0.5") == []  # nothing active: exit 0
    assert time.monotonic() - started >= 0.5
    first = submit(echo_server, {"delay_ms": 600_000}, "--label", label)
    [active] = ok(echo_server, "watch-jobs", "--label", label, "--limit", "1")
    assert active["job"]["id"] == first["id"] and active["resumeToken"]
    ok(echo_server, "cancel", first["id"])
    wait_done(echo_server, first["id"])
    second = submit(echo_server, {"n": 2}, "--label", label)
    wait_done(echo_server, second["id"])
    changed = ok(echo_server, "watch-jobs", "--label", label, "--resume-token", active["resumeToken"], "--limit", "2")
    assert {m["job"]["id"]: m["job"]["state"] for m in changed} == {
        first["id"]: "JOB_STATE_CANCELLED", second["id"]: "JOB_STATE_SUCCEEDED"}
    assert all(m["resumeToken"] for m in changed)


def test_list_pages(echo_server: ServerProcess) -> None:
    label = f"run={uuid.uuid4().hex[:12]}"
    jobs = [submit(echo_server, {"i": i}, "--label", label) for i in range(3)]
    for job in jobs:
        wait_done(echo_server, job["id"])
    [page] = ok(echo_server, "list", "--label", label, "--page-size", "2", "--pages", "1")
    assert [j["id"] for j in page["jobs"]] == [jobs[2]["id"], jobs[1]["id"]] and page["nextPageToken"]
    rest = ok(echo_server, "list", "--label", label, "--page-size", "2", "--page-token", page["nextPageToken"])
    assert [j["id"] for p in rest for j in p["jobs"]] == [jobs[0]["id"]] and rest[-1]["nextPageToken"] == ""
    succeeded = ok(echo_server, "list", "--label", label, "--state", "SUCCEEDED", "--state", "JOB_STATE_FAILED")
    assert sum(len(p["jobs"]) for p in succeeded) == 3


def test_delete_force(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"delay_ms": 600_000})
    refused = fails(echo_server, 1, "delete", job["id"])
    assert refused.stderr.startswith("FAILED_PRECONDITION JOB_NOT_DONE: ")
    assert ok(echo_server, "delete", job["id"], "--force") == [{}]
    wait_for(lambda: run(echo_server.target, "get", job["id"]).returncode == 1, "the job to be forgotten")


def test_inputs_from_a_file_or_stdin(echo_server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"from": "file", "nested": {"a": [1, 2]}}))
    job = ok(echo_server, "submit", "--route", "echo", "--inputs-file", str(path), "--label", "k=a=b")[0]["job"]
    assert job["labels"] == {"k": "a=b"}
    assert wait_done(echo_server, job["id"])["output"] == {"from": "file", "nested": {"a": [1, 2]}}
    piped = ok(echo_server, "submit", "--route", "echo", "--inputs-file", "-", input_bytes=b'{"from": "stdin"}')
    assert wait_done(echo_server, piped[0]["job"]["id"])["output"] == {"from": "stdin"}
    empty = ok(echo_server, "submit", "--route", "echo", "--inputs", "{}")[0]["job"]
    assert wait_done(echo_server, empty["id"])["output"] == {}


def test_ctrl_c_exits_130(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"delay_ms": 600_000})
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_client.cli", "--target", echo_server.target, "watch", job["id"]],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_CLEAN_ENV,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # watching: the snapshot has arrived
        assert first["update"]["job"]["id"] == job["id"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        ok(echo_server, "cancel", job["id"])


def test_watch_resumes_across_a_server_crash(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(ECHO_CONFIG)
    job = submit(server, {"delay_ms": 4000, "steps": 20})
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_client.cli", "--target", server.target, "watch", job["id"]],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_CLEAN_ENV,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        server.kill()
        server.start()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    updates = [json.loads(line)["update"]["job"] for line in lines + out.splitlines() if '"update"' in line]
    revisions = [int(u["revision"]) for u in updates]
    assert revisions == sorted(set(revisions)) and updates[-1]["state"] == "JOB_STATE_SUCCEEDED"
    assert "resuming after revision" in err


# -- credentials ---------------------------------------------------------------------------------


def test_token_sources(make_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = make_server(AUTH_CONFIG)
    good, wrong, blank = tmp_path / "token", tmp_path / "wrong", tmp_path / "blank"
    good.write_text("alpha-token\n")  # a trailing newline, as editors leave it
    wrong.write_text("nope")
    blank.write_text("\n")
    args = ("list", "--pages", "1")

    missing = fails(server, 1, *args)
    assert missing.stderr.startswith("UNAUTHENTICATED ")
    ok(server, "--token", "alpha-token", *args)
    ok(server, "--token-file", str(good), *args)
    ok(server, *args, env={"GATEWAY_TOKEN": "alpha-token"})
    ok(server, *args, env={"GATEWAY_TOKEN_FILE": str(good)})
    ok(server, "--token-file", str(good), *args, env={"GATEWAY_TOKEN": "nope"})  # the flag first
    assert fails(server, 1, "--token-file", str(wrong), *args).stderr.startswith("UNAUTHENTICATED ")

    both = fails(server, 2, *args, env={"GATEWAY_TOKEN": "alpha-token", "GATEWAY_TOKEN_FILE": str(good)})
    assert "GATEWAY_TOKEN and GATEWAY_TOKEN_FILE" in both.stderr
    assert "not allowed with" in fails(server, 2, "--token", "a", "--token-file", str(good), *args).stderr
    assert "absent" in fails(server, 2, "--token-file", str(tmp_path / "absent"), *args).stderr
    assert "is empty" in fails(server, 2, *args, env={"GATEWAY_TOKEN_FILE": str(blank)}).stderr


# -- transcribe ----------------------------------------------------------------------------------


def test_transcribe_and_submit_audio(whisper_server: ServerProcess) -> None:
    done = run(whisper_server.target, "transcribe", SEASHELLS, "--language", "en", "--task", "transcribe")
    assert done.returncode == 0, done.stderr
    assert done.stdout == SENTENCE + "\n"
    [submitted] = ok(whisper_server, "submit", "--route", "whisper", "--audio", SEASHELLS, "--language", "en",
                     "--task", "transcribe", "--beam-size", "2", "--word-timestamps", "--no-vad-filter")
    result = wait_done(whisper_server, submitted["job"]["id"])
    assert result["transcript"]["text"] == SENTENCE and result["transcript"]["languageCode"] == "en"
    assert result["transcript"]["segments"][0]["words"]  # --word-timestamps reached the server
    piped = run(whisper_server.target, "transcribe", "-", "--quiet", input_bytes=b"")
    assert piped.returncode == 1  # empty stdin: the server rejects the audio
    assert piped.stderr.startswith("INVALID_ARGUMENT ")


def test_transcribe_timeout_exits_5_and_the_job_goes_on(whisper_server: ServerProcess) -> None:
    done = fails(whisper_server, 5, "transcribe", "tests/fixtures/long.ogg", "--json", "--quiet", "--timeout", "0.2")
    [response] = messages(done)
    assert response["job"]["done"] is False and "transcript" not in response
    job_id = response["job"]["id"]
    assert f"timed out after 0.2 s: job {job_id} is still" in done.stderr
    cancel = ok(whisper_server, "cancel", job_id)[0]["job"]
    assert cancel["id"] == job_id
    assert wait_done(whisper_server, job_id)["job"]["state"] == "JOB_STATE_CANCELLED"


def test_transcribe_exits_4_when_someone_cancels_the_job(whisper_server: ServerProcess) -> None:
    label = f"run={uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_client.cli", "--target", whisper_server.target, "transcribe",
         "tests/fixtures/long.ogg", "--json", "--quiet", "--label", label],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_CLEAN_ENV,
    )
    try:
        def submitted() -> list[Any]:
            return [j for page in ok(whisper_server, "list", "--label", label) for j in page["jobs"]]

        wait_for(lambda: bool(submitted()), "the transcription to be submitted")
        [job] = submitted()
        ok(whisper_server, "cancel", job["id"])
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, err
    [response] = [json.loads(line) for line in out.splitlines()]
    assert response["job"]["state"] == "JOB_STATE_CANCELLED" and "transcript" not in response
    assert f"job {job['id']} was cancelled" in err
    echo = run(whisper_server.target, "transcribe", SEASHELLS, "--route", "echo", "--quiet")
    assert echo.returncode == 1 and echo.stderr.startswith("INVALID_ARGUMENT ")  # echo takes JSON only


def test_transcribe_interrupted_exits_130_and_says_the_job_goes_on(whisper_server: ServerProcess) -> None:
    label = f"run={uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_client.cli", "--target", whisper_server.target, "transcribe",
         "tests/fixtures/long.ogg", "--quiet", "--label", label],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_CLEAN_ENV,
    )
    jobs: list[Any] = []
    try:
        def submitted() -> bool:
            jobs[:] = [j for page in ok(whisper_server, "list", "--label", label) for j in page["jobs"]]
            return bool(jobs)

        wait_for(submitted, "the transcription to be submitted")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for job in jobs:
            ok(whisper_server, "cancel", job["id"])
    assert proc.returncode == 130, err
    assert f"job {jobs[0]['id']} keeps running on the server" in err
