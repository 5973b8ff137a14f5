"""The `gateway-client` command line against a real gateway process, run as a user would."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess, cli


def ok(server: ServerProcess, *args: str) -> list[Any]:
    """Runs the CLI, expects exit 0 and a clean stderr; answers its stdout as JSON lines."""
    done = cli(server.target, *args)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def submit(server: ServerProcess, inputs: dict[str, Any], *extra: str) -> dict[str, Any]:
    lines = ok(server, "submit", "--route", "echo", "--inputs", json.dumps(inputs), *extra)
    assert len(lines) == 1
    return lines[0]


def test_submit_prints_one_json_line(echo_server: ServerProcess) -> None:
    done = cli(echo_server.target, "submit", "--route", "echo", "--inputs", '{"x": 1}')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    job = json.loads(lines[0])
    # The protobuf JSON mapping: lowerCamelCase keys, enum names, int64 as strings, RFC 3339 times.
    assert len(job["id"]) == 32 and job["route"] == "echo"
    assert job["state"] == "JOB_STATE_QUEUED" and job["revision"] == "1"
    assert job["createTime"].endswith("Z") and "requestId" in job


def test_inputs_file_and_labels(echo_server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"from": "file", "nested": {"a": [1, 2]}}))
    job = ok(echo_server, "submit", "--route", "echo", "--inputs-file", str(path),
             "--label", "team=blue", "--label", "kind=a=b")[0]
    assert job["labels"] == {"team": "blue", "kind": "a=b"}
    assert ok(echo_server, "fetch", job["id"], "--wait") == [{"from": "file", "nested": {"a": [1, 2]}}]


def test_request_id_twice_gives_the_same_job(echo_server: ServerProcess) -> None:
    key = f"cli-{uuid.uuid4().hex}"
    first = submit(echo_server, {"a": 1}, "--request-id", key)
    second = submit(echo_server, {"a": 1}, "--request-id", key)
    assert first["id"] == second["id"] and first["requestId"] == key
    conflict = cli(echo_server.target, "submit", "--route", "echo", "--inputs", '{"a": 2}', "--request-id", key)
    assert conflict.returncode != 0 and "ALREADY_EXISTS REQUEST_ID_CONFLICT" in conflict.stderr


def test_watch_prints_every_update_and_ends(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"delay_ms": 300, "steps": 3})
    updates = ok(echo_server, "watch", job["id"])
    assert len(updates) >= 2 and all(u["id"] == job["id"] for u in updates)
    revisions = [int(u["revision"]) for u in updates]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions))) and revisions[-1] == 6
    assert updates[-1]["state"] == "JOB_STATE_SUCCEEDED"
    assert all(u["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING") for u in updates[:-1])

    replay = ok(echo_server, "watch", job["id"], "--after-revision", "3")
    assert [int(u["revision"]) for u in replay] == [4, 5, 6]
    assert replay[-1]["state"] == "JOB_STATE_SUCCEEDED"
    assert ok(echo_server, "watch", job["id"], "--after-revision", "6") == []
    ahead = cli(echo_server.target, "watch", job["id"], "--after-revision", "99")
    assert ahead.returncode != 0 and "OUT_OF_RANGE REVISION_AHEAD" in ahead.stderr


def test_fetch(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"delay_ms": 20, "text": "héllo\nworld"})
    assert ok(echo_server, "fetch", job["id"], "--wait") == [{"delay_ms": 20, "text": "héllo\nworld"}]
    assert ok(echo_server, "fetch", job["id"]) == [{"delay_ms": 20, "text": "héllo\nworld"}]


def test_fetch_unfinished_then_cancel(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"delay_ms": 60_000})
    early = cli(echo_server.target, "fetch", job["id"])
    assert early.returncode != 0 and early.stdout == ""
    assert "FAILED_PRECONDITION JOB_NOT_DONE" in early.stderr
    cancelled = ok(echo_server, "cancel", job["id"])
    assert len(cancelled) == 1 and cancelled[0]["state"] == "JOB_STATE_CANCELLED"
    assert cancelled[0]["error"]["code"] == 1  # google.rpc.Code CANCELLED
    fetched = cli(echo_server.target, "fetch", job["id"])
    assert fetched.returncode != 0 and "CANCELLED" in fetched.stderr


def test_fetch_wait_waits_for_the_end(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"delay_ms": 800, "steps": 2, "w": True})
    assert ok(echo_server, "fetch", job["id"], "--wait") == [{"delay_ms": 800, "steps": 2, "w": True}]
    assert ok(echo_server, "get", job["id"])[0]["state"] == "JOB_STATE_SUCCEEDED"


def test_list_by_state_and_label(echo_server: ServerProcess) -> None:
    run = uuid.uuid4().hex[:12]
    good = [submit(echo_server, {"i": i}, "--label", f"run={run}") for i in range(3)]
    bad = submit(echo_server, {"fail_with": "nope"}, "--label", f"run={run}")
    for job in (*good, bad):
        cli(echo_server.target, "fetch", job["id"], "--wait")
    succeeded = ok(echo_server, "list", "--state", "SUCCEEDED", "--label", f"run={run}")
    assert sorted(j["id"] for j in succeeded) == sorted(j["id"] for j in good)
    assert all(j["state"] == "JOB_STATE_SUCCEEDED" for j in succeeded)
    ids = [j["id"] for j in succeeded]
    assert ids == sorted(ids, reverse=True)  # newest first
    failed = ok(echo_server, "list", "--state", "failed", "--label", f"run={run}")
    assert [j["id"] for j in failed] == [bad["id"]]
    everything = ok(echo_server, "list", "--label", f"run={run}", "--route", "echo")
    assert len(everything) == 4
    one_page = cli(echo_server.target, "list", "--label", f"run={run}", "--page-size", "2")
    assert one_page.returncode == 0 and len(one_page.stdout.splitlines()) == 2
    assert "next page: --page-token" in one_page.stderr
    unknown = cli(echo_server.target, "list", "--state", "DONE")
    assert unknown.returncode == 2 and "unknown state" in unknown.stderr


def test_get_unknown_job(echo_server: ServerProcess) -> None:
    done = cli(echo_server.target, "get", "0" * 32)
    assert done.returncode != 0 and done.stdout == ""
    assert "NOT_FOUND JOB_NOT_FOUND" in done.stderr


def test_failed_job(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"fail_with": "the model fell over"})
    done = cli(echo_server.target, "fetch", job["id"], "--wait")
    assert done.returncode != 0 and done.stdout == ""
    assert "ECHO_FAILURE" in done.stderr and "the model fell over" in done.stderr
    failed = ok(echo_server, "get", job["id"])[0]
    assert failed["state"] == "JOB_STATE_FAILED"
    assert failed["error"]["message"] == "the model fell over"


def test_invalid_inputs_print_the_field_violations(echo_server: ServerProcess) -> None:
    done = cli(echo_server.target, "submit", "--route", "echo", "--inputs", '{"delay_ms": -1, "steps": "x"}')
    assert done.returncode != 0 and done.stdout == ""
    assert "INVALID_ARGUMENT INVALID_REQUEST" in done.stderr
    assert "  inputs.delay_ms: must be between 0 and 3.6e+06" in done.stderr
    assert "  inputs.steps: must be a number" in done.stderr
    labels = cli(echo_server.target, "submit", "--route", "echo", "--inputs", "{}", "--label", "bad key=v")
    assert labels.returncode != 0 and "labels['bad key']" in labels.stderr
    route = cli(echo_server.target, "submit", "--route", "nope", "--inputs", "{}")
    assert route.returncode != 0 and "NOT_FOUND ROUTE_NOT_FOUND" in route.stderr


def test_usage_errors(echo_server: ServerProcess, tmp_path: Path) -> None:
    not_json = cli(echo_server.target, "submit", "--route", "echo", "--inputs", "{nope")
    assert not_json.returncode != 0 and "not JSON" in not_json.stderr
    not_object = cli(echo_server.target, "submit", "--route", "echo", "--inputs", "[1]")
    assert not_object.returncode != 0 and "JSON object" in not_object.stderr
    neither = cli(echo_server.target, "submit", "--route", "echo")
    assert neither.returncode != 0 and "exactly one of" in neither.stderr
    bad_label = cli(echo_server.target, "submit", "--route", "echo", "--inputs", "{}", "--label", "novalue")
    assert bad_label.returncode != 0 and "k=v" in bad_label.stderr
    missing = cli(echo_server.target, "submit", "--route", "echo", "--inputs-file", str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and "absent.json" in missing.stderr


def test_delete(echo_server: ServerProcess) -> None:
    job = submit(echo_server, {"d": 1})
    ok(echo_server, "fetch", job["id"], "--wait")
    assert ok(echo_server, "delete", job["id"]) == []
    gone = cli(echo_server.target, "get", job["id"])
    assert gone.returncode != 0 and "NOT_FOUND JOB_NOT_FOUND" in gone.stderr
