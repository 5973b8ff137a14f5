"""`gateway-client` for people and for scripts: a table on a terminal and JSON lines in a pipe, ``-o id`` / ``-q``
for ids alone, errors said once with what to do about them, a target without a port refused, and shell
completion made from the parser."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from gateway_client import Client
from harness import ROOT, ServerProcess, cli
from harness.redis import _free_port

JOB_ID = re.compile(r"[0-9a-f]{32}")


def _on_a_terminal(*args: str) -> str:
    """The CLI's stdout when it is a terminal (a pseudo-terminal here), as a person sees it."""
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "gateway_client.cli", *args], stdout=follower,
                              stderr=subprocess.PIPE, timeout=60, cwd=ROOT)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert done.returncode == 0, done.stderr
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_quiet_submit_prints_only_the_id_for_a_shell_variable(echo_server: ServerProcess) -> None:
    done = cli(echo_server.target, "submit", "--route", "echo", "--inputs", "{}", "-q")
    assert done.returncode == 0, done.stderr
    assert JOB_ID.fullmatch(done.stdout.strip()) and done.stdout.count("\n") == 1
    job_id = done.stdout.strip()
    got = cli(echo_server.target, "get", job_id, "-o", "id")
    assert got.stdout == job_id + "\n"


def test_a_terminal_gets_tables_and_a_pipe_gets_json_lines(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        failed = client.submit_job("echo", {"fail_with": "the model fell over"}, labels={"people": "yes"}).job
        ok = client.submit_job("echo", {}, labels={"people": "yes"}).job
        for job in (failed, ok):
            list(client.watch(job.id))
    table = _on_a_terminal("--target", echo_server.target, "list", "--label", "people=yes")
    head, *rows = table.splitlines()
    assert head.split() == ["ID", "ROUTE", "STATE", "PROGRESS", "AGE", "ERROR"]
    by_id = {row.split()[0]: row for row in rows}
    assert set(by_id) == {failed.id, ok.id}
    assert "FAILED" in by_id[failed.id] and "ECHO_FAILURE: the model fell over" in by_id[failed.id]
    assert "SUCCEEDED" in by_id[ok.id] and "100%" in by_id[ok.id] and "JOB_STATE" not in table
    fields = _on_a_terminal("--target", echo_server.target, "get", failed.id)
    assert re.search(r"^state:\s+FAILED$", fields, re.M) and re.search(r"^error:\s+ECHO_FAILURE: the model fell over$",
                                                                       fields, re.M)
    assert re.search(r"^labels:\s+people=yes$", fields, re.M)
    piped = cli(echo_server.target, "list", "--label", "people=yes")
    assert piped.stdout.startswith('{"jobs":[')  # a pipe: the ListResponse as JSON, as before
    forced = cli(echo_server.target, "list", "--label", "people=yes", "-o", "table")
    assert forced.stdout.splitlines()[0].split()[0] == "ID"
    ids = cli(echo_server.target, "list", "--label", "people=yes", "-q")
    assert sorted(ids.stdout.split()) == sorted([failed.id, ok.id])


def test_a_cancelled_job_is_said_cancelled_once(echo_server: ServerProcess) -> None:
    with Client(echo_server.target) as client:
        job = client.submit_job("echo", {"delay_ms": 30_000, "steps": 30}).job
        client.cancel(job.id)
    watched = cli(echo_server.target, "watch", job.id)
    assert watched.returncode == 4
    assert f"job {job.id} was cancelled: CANCELLED: the job was cancelled" in watched.stderr
    assert "CANCELLED CANCELLED" not in watched.stderr


def test_a_target_without_a_port_is_refused_and_a_refused_connection_says_what_to_do() -> None:
    for target in ("localhost", "gateway.example.com", "::1"):
        refused = cli(target, "get", "0" * 32)
        assert refused.returncode == 2 and "has no port" in refused.stderr, refused.stderr
    closed = f"127.0.0.1:{_free_port()}"
    nobody = cli(closed, "get", "0" * 32)
    assert nobody.returncode == 1
    lines = nobody.stderr.strip().splitlines()
    assert len(lines) == 1 and closed in lines[0] and "connection refused" in lines[0] and "gateway serve" in lines[0]


def _complete(script: str, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _gateway_client; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


def test_bash_completion_knows_the_commands_their_options_and_choices() -> None:
    done = cli("127.0.0.1:9", "completion", "bash")  # (no connection is made)
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert {"retry", "list", "submit"} <= set(_complete(script, "gateway-client", ""))
    assert _complete(script, "gateway-client", "re") == ["retry"]
    assert "--priority" in _complete(script, "gateway-client", "submit", "--pr")
    assert _complete(script, "gateway-client", "list", "-o", "") == ["json", "table", "id"]
    assert _complete(script, "gateway-client", "list", "--state", "su") == ["succeeded"]
    zsh = cli("127.0.0.1:9", "completion", "zsh")
    assert zsh.returncode == 0 and "bashcompinit" in zsh.stdout and "complete -o default -F _gateway_client" in zsh.stdout
