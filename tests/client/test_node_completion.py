"""`gateway-client-node completion bash|zsh`: a completion script made from the Node CLI's own table of commands
and options, run here in a real bash (and checked by `zsh -n`); an unknown shell is a usage error. No gateway is
started: the command makes no connection."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import ROOT, unavailable

PACKAGE = ROOT / "clients" / "node"
BIN = PACKAGE / "bin" / "gateway-client-node.js"
PROG = "gateway-client-node"


@pytest.fixture(scope="module")
def node_cli() -> list[str]:
    """The command that runs the Node CLI (clients/node's pinned dependencies installed when missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for the Node.js CLI (Debian: apt-get install nodejs npm)")
    if not (PACKAGE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        installed = subprocess.run([npm, "ci", "--prefix", str(PACKAGE), "--no-audit", "--no-fund"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=600)
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}\n{installed.stderr}"
    return [node, str(BIN)]


def _run(node_cli: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    # 127.0.0.1:9 answers nothing: a connection would fail, and none is made.
    return subprocess.run([*node_cli, "--target", "127.0.0.1:9", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def bash_script(node_cli: list[str]) -> str:
    done = _run(node_cli, "completion", "bash")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def _complete(script: str, *words: str, cwd: Path = ROOT) -> list[str]:
    """What the script's completion function offers for the command line ``words`` (the last one being typed)."""
    if shutil.which("bash") is None:
        unavailable("bash is needed to run the completion script")
    line = " ".join(f"'{w}'" for w in words)
    program = (f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _gateway_client_node; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                          timeout=30, check=True, cwd=cwd)
    assert done.stderr == ""
    return done.stdout.split()


def test_bash_completion_completes_commands_options_and_values(bash_script: str, tmp_path: Path) -> None:
    assert f"complete -o default -F _gateway_client_node {PROG}" in bash_script
    top = _complete(bash_script, PROG, "")
    assert {"submit", "get", "cancel", "retry", "list", "watch-jobs", "completion", "--target", "--tls"} <= set(top)
    assert _complete(bash_script, PROG, "ca") == ["cancel"]
    assert _complete(bash_script, PROG, "--target", "h:1", "ca") == ["cancel"]  # (a global option's value skipped)
    assert _complete(bash_script, PROG, "cancel", "--") == ["--help", "--output", "--quiet"]
    assert _complete(bash_script, PROG, "submit", "--pr") == ["--priority"]
    assert _complete(bash_script, PROG, "submit", "--route", "echo", "--ta") == ["--task"]
    assert _complete(bash_script, PROG, "submit", "--task", "tr") == ["transcribe", "translate"]
    assert _complete(bash_script, PROG, "list", "-o", "") == ["json", "table", "id"]
    assert _complete(bash_script, PROG, "list", "--output", "=", "t") == ["table"]  # bash's split of --output=t
    assert _complete(bash_script, PROG, "list", "--state", "su") == ["succeeded"]
    assert _complete(bash_script, PROG, "completion", "z") == ["zsh"]
    assert _complete(bash_script, PROG, "submit", "--route", "") == []  # a free value: not the options
    (tmp_path / "speech.wav").write_bytes(b"")
    assert _complete(bash_script, PROG, "submit", "--audio", "sp", cwd=tmp_path) == ["speech.wav"]
    # Options of one command are not offered for another, nor global options after the command.
    assert "--force" not in _complete(bash_script, PROG, "get", "--")
    assert "--target" not in _complete(bash_script, PROG, "list", "--")


def test_the_commands_completed_are_the_manuals(node_cli: list[str], bash_script: str) -> None:
    manual = _run(node_cli, "--help")
    assert manual.returncode == 0
    assert "completion bash|zsh" in manual.stdout
    in_manual = set(re.findall(rf"^  {PROG} ([a-z-]+)", manual.stdout, re.MULTILINE))
    completed = {w for w in _complete(bash_script, PROG, "") if not w.startswith("-")}
    assert completed == in_manual


def test_zsh_completion_script(node_cli: list[str], tmp_path: Path) -> None:
    done = _run(node_cli, "completion", "zsh")
    assert done.returncode == 0, done.stderr
    assert "bashcompinit" in done.stdout and f"complete -o default -F _gateway_client_node {PROG}" in done.stdout
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed: the zsh script's syntax is not checked")
    script = tmp_path / "completion.zsh"
    script.write_text(done.stdout)
    checked = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    # Loaded in a bare zsh (its own compinit, a dump in a scratch HOME), the function runs as bashcompinit runs it:
    # in sh emulation, where zsh's compgen leaves the matching to zsh (so every word comes back here).
    program = (f"source {script}; COMP_WORDS=({PROG} ca); COMP_CWORD=1; "
               'emulate sh -c \'_gateway_client_node; printf "%s\\n" "${COMPREPLY[@]}"\'')
    loaded = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True, timeout=30,
                            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert "cancel" in loaded.stdout.split()


@pytest.mark.parametrize("args", [("completion", "fish"), ("completion",), ("completion", "bash", "zsh")])
def test_an_unknown_or_missing_shell_is_a_usage_error(node_cli: list[str], args: tuple[str, ...]) -> None:
    done = _run(node_cli, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(errors) == 1, done.stderr
    if args == ("completion", "fish"):
        assert errors[0] == f"{PROG}: error: argument SHELL: invalid choice: 'fish' (choose from 'bash', 'zsh')"
