"""A real headless Chromium for the dashboard, shared by its test (tests/http/test_dashboard.py) and its
benchmark (bench/dashboard.py): harness/browser_driver.js (playwright-core) in a child process, and
the commit-to-page figures read off the rows the page showed."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DASHBOARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
DRIVER = Path(__file__).resolve().parent / "browser_driver.js"
PLAYWRIGHT = ROOT / "tests" / "node" / "node_modules" / "playwright-core"


def missing() -> str | None:
    """What the browser needs and this machine lacks (how to get it), or None."""
    if CHROMIUM is None:
        return "Chromium: apt-get install chromium (or set DASHBOARD_CHROMIUM to a Chromium binary)"
    if NODE is None:
        return "Node.js (node)"
    if not PLAYWRIGHT.is_dir():
        return f"playwright-core in {PLAYWRIGHT.parent}: npm ci --prefix tests/node (make install)"
    return None


class Browser:
    """harness/browser_driver.js in a child process: one JSON request per line, one answer per line."""

    def __init__(self, chromium: str) -> None:
        self.proc = subprocess.Popen(["node", str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_answers, daemon=True).start()
        self._next = 0
        self.version = self.call("launch", executablePath=chromium)

    def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._answers.put(line)

    def call(self, op: str, pipe_timeout: float = 90.0, **args: Any) -> Any:
        self._next += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": self._next, "op": op, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            answer = json.loads(self._answers.get(timeout=pipe_timeout))
        except queue.Empty:
            raise AssertionError(f"the browser driver did not answer {op} within {pipe_timeout} s") from None
        assert answer["id"] == self._next, answer
        if not answer["ok"]:
            raise AssertionError(f"browser {op} {args}: {answer['error']}")
        return answer["result"]

    def wait_for(self, page: str, fn: str, arg: Any = None, timeout: float = 30.0, what: str = "") -> Any:
        try:
            return self.call("waitFor", page=page, fn=fn, arg=arg, timeout=int(timeout * 1000),
                             pipe_timeout=timeout + 30)
        except AssertionError as exc:
            rows = self.rows(page)
            raise AssertionError(f"waiting for {what or fn}: {exc}\nrows: {rows}") from None

    def eval(self, page: str, fn: str, arg: Any = None) -> Any:
        return self.call("eval", page=page, fn=fn, arg=arg)

    def rows(self, page: str) -> list[dict[str, str]]:
        """The job rows the page shows now: id, state, revision and the transcript/error cell."""
        return self.eval(page, """() => [...document.querySelectorAll('#rows > tr[data-id]')].map((tr) => ({
            id: tr.dataset.id, state: tr.dataset.state, rev: tr.dataset.rev,
            info: tr.querySelector('td.info').textContent, queue: tr.querySelector('td.queue').textContent}))""")

    def wait_row(self, page: str, job_id: str, state: str, timeout: float = 30.0) -> dict[str, str]:
        return self.wait_for(page, """([id, state]) => {
            const tr = document.querySelector(`#rows > tr[data-id="${id}"]`);
            return tr && tr.dataset.state === state ? {info: tr.querySelector('td.info').textContent} : null;
        }""", [job_id, state], timeout=timeout, what=f"job {job_id} {state}")

    def seen(self, page: str) -> list[list[Any]]:
        """[job id, state, revision, Date.now() at the change, Date.now() at the next frame] each time a
        row showed a revision (a MutationObserver in harness/browser_driver.js)."""
        return self.eval(page, "() => window.__seen")

    def close(self) -> None:
        try:
            self.call("close", pipe_timeout=30)
        except Exception:
            pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def open_page(browser: Browser, page: str, url: str, **kwargs: Any) -> None:
    browser.call("page", name=page, **kwargs)
    browser.call("goto", page=page, url=url)


def wait_live(browser: Browser, page: str) -> None:
    browser.wait_for(page, "() => document.getElementById('conn').dataset.conn === 'live'", what="the stream")


def wait_rows(browser: Browser, page: str, state: str, count: int, timeout: float = 90.0) -> None:
    """Until the page shows `count` rows in `state`, looked at every 50 ms (not every frame, as
    waitFor does, so that the wait costs the page it measures little)."""
    found = browser.call("eval", page=page, pipe_timeout=timeout + 30, fn=f"""([count, timeout]) => new Promise((resolve) => {{
        const deadline = Date.now() + timeout;
        const look = () => {{
            const shown = document.querySelectorAll('#rows > tr[data-state="{state}"]').length;
            if (shown === count || Date.now() > deadline) resolve(shown);
            else setTimeout(look, 50);
        }};
        look();
    }})""", arg=[count, timeout * 1000])
    if found != count:
        raise AssertionError(f"waiting for {count} rows {state}: {found} after {timeout:.0f} s\nrows: {browser.rows(page)}")


# A job's committed state changes, by the server's own timestamps (taken just before the revision is
# handed to the store, so a figure includes the commit), and the states a row may show once it happened.
CHANGES = (("created", "create_time", frozenset({"QUEUED", "RUNNING", "SUCCEEDED"})),
           ("started", "start_time", frozenset({"RUNNING", "SUCCEEDED"})),
           ("finished", "finish_time", frozenset({"SUCCEEDED"})))


@dataclass
class Shown:
    """How long each state change of some jobs took from its commit to the page, in ms: to the DOM
    change (the MutationObserver's Date.now()) and to the next frame drawn after it."""

    to_frame: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind, *_ in CHANGES})
    to_dom: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind, *_ in CHANGES})
    row_updates: int = 0

    def all(self, to: str = "frame") -> list[float]:
        by_kind = self.to_frame if to == "frame" else self.to_dom
        return [value for values in by_kind.values() for value in values]


def shown(seen: Iterable[list[Any]], jobs: Iterable[Any], partial: bool = False) -> Shown:
    """The figures for `jobs` (gateway_client Jobs, done) from a page's Browser.seen() entries.
    Fails when a job's row never showed one of its changes or went back to an older revision.
    ``partial``: a windowed list draws only the rows in view, so a change never shown is skipped
    (only a row going back fails); the page must not scroll meanwhile (a row scrolled into view would
    show its state late)."""
    rows: dict[str, list[tuple[str, int, float, float]]] = {}
    for job_id, state, revision, changed, drawn in seen:
        rows.setdefault(job_id, []).append((state, revision, changed / 1000, (drawn or changed) / 1000))
    figures = Shown(row_updates=sum(len(v) for v in rows.values()))
    for job in jobs:
        updates = rows.get(job.id, [])
        revisions = [revision for _, revision, *_ in updates]
        assert revisions == sorted(revisions), f"job {job.id}: the row went back: {revisions}"
        for kind, attribute, states in CHANGES:
            when = getattr(job, attribute)
            assert when is not None, f"job {job.id} has no {attribute}"
            first = next(((c, d) for state, _, c, d in updates if state in states), None)
            if partial and first is None:
                continue
            assert first is not None, f"job {job.id}: the page never showed it {kind} ({updates})"
            changed, drawn = first
            figures.to_frame[kind].append((drawn - when.timestamp()) * 1000)
            figures.to_dom[kind].append((changed - when.timestamp()) * 1000)
    return figures
