"""Section ``dashboard``: how soon the live dashboard shows a committed state change, against a bare
reader of the same server-sent event stream, same gateway, alternating rounds.

Each round submits N echo jobs at once (each with progress updates), labelled for that round, and
watches them two ways:
- the page: the dashboard in a real headless Chromium (harness/browser_driver.js), filtered to the
  round's label; a MutationObserver notes when each row shows each revision, and the next frame;
- the stream: ``python -m bench.dashboard URL COUNT``, a child process that reads the page's own
  event stream (/api/dashboard/events, same filter) and notes when each event arrived.
For each job's three state changes (created, started, finished: the server's own timestamps, taken
just before the revision is handed to the store) the delay to the page's frame, or to the reader,
is a sample. The page's cost over the reader is the browser's (parsing, the DOM, layout, paint).
Goal (from the dashboard's issue): 200 jobs at once, p99 under 250 ms on the page.

A third way, ``full``: the page first takes ``prefill`` jobs of the round's label (10,000; the list is
then windowed, rows built only for the jobs in view), then the same N jobs. Only rows in view can show a
change, so its samples are the changes of the rows the page drew (the newest jobs, at the top); its
baseline is the page with an empty list, same run. Also reported: the rows in the DOM with the list full.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import ECHO_CONFIG, GatewayServer, Row, abba, spawn, started
from harness.stats import percentile

NAME = "dashboard"
GOAL_P99_MS = 250.0
# Chromium's counters of the page's main thread (seconds, reported in ms; counts), read before and after a round.
SECONDS = ("ScriptDuration", "RecalcStyleDuration", "LayoutDuration", "TaskDuration")
COUNTS = ("LayoutCount", "RecalcStyleCount")


@dataclass(frozen=True)
class Config:
    rounds: int = 6
    jobs: int = 200
    delay_ms: int = 3000
    steps: int = 10
    prefill: int = 10_000
    full_rounds: int = 3


FULL = Config()
QUICK = Config(rounds=2, jobs=40, delay_ms=1000, steps=4, prefill=1500, full_rounds=1)


def _log(message: str) -> None:
    print(f"[{NAME}] {message}", file=sys.stderr, flush=True)


async def _submit(target: str, cfg: Config, label: str) -> None:
    from gateway_client import AsyncClient

    async with AsyncClient(target) as client:
        await asyncio.gather(*(
            client.submit_job("echo", {"delay_ms": cfg.delay_ms, "steps": cfg.steps},
                              labels={"round": label, "measured": "yes", "n": str(n)})
            for n in range(cfg.jobs)))


async def _prefill(target: str, count: int, label: str) -> None:
    """`count` echo jobs of the round's label, that end at once: the list the measured jobs join."""
    from gateway_client import AsyncClient

    gate = asyncio.Semaphore(200)
    async with AsyncClient(target) as client:
        async def one() -> None:
            async with gate:
                await client.submit_job("echo", {}, labels={"round": label})
        await asyncio.gather(*(one() for _ in range(count)))


def _jobs(target: str, label: str) -> list[Any]:
    from gateway_client import Client

    with Client(target) as client:
        return list(client.list(labels={"round": label, "measured": "yes"}, page_size=1000).jobs)


def _wait_counted(browser: Any, page: str, count: int) -> None:
    """Until the page's summary counts `count` jobs, all succeeded (rows out of view are not in the DOM)."""
    counted = "(n) => document.getElementById('summary').textContent.startsWith(`${n} jobs · ${n} succeeded`)"
    browser.wait_for(page, counted, count, timeout=300, what=f"{count} jobs counted")


