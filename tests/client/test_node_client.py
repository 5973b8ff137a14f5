"""Cross-language: a Node.js client on the real @grpc/grpc-js and @grpc/proto-loader."""

from __future__ import annotations

import json
import subprocess

from harness import ROOT, ServerProcess

CLIENT = ROOT / "tests" / "node" / "client.js"
ORDER = ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]


def test_node_client_submits_watches_and_fetches(node: str, echo_server: ServerProcess) -> None:
    done = subprocess.run([node, str(CLIENT), echo_server.target], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    submitted, *updates, final = lines
    assert submitted["event"] == "submitted" and submitted["state"] == "JOB_STATE_QUEUED"
    assert submitted["revision"] == 1 and submitted["existing"] is False
    assert final["event"] == "done" and final["id"] == submitted["id"]

    # Every revision of the Watch stream, once, in order, ending with the terminal one.
    assert all(u["event"] == "job" for u in updates)
    assert [u["done"] for u in updates] == [False] * (len(updates) - 1) + [True]
    assert [u["state"] for u in updates] == final["states"]
    states = final["states"]
    assert states[-1] == "JOB_STATE_SUCCEEDED" and "JOB_STATE_SUCCEEDED" not in states[:-1]
    assert [ORDER.index(s) for s in states] == sorted(ORDER.index(s) for s in states)
    revisions = final["revisions"]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))
    assert revisions[-1] == 6  # queued, running, 3 progress updates, succeeded
    progress = [u["progress"] for u in updates]
    assert progress == sorted(progress) and progress[-1] == 1

    # Fetch: the output echoes the inputs; labels made the round trip.
    assert final["final_state"] == "JOB_STATE_SUCCEEDED"
    assert final["output"] == {"delay_ms": 300, "steps": 3, "from": "node"}
    assert final["labels"] == {"client": "node"}

    # NOT_FOUND carries a google.rpc.Status with an ErrorInfo in grpc-status-details-bin.
    not_found = final["not_found"]
    assert not_found["code"] == 5 and not_found["code_name"] == "NOT_FOUND"
    assert not_found["trailer"] is True and not_found["status_code"] == 5
    assert not_found["reasons"] == ["JOB_NOT_FOUND"] and not_found["domains"] == ["gateway.inferencegateway.dev"]
    assert not_found["metadata"] == {"jobId": "0" * 32}
