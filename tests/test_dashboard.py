"""The live dashboard at / in a real headless Chromium (Debian's chromium, driven by playwright-core
from tests/node through tests/dashboard/driver.js): jobs appear and move through their states, a
whisper job's transcript and a failed job's reason show, the filters narrow the list and survive a
reload, cancel works from the page, tenants never see each other's jobs, the push stream resumes
after a cut without gaps, and the page keeps up with 200 jobs changing at once (commit-to-page p99
under 250 ms, measured in the browser)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from gateway_client import AsyncClient, Client
from tests.conftest import FIXTURES, ROOT, ServerProcess, unavailable

CHROMIUM = os.environ.get("DASHBOARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
DRIVER = ROOT / "tests" / "dashboard" / "driver.js"
PLAYWRIGHT = ROOT / "tests" / "node" / "node_modules" / "playwright-core"
# The README's screenshot: written where DASHBOARD_SCREENSHOT says (e.g. docs/dashboard.png, to refresh it);
# by default into the test's temporary folder, so that a test run leaves the checkout as it was.
SCREENSHOT_ENV = "DASHBOARD_SCREENSHOT"
SEASHELLS = FIXTURES / "seashells.wav"
LATENCY_GOAL_MS = 250.0
LOAD_JOBS = 200

LIVE_CONFIG = """
[routes.echo]
backend = "echo"

[routes.slow]
backend = "echo"
workers = 1

[routes.whisper]
backend = "whisper"
"""
AUTH_CONFIG = """
[routes.echo]
backend = "echo"

[auth]
enabled = true

