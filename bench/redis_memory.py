"""Section ``redis_memory``: the Redis memory a finished job holds while it is retained.

A real gateway on its own redis-server runs N echo jobs with a 64-byte input through the Python client (which
gives every job a request id, as it always does); once all have ended, the bytes every key of the gateway holds
(``MEMORY USAGE``, summed: the job's hash, its request id's key, its tombstone-to-be, its entries in the
indexes) are divided by N. Twice: on Redis's default settings, and with ``hash-max-listpack-value 1024`` (what
k8s/components/redis and docker/compose set), under which a finished job's hash keeps Redis's compact
encoding. The baseline is the goal: 1,500 bytes plus the result's own.

On the first run it also counts the Redis commands the N jobs cost (from submit to done, the gateway being
its API and its workers): the commands the gateway sends (each a round trip, a script's EVALSHA counting one;
counted by ``MONITOR``) and every command Redis runs (``INFO commandstats``: a script's own calls included).
For comparison, the issue measured Celery at 18 commands per task on the same kind of machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import GatewayServer, Row
from harness.redis import RedisProcess

NAME = "redis_memory"
INPUT = {"x": "a" * 54}  # 64 bytes of JSON: {"x": "aaa..."}
GOAL_BYTES = 1500


def _log(message: str) -> None:
    print(f"[redis_memory] {message}", file=sys.stderr, flush=True)


def _commandstats(redis: RedisProcess) -> dict[str, int]:
    """Calls per command since Redis started (a script's own calls counted too)."""
    calls = {}
    for line in redis.command("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            calls[name] = int(fields.split(",")[0].split("=")[1])
    return calls


@contextmanager
def _monitor(redis: RedisProcess, out: Path) -> Iterator[dict[str, Any]]:
    """The commands clients send while inside (MONITOR, scripts' own calls left out): {"sent": {name: n}}."""
    counted: dict[str, Any] = {}
    with out.open("w") as sink:
        proc = subprocess.Popen(["redis-cli", "-p", str(redis.port), "MONITOR"], stdout=sink, stderr=subprocess.DEVNULL)
        try:
            while out.stat().st_size == 0:  # its "OK": watching
                if proc.poll() is not None:
                    raise RuntimeError("redis-cli MONITOR exited")
                time.sleep(0.01)
            yield counted
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    sent: dict[str, int] = {}
    for line in out.read_text().splitlines():
        head, _, rest = line.partition("] ")
        if not rest or " lua" in head:
            continue
        name = rest.split(" ", 1)[0].strip('"').lower()
        sent[name] = sent.get(name, 0) + 1
    counted["sent"] = sent


def _per_job(listpack_value: int | None, jobs: int, commands: dict[str, Any] | None = None) -> tuple[float, int, int]:
    """Bytes per finished job, the result's bytes, and the keys per job; with ``commands``, also the commands
    the jobs cost, into it."""
    from gateway_client import Client

    with tempfile.TemporaryDirectory(prefix="bench-redis-memory-") as folder:
        redis = RedisProcess(Path(folder) / "redis", appendonly=False).start()
        try:
            if listpack_value is not None:
                redis.command("CONFIG", "SET", "hash-max-listpack-value", str(listpack_value))
            server = GatewayServer(f'store = "{redis.url}"\n[routes.echo]\nbackend = "echo"\n')
            with server, Client(server.target, timeout=120) as client:
                client.submit("echo", INPUT).result(timeout=60)  # the first job: connections, scripts loaded
                with _monitor(redis, Path(folder) / "monitor.log") if commands is not None else _nothing() as seen:
                    before = _commandstats(redis)
                    futures = [client.submit("echo", INPUT) for _ in range(jobs)]
                    for future in futures:
                        future.result(timeout=120)
                    after = _commandstats(redis)
                if commands is not None:
                    commands["run"] = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
                    commands["run"].pop("info", None)  # our own
                    commands["sent"] = seen["sent"]
                result = client.fetch(futures[0].job_id).result
            keys = redis.command("--scan", "--pattern", "gw:*").split()
            total = sum(int(redis.command("MEMORY", "USAGE", key) or 0) for key in keys)
            result_bytes = len(json.dumps({"kind": "output", "value": getattr(result, "value", None)},
                                          separators=(",", ":")))
            return total / jobs, result_bytes, len(keys)
        finally:
            redis.stop()


@contextmanager
def _nothing() -> Iterator[dict[str, Any]]:
    yield {}


def run(args: argparse.Namespace) -> list[Row]:
    jobs = 300 if args.quick else 2000
    rows = []
    commands: dict[str, Any] = {}
    for label, setting in (("Redis's defaults", None), ("hash-max-listpack-value 1024", 1024)):
        per_job, result_bytes, keys = _per_job(setting, jobs, commands if not rows else None)
        _log(f"{label}: {per_job:.0f} bytes per finished job ({keys} keys for {jobs} jobs)")
        goal = GOAL_BYTES + result_bytes
        rows.append(Row(f"Redis bytes per finished echo job, {label}", "bytes", per_job, goal,
                        goal=f"< {goal} (1,500 + the result's {result_bytes})", met=per_job < goal,
                        note=f"{keys / jobs:.1f} keys per job; before compaction: 7,511 bytes (Redis's defaults)",
                        raw={"jobs": jobs, "keys": keys, "result_bytes": result_bytes}))
    sent, ran = sum(commands["sent"].values()), sum(commands["run"].values())
    top = ", ".join(f"{k} {v / jobs:.1f}" for k, v in sorted(commands["sent"].items(), key=lambda kv: -kv[1])[:6])
    _log(f"commands: {sent / jobs:.1f} sent per job ({top}); {ran / jobs:.1f} run per job")
    rows.append(Row("Redis commands per echo job, sent by the gateway (round trips)", "commands", sent / jobs, None,
                    note=f"submit to done, API and workers in one process, {jobs} jobs one after another; {top}; "
                         "Celery: 18 per task (the issue's figure, not measured here)", raw={"sent": commands["sent"]}))
    rows.append(Row("Redis commands per echo job, run by Redis (scripts' own calls included)", "commands", ran / jobs, None,
                    note="INFO commandstats over the same jobs", raw={"run": commands["run"]}))
    return rows
