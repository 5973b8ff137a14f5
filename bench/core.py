"""Section ``core``: Submit throughput, push latency and memory, each against a bare grpc.aio server.

1. Submit throughput: echo jobs with no delay, closed-loop from one load process, against the bare
   server of bench/bare.py answering a fixed SubmitResponse. Rounds alternate gateway / bare /
   gateway with request_id. After each gateway round, the load process checks with List that its
   jobs really ran (backlog at the end of the window, time to drain, count SUCCEEDED).
   Goal: gateway >= 0.5x bare. With ``--against REV`` (default HEAD~1, the previous commit), that
   commit's gateway runs in the same rounds too: the row "against REV" is this checkout over it.
2. Push latency: W watchers of one job; latency = receipt of the terminal revision - the job's
   finish_time. The gateway's job is an echo job with ``delay_ms`` long enough for every watcher to
   attach; the bare server fans one message out when fired. Rounds alternate; the table holds the
   median over rounds of each round's percentile. Goal: gateway p99 <= 1.25x bare.
   Then J jobs x W watchers at once (p50 / p99, reported).
3. Server RSS (VmRSS) while the J x W streams are attached, and idle before. Goal: < 1 GiB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BareServer,
    GatewayServer,
    LoadProcess,
    Row,
    Server,
    abba,
    cpu_seconds,
    median,
    rss_mib,
    source_tree,
    started,
)

NAME = "core"

SUBMIT_GOAL = 0.5
PUSH_P99_GOAL = 1.25
RSS_GOAL_MIB = 1024.0


@dataclass(frozen=True)
class Config:
    rounds: int = 5  # submit rounds (each: gateway, bare, gateway with request_id)
    warmup_s: float = 1.0
    duration_s: float = 4.0
    channels: int = 2  # tuned for the bare server's best throughput here (2 x 64 ~ 4 x 128)
    concurrency: int = 64
    push_rounds: int = 5
    push_watchers: int = 1000
    push_channels: int = 10
    wide_rounds: int = 3
    wide_jobs: int = 100
    wide_per_job: int = 100
    wide_channels: int = 20
    watch_timeout_s: float = 120.0


FULL = Config()
QUICK = Config(
    rounds=1, warmup_s=0.5, duration_s=1.0, push_rounds=1, push_watchers=200, push_channels=4,
    wide_rounds=1, wide_jobs=10, wide_per_job=20, wide_channels=4, watch_timeout_s=60.0,
)


def _log(message: str) -> None:
    print(f"[core] {message}", file=sys.stderr, flush=True)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# -- 1. submit throughput ------------------------------------------------------------------------

# The gateway serves on uvloop (event_loop = "auto"); the baseline is the bare server on asyncio's own loop,
# as the goal was set, and the bare server on uvloop is measured too, to show what the loop alone gives.
SUBMIT_VARIANTS = ("gateway", "bare", "gateway_request_id", "bare_uvloop")


def _submit_round(server: Server, variant: str, cfg: Config, label: str) -> dict[str, Any]:
    spec = {
        "mode": "submit", "target": server.target, "label": label, "channels": cfg.channels,
        "concurrency": cfg.concurrency, "warmup_s": cfg.warmup_s, "duration_s": cfg.duration_s,
        "request_ids": variant == "gateway_request_id", "verify": not variant.startswith("bare"), "drain_timeout_s": 60,
    }
    with LoadProcess(spec) as load:
        load.expect("window_start", timeout=cfg.warmup_s + 60)
        cpu0 = cpu_seconds(server.pid)
        load.expect("window_end", timeout=cfg.duration_s + 60)
        cpu1 = cpu_seconds(server.pid)
        result = load.result(timeout=180)
    if cpu0 is not None and cpu1 is not None:  # the server's CPU time (all threads) over the window
        result["server_cpu_s"] = cpu1 - cpu0
        result["server_cpu_us_per_submit"] = (cpu1 - cpu0) / max(1, result["completed_in_window"]) * 1e6
    result["server_rss_mib"] = server.rss_mib()
    return result


def _before(against: str, into: Path) -> tuple[GatewayServer | None, str]:
    """The gateway of commit ``against``, started (None, and why, if it cannot be): the previous-commit baseline."""
    if not against:
        return None, ""
    try:
        tree, described = source_tree(against, into)
        server = GatewayServer(tree=tree)
        server.label = "gateway-before"
        server.start()
        return server, described
    except RuntimeError as exc:
        _log(f"no previous-commit baseline: {exc}")
        return None, str(exc).splitlines()[0]


def bench_submit(cfg: Config, against: str = "") -> list[Row]:
    variants = list(SUBMIT_VARIANTS)
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in [*variants, "gateway_before"]}
    with tempfile.TemporaryDirectory(prefix="bench-before-") as scratch, \
            started(GatewayServer(), BareServer(), BareServer(uvloop=True)) as (gateway, bare, bare_uvloop):
        before, described = _before(against, Path(scratch))
        if before is not None:
            variants.insert(1, "gateway_before")
        try:
            _submit_rounds(cfg, variants, rounds, {"bare": bare, "bare_uvloop": bare_uvloop, "gateway_before": before},
                           gateway)
        finally:
            if before is not None:
                before.stop()
    rows = _submit_rows(cfg, rounds)
    if against:
        rows.insert(1, _before_row(against, described, rounds))
    return rows


def _submit_rounds(cfg: Config, variants: list[str], rounds: dict[str, list[dict[str, Any]]],
                   others: dict[str, Server | None], gateway: Server) -> None:
    stored = 0  # jobs in the gateway's store so far
    for r in range(cfg.rounds):
        for variant in abba(variants, r):
            server = others.get(variant) or gateway
            result = _submit_round(server, variant, cfg, f"submit-{variant}-{r}")
            if server is gateway:
                result["stored_before"] = stored
                stored += result["submitted_ok"]
            rounds[variant].append(result)
            extra = ""
            if "backlog_at_end" in result:
                extra = (f", backlog at end {result['backlog_at_end']}, drained in {result['drain_s']:.2f} s, "
                         f"{result['succeeded']}/{result['submitted_ok']} SUCCEEDED")
            _log(f"submit round {r + 1}/{cfg.rounds} {variant}: {result['throughput']:,.0f}/s{extra}")


def _per_round(results: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> str:
    """Each round's ratio to the baseline's round run beside it: robust to slow drifts of the machine."""
    return ", ".join(f"{a['throughput'] / b['throughput']:.2f}" for a, b in zip(results, baseline, strict=True))


def _before_row(against: str, described: str, rounds: dict[str, list[dict[str, Any]]]) -> Row:
    """This checkout's Submit over commit ``against``'s, both run in the same rounds."""
    now, then = rounds["gateway"], rounds["gateway_before"]
    if not then:
        return Row(f"Submit throughput, against {against}", "jobs/s", median([x["throughput"] for x in now]), None,
                   note=f"not measured: {described}")
    ratios = _per_round(now, then)
    cpu = median([x.get("server_cpu_us_per_submit") for x in then])
    return Row(f"Submit throughput, against {against}", "jobs/s", median([x["throughput"] for x in now]),
               median([x["throughput"] for x in then]),
               note=f"{described}; per-round ratios {ratios}; its server CPU {_fmt(cpu)} us per Submit",
               raw={"before_rounds": then})


def _submit_rows(cfg: Config, rounds: dict[str, list[dict[str, Any]]]) -> list[Row]:
    def throughput(variant: str) -> float | None:
        return median([x["throughput"] for x in rounds[variant]])

    def verified(variant: str) -> tuple[bool, str]:
        results = rounds[variant]
        ok = all(
            x["succeeded"] == x["submitted_ok"] and x["backlog_after_drain"] == 0 and not x["errors"]
            for x in results
        )
        backlog = max(x["backlog_at_end"] for x in results)
        drain = max(x["drain_s"] for x in results)
        done = sum(x["succeeded"] for x in results)
        sent = sum(x["submitted_ok"] for x in results)
        note = f"backlog at end <= {backlog} jobs, drained <= {drain:.2f} s; {done}/{sent} SUCCEEDED"
        errors = [x["errors"] for x in results if x["errors"]]
        if errors:
            note += f"; errors {errors}"
        return ok, note

    def per_round(variant: str, baseline: str) -> str:
        return _per_round(rounds[variant], rounds[baseline])

    bare_tp = throughput("bare")
    rows = []
    for variant, name in (("gateway", "Submit throughput"), ("gateway_request_id", "Submit throughput, request_id")):
        ok, note = verified(variant)
        note = f"per-round ratios {per_round(variant, 'bare')}; " + note
        if variant == "gateway_request_id":
            note += "; jobs/s by round " + ", ".join(
                f"{x['throughput']:,.0f} (~{x['stored_before']:,} jobs stored)" for x in rounds[variant]
            )
        row = Row(name, "jobs/s", throughput(variant), bare_tp, note=note,
                  raw={"gateway_rounds": rounds[variant], "bare_rounds": rounds["bare"], "config": asdict(cfg)})
        if variant == "gateway":
            row.goal = f">= {SUBMIT_GOAL:.2f}x bare"
            row.met = ok and row.ratio is not None and row.ratio >= SUBMIT_GOAL
        rows.append(row)
    uv_tp = throughput("bare_uvloop")
    rows.append(Row(
        "Submit throughput, against bare on uvloop", "jobs/s", throughput("gateway"), uv_tp,
        note="the gateway serves on uvloop (event_loop = auto); the same bare server on uvloop: what the loop alone "
             f"gives ({_fmt(uv_tp)} against {_fmt(bare_tp)}/s on asyncio's loop); per-round ratios "
             + per_round("gateway", "bare_uvloop"),
        raw={"bare_uvloop_rounds": rounds["bare_uvloop"]},
    ))
    rows.append(Row(
        "Submit: server CPU per request", "us",
        median([x.get("server_cpu_us_per_submit") for x in rounds["gateway"]]),
        median([x.get("server_cpu_us_per_submit") for x in rounds["bare"]]),
        note="all threads, over the measuring window; the gateway's includes running the echo job "
             f"(client: {_fmt(median([x['client_cpu_us_per_submit'] for x in rounds['gateway']]))} us gateway rounds, "
             f"{_fmt(median([x['client_cpu_us_per_submit'] for x in rounds['bare']]))} us bare rounds)",
    ))
    rows.append(Row(
        "Submit latency p50 (client)", "ms",
        median([x["latency_p50_ms"] for x in rounds["gateway"]]),
        median([x["latency_p50_ms"] for x in rounds["bare"]]),
        note=f"{cfg.concurrency} in flight over {cfg.channels} channels",
    ))
    return rows


# -- 2. push latency and 3. memory ---------------------------------------------------------------


HEARTBEAT_MS = 10_000  # the gateway's default heartbeat_seconds


def _delay(attach_ms: float) -> float:
    """The echo job's delay_ms for watchers that take about ``attach_ms`` to attach."""
    wanted = max(1000.0, attach_ms * 1.5 + 500)
    return min(wanted, max(HEARTBEAT_MS - 1000, attach_ms + 1500))


