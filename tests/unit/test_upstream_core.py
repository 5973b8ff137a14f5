"""The upstream core's invariants, whatever order the provider's news comes in: revisions never go
backwards, the first terminal snapshot wins, and the webhook inbox takes only its job's secret."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

from gateway.backends.upstream.core import FAILED, QUEUED, RUNNING, SUCCEEDED, Snapshot, Tracker
from gateway.backends.upstream.inbox import Delivery, Inbox
from gateway.jobs import Job, JobState


class FakeContext:
    def __init__(self) -> None:
        self.job = Job(id="j1", tenant="", route="r", state=JobState.QUEUED, revision=1, created=0.0)
        self.reports: list[dict[str, Any]] = []
        self.starts = 0

    async def started(self) -> None:
        self.starts += 1

    async def report(self, **changes: Any) -> None:
        self.reports.append(changes)


def snapshots() -> list[Snapshot]:
    out = [Snapshot(QUEUED, queue_position=3), Snapshot(QUEUED, queue_position=1), Snapshot(RUNNING, logs="")]
    for i in range(1, 6):
        out.append(Snapshot(RUNNING, outputs=[f"t{k}" for k in range(i)], logs="".join(f"line {k}\n" for k in range(i))))
    out.append(Snapshot(SUCCEEDED, output=[f"t{k}" for k in range(6)], logs="".join(f"line {k}\n" for k in range(6))))
    return out


def run(order: list[Snapshot]) -> FakeContext:
    ctx = FakeContext()

    async def go() -> None:
        tracker = Tracker(ctx, max_log_bytes=4096)  # type: ignore[arg-type]
        for snapshot in order:
            await tracker.apply(snapshot)
        assert tracker.final is not None or all(not s.done for s in order)

    asyncio.run(go())
    return ctx


def test_in_order_every_output_once_and_the_log_grows() -> None:
    ctx = run(snapshots())
    texts = [s.text for r in ctx.reports for s in r["segments"]]
    assert texts == [f"t{k}" for k in range(6)] and ctx.starts == 1
    logs = [r["logs"] for r in ctx.reports if r["logs"] is not None]
    assert logs == sorted(logs, key=len) and logs[-1].endswith("line 5\n")
    assert [r["queue_position"] for r in ctx.reports if r["queue_position"] is not None] == [3, 1]


def test_shuffled_repeated_and_late_snapshots_never_go_backwards() -> None:
    rng = random.Random(7)
    for _ in range(200):
        order = snapshots() * 2
        rng.shuffle(order)
        ctx = run(order)
        texts = [s.text for r in ctx.reports for s in r["segments"]]
        assert len(texts) == len(set(texts))  # never a chunk twice
        assert texts == [f"t{k}" for k in range(len(texts))]  # in order, never one skipped
        logs = [r["logs"] for r in ctx.reports if r["logs"] is not None]
        assert all(len(a) < len(b) for a, b in itertools.pairwise(logs))
        assert ctx.starts <= 1


def test_the_first_terminal_snapshot_wins() -> None:
    ctx = FakeContext()

    async def go() -> Tracker:
        tracker = Tracker(ctx, 4096)  # type: ignore[arg-type]
        await tracker.apply(Snapshot(FAILED, error="boom"))
        await tracker.apply(Snapshot(SUCCEEDED, output=["late"]))
        await tracker.apply(Snapshot(RUNNING, outputs=["x"]))
        return tracker

    tracker = asyncio.run(go())
    assert tracker.final is not None and tracker.final.state == FAILED and ctx.reports == []


def test_a_long_log_is_kept_as_its_tail_from_a_line_start() -> None:
    ctx = FakeContext()
    text = "".join(f"line {k:04d}\n" for k in range(1000))

    async def go() -> None:
        await Tracker(ctx, 200).apply(Snapshot(RUNNING, logs=text))  # type: ignore[arg-type]

    asyncio.run(go())
    tail = ctx.reports[-1]["logs"]
    assert len(tail.encode()) <= 200 and tail.startswith("line ") and tail.endswith("line 0999\n")


def test_the_inbox_takes_only_the_jobs_own_secret() -> None:
    async def go() -> tuple[list[int], int]:
        async def active(job_id: str) -> bool:
            return job_id == "waiting"

        inbox = Inbox(active, "http://gw.example")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await inbox.attach("j1", "s3cret", queue)
        body = Delivery(b"{}", {})
        statuses = [await inbox.deliver("j1", "s3cret", body), await inbox.deliver("j1", "wrong", body),
                    await inbox.deliver("gone", "x", body), await inbox.deliver("waiting", "x", body)]
        assert await inbox.url("j1", "s3cret") == "http://gw.example/v1/upstream/hooks/j1/s3cret"
        return statuses, queue.qsize()

    statuses, taken = asyncio.run(go())
    assert statuses == [200, 404, 404, 503] and taken == 1


def test_replicate_webhooks_are_taken_only_with_a_valid_signature() -> None:
    """The fake's signer is the one replicate's own client accepts (tests/http/test_fake_replicate.py)."""
    import time

    from gateway.backends.upstream.replicate import signature_valid
    from harness.fakes.replicate import SECRET, sign

    body, now = b'{"id": "p1", "status": "succeeded"}', int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": sign(SECRET, "msg_1", str(now), body)}
    assert signature_valid(SECRET, Delivery(body, headers), now)
    assert not signature_valid(SECRET, Delivery(body + b" ", headers), now)  # tampered
    assert not signature_valid(SECRET, Delivery(body, {**headers, "webhook-id": "msg_2"}), now)
    assert not signature_valid(SECRET, Delivery(body, headers), now + 3600)  # replayed an hour later
    assert not signature_valid(SECRET, Delivery(body, {}), now)  # unsigned
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    assert not signature_valid(other, Delivery(body, headers), now)
