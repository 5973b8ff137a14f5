"""Benchmarks: ``python -m bench [SECTION ...] [--quick] [--against REV]`` (``make bench ARGS='core --quick'``).

``--against REV`` (default ``HEAD~1``): section core also runs that commit's gateway in its Submit rounds, the
previous-commit baseline (``''``: none).

Runs the named sections (default: every registered one), prints one table per section with the
gateway's figure, the baseline's, their ratio and the goal, and writes the raw figures to
``bench/results/<section>.json`` (git-ignored). The machine is small and shared, so no figure is
meaningful alone: each section measures its own baseline in the same run, alternating rounds.

Adding a section
----------------
A section is a module ``bench/<name>.py`` with::

    NAME = "<name>"

    def run(args: argparse.Namespace) -> list[Row]:   # Row from bench.common
        ...

Append ``"<name>"`` to ``SECTIONS`` below. ``args.quick`` asks for a scaled-down run (a smoke test,
under a minute). A row is ``Row(name, unit, gateway, baseline, goal="...", met=True/False/None,
note="...", raw={...})``; the ratio is gateway / baseline. Start servers and load generators with
``bench.common`` (``GatewayServer``, ``BareServer``, ``LoadProcess``, ``started``, ``spawn``) so
that every child process is ended at the end of the run, even on errors. Modules are imported only
when their section runs, so a section's heavy imports cost the others nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import Row, kill_all

SECTIONS: list[str] = ["core", "whisper", "octoai", "watch_bytes", "scale", "memory", "long_audio", "webhooks", "dashboard",
                       "upstreams", "uploads", "fairness", "watch_replay",
                       "redis_memory"]

RESULTS = Path(__file__).resolve().parent / "results"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100 or unit in ("jobs/s", "us"):
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def format_table(name: str, rows: list[Row], quick: bool = False) -> str:
    header = ("benchmark", "unit", "gateway", "baseline", "ratio", "goal", "met")
    body = [
        (
            row.name, row.unit, _number(row.gateway, row.unit), _number(row.baseline, row.unit),
            "-" if row.ratio is None else f"{row.ratio:.2f}" if row.ratio >= 0.1 else f"{row.ratio:.2g}", row.goal or "-",
            {True: "yes", False: "NO", None: "-"}[row.met],
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    title = f"== {name} ({os.cpu_count()} cores{'; --quick: a smoke test, not a measurement' if quick else ''}) =="
    out = [title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(cells) for cells in body]
    notes = [f"  {row.name}: {row.note}" for row in rows if row.note]
    if notes:
        out += ["notes:", *notes]
    return "\n".join(out)


def _machine() -> dict[str, Any]:
    import grpc

    return {
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def run_section(name: str, args: argparse.Namespace) -> list[Row]:
    module = importlib.import_module(f"bench.{name}")
    if getattr(module, "NAME", name) != name:
        raise RuntimeError(f"bench.{name} declares NAME = {module.NAME!r}")
    started = time.time()
    rows: list[Row] = module.run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "section": name, "quick": args.quick, "started": started, "elapsed_s": time.time() - started,
        "machine": _machine(), "rows": [row.to_json() for row in rows],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    return rows


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the sections' finally blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"default: all ({', '.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="scaled down: a smoke test, under a minute")
    parser.add_argument("--against", default="HEAD~1", metavar="REV",
                        help="the commit whose gateway core's Submit is measured beside this one, in the same rounds "
                             "(default: HEAD~1, the previous commit; '' for none)")
    args = parser.parse_args(argv)
    names = args.sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; registered: {', '.join(SECTIONS)}")
    signal.signal(signal.SIGTERM, _terminate)
    failed = []
    try:
        for name in names:
            t0 = time.monotonic()
            try:
                rows = run_section(name, args)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            finally:
                kill_all()
            print(format_table(name, rows, args.quick))
            print(f"({time.monotonic() - t0:.0f} s; raw figures in {RESULTS / (name + '.json')})\n", flush=True)
    finally:
        kill_all()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
