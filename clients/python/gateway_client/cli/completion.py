"""`gateway-client completion bash|zsh`: a shell completion script made from the parser itself, so it
always knows every command, option and choice of this version (no connection is made)."""

from __future__ import annotations

import argparse
import shlex

from gateway_client.cli.output import PROG, ExitCode

__all__ = ["SHELLS", "script"]

SHELLS = ("bash", "zsh")
# Options that take a file: the shell completes paths for them.
_FILE_METAVARS = {"FILE", "PATH"}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for action in parser._actions for o in action.option_strings if o.startswith("--") or len(o) == 2)


def _values(parser: argparse.ArgumentParser) -> dict[str, str]:
    """For each option that takes a value: ``choices`` (its words) or ``files``."""
    found: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        if action.choices is not None and not isinstance(action.choices, range):
            words = " ".join(str(c) for c in action.choices)
        elif action.metavar in _FILE_METAVARS:
            words = "<files>"
        elif action.dest == "state":
            words = "queued running succeeded failed cancelled"
        else:
            continue
        for option in action.option_strings:
            found[option] = words
    return found


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = dict(action.choices)
    values = _values(parser)
    for sub in commands.values():
        values.update(_values(sub))
    cases = "\n".join(f"    {name}) opts={shlex.quote(' '.join(_options(sub)))} ;;" for name, sub in commands.items())
    value_cases = "\n".join(
        f"    {option}) " + ('COMPREPLY=($(compgen -f -- "$cur")); return ;;' if words == "<files>"
                             else f'COMPREPLY=($(compgen -W {shlex.quote(words)} -- "$cur")); return ;;')
        for option, words in sorted(values.items()))
    function = f"""_gateway_client() {{
  local cur prev cmd opts i
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  case "$prev" in
{value_cases}
  esac
  cmd=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in
      {"|".join(commands)}) cmd="${{COMP_WORDS[i]}}"; break ;;
    esac
  done
  case "$cmd" in
    "") opts={shlex.quote(" ".join([*_options(parser), *commands]))} ;;
{cases}
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
complete -o default -F _gateway_client {PROG}
"""
    header = f"# {PROG} completion for {shell}: eval \"$({PROG} completion {shell})\" in your shell's rc file\n"
    if shell == "zsh":
        header += "autoload -U +X bashcompinit && bashcompinit\n"
    return header + function


def add_completion(command: argparse.ArgumentParser, parser: argparse.ArgumentParser) -> None:
    command.add_argument("shell", choices=SHELLS)
    command.set_defaults(offline=lambda args: _print(parser, args.shell))


def _print(parser: argparse.ArgumentParser, shell: str) -> ExitCode:
    print(script(parser, shell), end="")
    return ExitCode.OK