def _round(gateway: GatewayServer, browser: Any, cfg: Config, label: str, way: str) -> dict[str, Any]:
    from harness.browser import open_page, shown, wait_live, wait_rows

    url = f"http://{gateway.http}"
    query = f"label=round%3D{label}"
    dom_rows = None
    if way in ("page", "full"):
        open_page(browser, label, f"{url}/?{query}")
        wait_live(browser, label)
        if way == "full":
            asyncio.run(_prefill(gateway.target, cfg.prefill, label))
            _wait_counted(browser, label, cfg.prefill)
            browser.eval(label, "() => { window.__seen = []; return true; }")
        before = browser.call("metrics", page=label)
        asyncio.run(_submit(gateway.target, cfg, label))
        if way == "full":
            _wait_counted(browser, label, cfg.prefill + cfg.jobs)
            dom_rows = browser.eval(label, "() => document.querySelectorAll('#rows > tr[data-id]').length")
        else:
            wait_rows(browser, label, "SUCCEEDED", cfg.jobs)
        after = browser.call("metrics", page=label)
        spent = {k: round((after[k] - before[k]) * 1000) for k in SECONDS} | {k: after[k] - before[k] for k in COUNTS}
        seen = browser.seen(label)
        browser.call("closePage", page=label)
    else:
        reader = spawn([sys.executable, "-m", "bench.dashboard", f"{url}/api/dashboard/events?{query}", str(cfg.jobs)],
                       stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout is not None
            ready = reader.stdout.readline()
            if json.loads(ready or "{}").get("event") != "ready":
                raise RuntimeError(f"the stream reader did not start: {ready!r}")
            asyncio.run(_submit(gateway.target, cfg, label))
            out, _ = reader.communicate(timeout=120)
        finally:
            if reader.poll() is None:
                reader.kill()
        seen = json.loads(out)["seen"]
        spent = {}
    # Every change shown, no row going back (full: every change of a row while it was drawn).
    figures = shown(seen, _jobs(gateway.target, label), partial=way == "full")
    frame = figures.all("frame")
    return {"way": way, "page_ms": spent, "dom_rows": dom_rows, "samples": len(frame),
            "p50_ms": percentile(frame, 0.5), "p99_ms": percentile(frame, 0.99),
            "p99_dom_ms": percentile(figures.all("dom"), 0.99), "row_updates": figures.row_updates,
            "p99_by_change_ms": {kind: percentile(v, 0.99) for kind, v in figures.to_frame.items()}}


def run(args: argparse.Namespace) -> list[Row]:
    from harness.browser import CHROMIUM, Browser, missing

    lacking = missing()
    if lacking is not None:
        raise RuntimeError(f"the dashboard section needs {lacking}")
    cfg = QUICK if args.quick else FULL
    results: dict[str, list[dict[str, Any]]] = {"page": [], "stream": [], "full": []}
    browser = Browser(CHROMIUM)  # type: ignore[arg-type]
    try:
        with started(GatewayServer(ECHO_CONFIG, ["--http-listen", "127.0.0.1:0"])) as (gateway,):
            for r in range(cfg.rounds):
                ways = ("page", "stream", "full") if r < cfg.full_rounds else ("page", "stream")
                for way in abba(ways, r):
                    result = _round(gateway, browser, cfg, f"r{r}-{way}", way)  # type: ignore[arg-type]
                    results[way].append(result)
                    _log(f"round {r + 1}/{cfg.rounds} {way}: p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms "
                         f"(by change: {', '.join(f'{k} {v:.0f}' for k, v in result['p99_by_change_ms'].items())})"
                         + (f"; the page's main thread (ms): {result['page_ms']}" if result["page_ms"] else ""))
    finally:
        browser.close()

    def med(way: str, key: str) -> float:
        return statistics.median(x[key] for x in results[way])

    p99 = med("page", "p99_ms")
    full_p99 = med("full", "p99_ms")
    raw = {"rounds": results, "config": cfg.__dict__, "chromium": browser.version}
    return [
        Row(f"State change to page p50 ({cfg.jobs} jobs at once), page vs bare stream reader", "ms",
            med("page", "p50_ms"), med("stream", "p50_ms"), raw=raw),
        Row(f"State change to page p99 ({cfg.jobs} jobs at once), page vs bare stream reader", "ms",
            p99, med("stream", "p99_ms"), goal=f"page < {GOAL_P99_MS:.0f} ms", met=p99 < GOAL_P99_MS,
            note="to the frame drawn after the DOM change (the page) or to the event's arrival (the reader); "
                 "median of the rounds' p99"),
        Row(f"State change to page p99 ({cfg.jobs} jobs at once, {cfg.prefill:,} in the list), vs an empty list", "ms",
            full_p99, p99, goal=f"page < {GOAL_P99_MS:.0f} ms", met=full_p99 < GOAL_P99_MS,
            note="the changes of the rows in view (the list is windowed); median of the rounds' p99"),
        Row(f"Rows in the DOM with {cfg.prefill + cfg.jobs:,} jobs in the list", "rows",
            med("full", "dom_rows"), float(cfg.prefill + cfg.jobs), note="the rows built, against the jobs listed"),
    ]


# -- the bare stream reader (a child process) ------------------------------------------------------


async def _read(url: str, count: int) -> dict[str, Any]:
    """Reads server-sent events until `count` jobs ended; [id, state, revision, ms, None] per job event,
    like the page's Browser.seen() entries."""
    import aiohttp

    seen: list[list[Any]] = []
    ended: set[str] = set()
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        print(json.dumps({"event": "ready"}), flush=True)
        buffer = b""
        async for chunk in response.content.iter_any():
            now = time.time() * 1000
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        job = json.loads(line[6:]).get("job")
                        if job:
                            seen.append([job["id"], job["state"], job["revision"], now, None])
                            if job.get("done"):
                                ended.add(job["id"])
            if len(ended) >= count:
                break
    return {"seen": seen}


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    print(json.dumps(asyncio.run(_read(url, count))), flush=True)


if __name__ == "__main__":
    main()