[auth.tokens]
"tok-a" = "team-a"
"tok-b" = "team-b"
"""


def _missing(what: str) -> None:
    unavailable(f"the dashboard test needs {what}")


class Browser:
    """tests/dashboard/driver.js in a child process: one JSON request per line, one answer per line."""

    def __init__(self, chromium: str) -> None:
        self.proc = subprocess.Popen(["node", str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._answers.put(line) for line in self.proc.stdout],  # type: ignore[union-attr]
                         daemon=True).start()
        self._next = 0
        self.version = self.call("launch", executablePath=chromium)

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
        return self.eval(page, """() => [...document.querySelectorAll('#rows > tr')].map((tr) => ({
            id: tr.dataset.id, state: tr.dataset.state, rev: tr.dataset.rev,
            info: tr.querySelector('td.info').textContent, queue: tr.querySelector('td.queue').textContent}))""")

    def wait_row(self, page: str, job_id: str, state: str, timeout: float = 30.0) -> dict[str, str]:
        return self.wait_for(page, """([id, state]) => {
            const tr = document.querySelector(`#rows > tr[data-id="${id}"]`);
            return tr && tr.dataset.state === state ? {info: tr.querySelector('td.info').textContent} : null;
        }""", [job_id, state], timeout=timeout, what=f"job {job_id} {state}")

    def seen(self, page: str) -> list[list[Any]]:
        """[job id, state, revision, Date.now() at the change, Date.now() at the next frame] each time a
        row showed a revision (a MutationObserver in tests/dashboard/driver.js)."""
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        _missing("Chromium: apt-get install chromium (or set DASHBOARD_CHROMIUM to a Chromium binary)")
    if NODE is None:
        _missing("Node.js (node)")
    if not PLAYWRIGHT.is_dir():
        _missing(f"playwright-core in {PLAYWRIGHT.parent}: npm ci --prefix tests/node (make install)")
    driver = Browser(CHROMIUM)  # type: ignore[arg-type]
    yield driver
    driver.close()


def _open(browser: Browser, page: str, url: str, **kwargs: Any) -> None:
    browser.call("page", name=page, **kwargs)
    browser.call("goto", page=page, url=url)


def _wait_live(browser: Browser, page: str) -> None:
    browser.wait_for(page, "() => document.getElementById('conn').dataset.conn === 'live'", what="the stream")


def _no_page_errors(browser: Browser, page: str, origin: str, expected: tuple[str, ...] = ()) -> None:
    errors = [e for e in browser.call("errors", page=page) if not any(x in e for x in expected)]
    assert errors == []  # no script errors, no CSP violations
    outside = [u for u in browser.call("requests", page=page) if not u.startswith(origin + "/")]
    assert outside == []  # nothing fetched from elsewhere


def _http(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, Any]:
    try:
        with urlopen(Request(url, data=body, method=method, headers=headers or {}), timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_dashboard_shows_jobs_live_filters_cancels(make_server: Any, browser: Browser, tmp_path: Path) -> None:
    server: ServerProcess = make_server(LIVE_CONFIG)
    server.wait_serving("route/whisper")
    url = server.http_url + "/"
    _open(browser, "live", url)
    _wait_live(browser, "live")
    page = "live"

    with Client(server.target) as client:
        # Jobs appear and move through their states; a failed one shows its reason, a whisper job its transcript.
        echo = client.submit_job("echo", {"delay_ms": 1500, "steps": 5}, labels={"team": "demo"}).job
        failing = client.submit_job("echo", {"delay_ms": 300, "fail_with": "the model fell over"}).job
        whisper = client.submit_job("whisper", audio=SEASHELLS, labels={"team": "demo"}).job
        browser.wait_row(page, echo.id, "SUCCEEDED")
        states = [s for i, s, *_ in browser.seen(page) if i == echo.id]
        assert "RUNNING" in states and states[-1] == "SUCCEEDED", states
        revisions = [r for i, _, r, *_ in browser.seen(page) if i == echo.id]
        assert revisions == sorted(revisions) and len(set(revisions)) >= 4, revisions  # progress on the way
        failed = browser.wait_row(page, failing.id, "FAILED")
        assert "ECHO_FAILURE" in failed["info"]
        transcribed = browser.wait_row(page, whisper.id, "SUCCEEDED", timeout=120)
        assert "seashells" in transcribed["info"].lower(), transcribed
        # A longer recording: its transcript grows on the page while the job runs, segment by segment.
        talk = client.submit_job("whisper", audio=FIXTURES / "long.ogg").job
        browser.wait_for(page, """(id) => {
            const tr = document.querySelector(`#rows > tr[data-id="${id}"]`);
            return tr && tr.dataset.state === 'RUNNING' && tr.querySelector('td.info').textContent.length > 0;
        }""", talk.id, timeout=120, what="a transcript growing while its job runs")
        shown = browser.wait_row(page, talk.id, "SUCCEEDED", timeout=180)
        text = client.fetch(talk.id, timeout=30).result.text.strip()  # type: ignore[union-attr]
        assert shown["info"].removeprefix("… ") in text and text.endswith(shown["info"].removeprefix("… "))
        browser.call("click", page=page, selector=f'#rows > tr[data-id="{talk.id}"] button[data-action="open"]')
        browser.wait_for(page, "(text) => document.getElementById('detail-transcript').textContent === text", text,
                         what="the whole transcript in the detail view")
        browser.call("click", page=page, selector="#detail-close")

        # The detail view: revisions as they arrive, and cancel from the page.
        long = client.submit_job("echo", {"delay_ms": 120_000, "steps": 400}, labels={"team": "demo"}).job
        browser.wait_row(page, long.id, "RUNNING")
        browser.call("click", page=page, selector=f'#rows > tr[data-id="{long.id}"] button[data-action="open"]')
        assert f"job={long.id}" in browser.call("url", page=page)
        browser.wait_for(page, "() => document.querySelectorAll('#detail-revisions tr').length >= 5",
                         what="revisions arriving in the detail view")
        browser.call("click", page=page, selector="#detail-cancel")
        browser.wait_row(page, long.id, "CANCELLED")
        browser.wait_for(page, "() => document.getElementById('detail').dataset.state === 'CANCELLED'")
        final = client.get(long.id)
        assert final.state.name.endswith("CANCELLED")
        detail_revs = browser.eval(page, "() => [...document.querySelectorAll('#detail-revisions tr')]"
                                         ".map((tr) => Number(tr.dataset.rev))")
        assert detail_revs == list(range(1, final.revision + 1))  # every revision, in order, no gaps
        browser.call("click", page=page, selector="#detail-close")
        assert "job=" not in browser.call("url", page=page)

        # Filters: state, route and label combined, in the address, kept across a reload.
        browser.call("check", page=page, selector='#states input[value="SUCCEEDED"]')
        browser.call("select", page=page, selector="#route", value="echo")
        browser.call("fill", page=page, selector="#labels", value="team=demo")
        browser.call("click", page=page, selector='#filters button[type="submit"]')
        only_echo = """(id) => {
            const rows = [...document.querySelectorAll('#rows > tr')];
            return rows.length === 1 && rows[0].dataset.id === id;
        }"""
        browser.wait_for(page, only_echo, echo.id, what="the filtered list")
        address = browser.call("url", page=page)
        assert "state=SUCCEEDED" in address and "route=echo" in address and "label=team%3Ddemo" in address
        browser.call("reload", page=page)
        _wait_live(browser, page)
        browser.wait_for(page, only_echo, echo.id, what="the filtered list after a reload")
        assert browser.eval(page, """() => [document.querySelector('#states input[value="SUCCEEDED"]').checked,
            document.getElementById('route').value, document.getElementById('labels').value]""") == \
            [True, "echo", "team=demo"]
        # Live, under the filter: a matching job shows up, others do not.
        other = client.submit_job("echo", {"delay_ms": 0}).job
        matching = client.submit_job("echo", {"delay_ms": 0}, labels={"team": "demo"}).job
        browser.wait_row(page, matching.id, "SUCCEEDED")
        assert other.id not in {i for i, *_ in browser.seen(page)}
        browser.call("click", page=page, selector="#clear")
        browser.wait_row(page, other.id, "SUCCEEDED")  # history (List) again, unfiltered

        # The screenshot: jobs in several states at once (queued ones behind the one-worker route).
        slow = [client.submit_job("slow", {"delay_ms": 120_000, "steps": 400}, labels={"team": "batch"}).job
                for _ in range(3)]
        running = client.submit_job("echo", {"delay_ms": 20_000, "steps": 100}, labels={"team": "demo"}).job
        browser.wait_row(page, slow[0].id, "RUNNING")
        browser.wait_row(page, running.id, "RUNNING")
        queued = browser.wait_row(page, slow[2].id, "QUEUED")
        browser.wait_for(page, "(id) => document.querySelector(`#rows > tr[data-id='${id}'] td.queue`)"
                               ".textContent === '#2'", slow[2].id, what="queue position #2")
        assert queued is not None
        browser.wait_for(page, "(id) => Number(document.querySelector(`#rows > tr[data-id='${id}'] progress`)"
                               ".value) >= 0.25", running.id, what="progress")
        screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        browser.call("screenshot", page=page, path=str(screenshot), fullPage=True)
        assert screenshot.stat().st_size > 10_000

        # A phone: the same page, no sideways scrolling.
        _open(browser, "phone", url, viewport={"width": 390, "height": 844}, isMobile=True)
        browser.wait_row("phone", running.id, "RUNNING")
        assert browser.eval("phone", "() => document.documentElement.scrollWidth <= window.innerWidth + 1")

        for job in (*slow, running):
            client.cancel(job.id)
        browser.wait_row(page, slow[2].id, "CANCELLED")
    _no_page_errors(browser, page, server.http_url)
    _no_page_errors(browser, "phone", server.http_url)


def test_dashboard_auth_keeps_tenants_apart_and_resumes_after_a_cut(make_server: Any, browser: Browser) -> None:
    server: ServerProcess = make_server(AUTH_CONFIG)
    url = server.http_url + "/"
    api = server.http_url + "/api/dashboard"
    assert _http("GET", api + "/jobs")[0] == 401
    assert _http("GET", api + "/events")[0] == 401

    # Each page asks for a token once; a wrong one is refused.
    for page, token in (("a", "tok-a"), ("b", "tok-b")):
        _open(browser, page, url)
        browser.wait_for(page, "() => !document.getElementById('login').hidden", what="the sign-in form")
        if page == "b":
            browser.call("fill", page=page, selector="#token", value="not-a-token")
            browser.call("click", page=page, selector='#login-form button[type="submit"]')
            browser.wait_for(page, "() => document.getElementById('login-error').textContent.length > 0")
        browser.call("fill", page=page, selector="#token", value=token)
        browser.call("click", page=page, selector='#login-form button[type="submit"]')
        _wait_live(browser, page)
        assert "tok-" not in browser.call("url", page=page)
        assert "tok-" not in browser.eval(page, "() => document.cookie")  # HttpOnly
        cookies = browser.call("cookies", page=page)
        assert [(c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [(True, "Strict", "/api/dashboard")]
        requested = browser.call("requests", page=page)
        assert not any("tok-" in u for u in requested)  # never in any address

    with Client(server.target, token="tok-a") as a, Client(server.target, token="tok-b") as b:
        job_a = a.submit_job("echo", {"delay_ms": 500, "steps": 2}, labels={"who": "a"}).job
        job_b = b.submit_job("echo", {"delay_ms": 500, "steps": 2}, labels={"who": "b"}).job
        browser.wait_row("a", job_a.id, "SUCCEEDED")
        browser.wait_row("b", job_b.id, "SUCCEEDED")
        # The other tenant's job is not even reachable by id.
        status = browser.eval("b", """async (id) => (await fetch(`/api/dashboard/jobs/${id}`)).status""", job_a.id)
        assert status == 404
        status = browser.eval("b", """async (id) => (await fetch(`/api/dashboard/jobs/${id}/cancel`,
            {method: 'POST', headers: {'X-Dashboard': '1'}})).status""", job_a.id)
        assert status == 404
        # A state-changing call without the dashboard header (a cross-site form) is refused.
        status = browser.eval("a", """async (id) => (await fetch(`/api/dashboard/jobs/${id}/cancel`,
            {method: 'POST'})).status""", job_a.id)
        assert status == 403

        # A reload keeps the session (no second prompt) and lists the history.
        browser.call("reload", page="a")
        _wait_live(browser, "a")
        browser.wait_row("a", job_a.id, "SUCCEEDED")
        assert browser.eval("a", "() => document.getElementById('login').hidden") is True

        # A cut: the gateway restarts (same ports, same data) while page a cannot reach it, and jobs
        # start and end meanwhile. Once back, the page's stream resumes from its last event id and
        # brings them, done (a fresh stream would bring the active jobs only; the page lists no
        # history on a reconnect).
        requests = browser.call("requests", page="a")
        streams_before = sum("/api/dashboard/events" in u for u in requests)
        lists_before = sum("/api/dashboard/jobs?" in u for u in requests)
        browser.call("offline", page="a", offline=True)  # new connections fail; the stream stays
        server.restart()
        browser.wait_for("a", "() => document.getElementById('conn').dataset.conn !== 'live'",
                         what="the page noticing the cut")
    with Client(server.target, token="tok-a") as a:
        during = [a.submit_job("echo", {"delay_ms": 0}, labels={"who": "a"}).job for _ in range(3)]
        for job in during:
            assert a.fetch(job.id, timeout=30).job.state.name.endswith("SUCCEEDED")
        browser.call("offline", page="a", offline=False)
        for job in during:
            browser.wait_row("a", job.id, "SUCCEEDED", timeout=30)
        _wait_live(browser, "a")
        streams_after = sum("/api/dashboard/events" in u for u in browser.call("requests", page="a"))
        assert streams_after > streams_before
        lists_after = sum("/api/dashboard/jobs?" in u for u in browser.call("requests", page="a"))
        assert lists_after == lists_before  # no listing again: the stream caught up by itself

    # Tenant isolation, over the whole session: no row of one tenant ever appeared on the other's page.
    ids_a = {i for i, *_ in browser.seen("a")}
    ids_b = {i for i, *_ in browser.seen("b")}
    assert job_a.id in ids_a and job_b.id in ids_b
    assert not ids_a & ids_b
    assert job_b.id not in ids_a and not {job_a.id, *(j.id for j in during)} & ids_b

    # Signing out forgets the cookie: the next load asks again.
    browser.call("click", page="b", selector="#signout")
    browser.wait_for("b", "() => !document.getElementById('login').hidden")
    browser.call("reload", page="b")
    browser.wait_for("b", "() => !document.getElementById('login').hidden", what="the sign-in form after sign-out")
    # (the 403 and 404 answers the test asked for; the address unreachable while offline)
    expected = ("status of 403", "status of 404", "ERR_INTERNET_DISCONNECTED")
    _no_page_errors(browser, "a", server.http_url, expected)
    _no_page_errors(browser, "b", server.http_url, (*expected, "status of 401"))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def test_dashboard_keeps_up_with_200_jobs(make_server: Any, browser: Browser, capsys: pytest.CaptureFixture[str]) -> None:
    """200 echo jobs submitted at once, each with 10 progress updates over 3 s: every row reaches
    SUCCEEDED, and each committed state change (created, started, finished: the server's own
    timestamps, taken just before the revision is handed to the store, so the figure includes the
    commit) shows on the page (the MutationObserver's Date.now(); same host clock) within 250 ms p99."""
    server: ServerProcess = make_server()
    _open(browser, "load", server.http_url + "/?label=load%3Dyes")
    _wait_live(browser, "load")

    async def submit_all() -> list[str]:
        async with AsyncClient(server.target) as client:
            submitted = await asyncio.gather(*(
                client.submit_job("echo", {"delay_ms": 3000, "steps": 10}, labels={"load": "yes", "n": str(n)})
                for n in range(LOAD_JOBS)))
        return [s.job.id for s in submitted]

    started = time.monotonic()
    ids = asyncio.run(submit_all())
    browser.wait_for("load", """(count) => {
        const rows = document.querySelectorAll('#rows > tr[data-state="SUCCEEDED"]');
        return rows.length === count;
    }""", LOAD_JOBS, timeout=90, what="200 rows SUCCEEDED")
    elapsed = time.monotonic() - started

    with Client(server.target) as client:
        page = client.list(labels={"load": "yes"}, page_size=1000)
    jobs = {j.id: j for j in page.jobs}
    assert set(ids) == set(jobs)
    seen: dict[str, list[tuple[str, int, float, float]]] = {}
    for job_id, state, revision, changed, drawn in browser.seen("load"):
        seen.setdefault(job_id, []).append((state, revision, changed / 1000, (drawn or changed) / 1000))

    latencies: list[float] = []  # commit to the first frame that shows it
    in_dom: list[float] = []  # commit to the DOM change
    by_kind: dict[str, list[float]] = {"created": [], "started": [], "finished": []}
    for job_id, job in jobs.items():
        shown = seen[job_id]
        assert [r for _, r, *_ in shown] == sorted(r for _, r, *_ in shown)  # never backwards
        marks = [("created", job.create_time, {"QUEUED", "RUNNING", "SUCCEEDED"}),
                 ("started", job.start_time, {"RUNNING", "SUCCEEDED"}),
                 ("finished", job.finish_time, {"SUCCEEDED"})]
        for kind, when, states in marks:
            assert when is not None
            changed, drawn = next((c, d) for state, _, c, d in shown if state in states)
            latencies.append((drawn - when.timestamp()) * 1000)
            by_kind[kind].append(latencies[-1])
            in_dom.append((changed - when.timestamp()) * 1000)
    p50, p99, worst = _percentile(latencies, 50), _percentile(latencies, 99), max(latencies)
    revisions_shown = sum(len(v) for v in seen.values())
    report = (f"dashboard: {LOAD_JOBS} jobs, {len(latencies)} state changes, {revisions_shown} row updates "
              f"in {elapsed:.1f} s; commit-to-page latency (to the frame drawn) p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms, max {worst:.1f} ms; to the DOM p99 {_percentile(in_dom, 99):.1f} ms; p99 by "
              f"change: {', '.join(f'{k} {_percentile(v, 99):.0f} ms' for k, v in by_kind.items())} "
              f"(goal p99 < {LATENCY_GOAL_MS:.0f} ms; Chromium {browser.version})")
    with capsys.disabled():
        print("\n" + report)
    assert statistics.fmean(latencies) > -5  # the clocks agree (same host)
    assert p99 < LATENCY_GOAL_MS, report
    _no_page_errors(browser, "load", server.http_url)