class _Watch:
    """Runs watch rounds against one server, adapting the echo job's delay to the attach time."""

    def __init__(self, server: Server, kind: str, cfg: Config, submit_target: str = "") -> None:
        self.server = server
        self.kind = kind
        self.cfg = cfg
        self.submit_target = submit_target  # another replica to submit through (watching on ``server``)
        self.delay_ms: dict[int, float] = {}
        self.attach_ms_per_stream = 0.5  # a first guess; then the slowest seen

    def round(self, jobs: int, per_job: int, channels: int, tag: str) -> dict[str, Any]:
        streams = jobs * per_job
        # The echo job must outlast the attaching of every watcher, but not by much (idle time), and
        # should end before the first heartbeats (10 s after attaching) so they do not overlap the push.
        delay = self.delay_ms.get(streams, _delay(self.attach_ms_per_stream * streams))
        for attempt in range(3):
            spec = {
                "mode": "watch", "target": self.server.target, "kind": self.kind, "jobs": jobs,
                "per_job": per_job, "channels": channels, "delay_ms": delay, "tag": f"{tag}-a{attempt}",
                "wait_go": True, "timeout_s": self.cfg.watch_timeout_s, "submit_target": self.submit_target,
            }
            cpu0 = cpu_seconds(self.server.pid)
            with LoadProcess(spec) as load:
                attached = load.expect("attached", timeout=self.cfg.watch_timeout_s + 30)
                rss = self.server.rss_mib()
                cpu1 = cpu_seconds(self.server.pid)
                load.send("go")
                result = load.result(timeout=self.cfg.watch_timeout_s + 30 + delay / 1000)
            cpu2 = cpu_seconds(self.server.pid)
            if cpu0 is not None and cpu1 is not None and cpu2 is not None:
                # The server's CPU time (all threads) per stream: opening it (for the gateway, with the
                # Submits), then pushing the terminal message and ending it (the idle wait costs ~0).
                result["server_cpu_us_per_stream_attach"] = (cpu1 - cpu0) / streams * 1e6
                result["server_cpu_us_per_stream_push"] = (cpu2 - cpu1) / streams * 1e6
            result["rss_attached_mib"] = rss
            result["attach_s"] = attached.get("attach_s", result.get("attach_s"))
            result["delay_ms"] = delay if self.kind == "gateway" else None
            if result["received"] != streams or result["errors"]:
                raise RuntimeError(f"{self.kind} watch round {tag}: {result}")
            self.attach_ms_per_stream = max(self.attach_ms_per_stream, result["attach_s"] * 1000 / streams)
            if not result["late"]:
                self.delay_ms[streams] = _delay(result["attach_s"] * 1000)
                return result
            delay = max(delay * 2, result["attach_s"] * 1000 * 2 + 1000)
            _log(f"{self.kind} watch round {tag}: a job finished before every watcher attached; "
                 f"again with delay_ms {delay:.0f}")
        raise RuntimeError(f"{self.kind} watch round {tag}: watchers never attached in time")


def _push_rows(name: str, rounds: dict[str, list[dict[str, Any]]], p99_goal: bool) -> list[Row]:
    rows = []
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        row = Row(
            f"{name} {label}", "ms",
            median([x[key] for x in rounds["gateway"]]), median([x[key] for x in rounds["bare"]]),
            raw={"gateway_rounds": rounds["gateway"], "bare_rounds": rounds["bare"]} if key == "p99_ms" else {},
        )
        if key == "p99_ms" and p99_goal:
            row.goal = f"<= {PUSH_P99_GOAL:.2f}x bare"
            row.met = row.ratio is not None and row.ratio <= PUSH_P99_GOAL
        rows.append(row)
    return rows


def bench_push(cfg: Config) -> list[Row]:
    single: dict[str, list[dict[str, Any]]] = {"gateway": [], "bare": []}
    wide: dict[str, list[dict[str, Any]]] = {"gateway": [], "bare": []}
    with started(GatewayServer(), BareServer()) as (gateway, bare):
        time.sleep(1.0)
        idle = {"gateway": gateway.rss_mib(), "bare": bare.rss_mib()}
        runners = {"gateway": _Watch(gateway, "gateway", cfg), "bare": _Watch(bare, "bare", cfg)}
        w = cfg.push_watchers
        for r in range(cfg.push_rounds):
            for kind in abba(("gateway", "bare"), r):
                result = runners[kind].round(1, w, cfg.push_channels, f"push1-{r}")
                single[kind].append(result)
                _log(f"push 1x{w} round {r + 1}/{cfg.push_rounds} {kind}: p50 {_fmt(result['p50_ms'], 1)} ms, "
                     f"p99 {_fmt(result['p99_ms'], 1)} ms, max {_fmt(result['max_ms'], 1)} ms "
                     f"(attach {result['attach_s']:.2f} s)")
        jobs, per_job = cfg.wide_jobs, cfg.wide_per_job
        for r in range(cfg.wide_rounds):
            for kind in abba(("gateway", "bare"), r):
                result = runners[kind].round(jobs, per_job, cfg.wide_channels, f"pushN-{r}")
                wide[kind].append(result)
                _log(f"push {jobs}x{per_job} round {r + 1}/{cfg.wide_rounds} {kind}: "
                     f"p50 {_fmt(result['p50_ms'], 1)} ms, p99 {_fmt(result['p99_ms'], 1)} ms "
                     f"(attach {result['attach_s']:.2f} s, RSS {_fmt(result['rss_attached_mib'], 1)} MiB, "
                     f"finish spread {_fmt(result['finish_spread_ms'], 1)} ms)")
        peak = {"gateway": rss_mib(gateway.pid, "VmHWM"), "bare": rss_mib(bare.pid, "VmHWM")}

    rows = _push_rows(f"Push latency 1 job x {w}", single, p99_goal=True)
    for phase in ("attach", "push"):
        key = f"server_cpu_us_per_stream_{phase}"
        rows.append(Row(
            f"Server CPU per watcher, {phase}", "us",
            median([x.get(key) for x in single["gateway"] + wide["gateway"]]),
            median([x.get(key) for x in single["bare"] + wide["bare"]]),
            note="all threads, median over all watch rounds: opening the stream and sending the snapshot "
                 "(gateway: and the Submits)" if phase == "attach" else
                 "the terminal message and the end of the stream (the idle wait before costs ~0)",
        ))
    wide_rows = [r for r in _push_rows(f"Push latency {jobs} jobs x {per_job}", wide, p99_goal=False)
                 if not r.name.endswith("max")]
    wide_rows[0].note = (
        f"the jobs' finish times spread over {_fmt(median([x['finish_spread_ms'] for x in wide['gateway']]))} ms "
        f"(gateway) vs {_fmt(median([x['finish_spread_ms'] for x in wide['bare']]))} ms (bare, all groups fired "
        "at once); one Python client receives all the streams, so it bounds both"
    )
    rows += wide_rows
    rows.append(Row(
        f"Attach time, {jobs * per_job:,} streams", "s",
        median([x["attach_s"] for x in wide["gateway"]]), median([x["attach_s"] for x in wide["bare"]]),
        note="from the last Submit to every stream's first message, at most 500 streams opening at once",
    ))
    rows.append(Row("Server RSS idle", "MiB", idle["gateway"], idle["bare"], note="before any watcher"))
    rss_gateway = max((x["rss_attached_mib"] for x in wide["gateway"] if x["rss_attached_mib"]), default=None)
    rss_bare = max((x["rss_attached_mib"] for x in wide["bare"] if x["rss_attached_mib"]), default=None)
    rows.append(Row(
        f"Server RSS, {jobs * per_job:,} watchers attached", "MiB", rss_gateway, rss_bare,
        goal=f"< {RSS_GOAL_MIB:,.0f} MiB", met=rss_gateway is not None and rss_gateway < RSS_GOAL_MIB,
        note=f"max over rounds; peak (VmHWM) gateway {_fmt(peak['gateway'], 1)}, bare {_fmt(peak['bare'], 1)}",
        raw={"idle": idle, "peak_vmhwm": peak},
    ))
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    cfg = QUICK if args.quick else FULL
    return bench_submit(cfg, getattr(args, "against", "")) + bench_push(cfg)
