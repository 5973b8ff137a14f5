"""Section ``redis_memory``: the Redis memory a finished job holds while it is retained.

A real gateway on its own redis-server runs N echo jobs with a 64-byte input through the Python client (which
gives every job a request id, as it always does); once all have ended, the bytes every key of the gateway holds
(``MEMORY USAGE``, summed: the job's hash, its request id's key, its tombstone-to-be, its entries in the
indexes) are divided by N. Twice: on Redis's default settings, and with ``hash-max-listpack-value 1024`` (what
k8s/components/redis and docker/compose set), under which a finished job's hash keeps Redis's compact
encoding. The baseline is the goal: 1,500 bytes plus the result's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.common import GatewayServer, Row
from harness.redis import RedisProcess

NAME = "redis_memory"
INPUT = {"x": "a" * 54}  # 64 bytes of JSON: {"x": "aaa..."}
GOAL_BYTES = 1500


def _log(message: str) -> None:
    print(f"[redis_memory] {message}", file=sys.stderr, flush=True)


def _per_job(listpack_value: int | None, jobs: int) -> tuple[float, int, int]:
    """Bytes per finished job, the result's bytes, and the keys per job."""
    from gateway_client import Client

    with tempfile.TemporaryDirectory(prefix="bench-redis-memory-") as folder:
        redis = RedisProcess(Path(folder) / "redis", appendonly=False).start()
        try:
            if listpack_value is not None:
                redis.command("CONFIG", "SET", "hash-max-listpack-value", str(listpack_value))
            server = GatewayServer(f'store = "{redis.url}"\n[routes.echo]\nbackend = "echo"\n')
            with server, Client(server.target, timeout=120) as client:
                futures = [client.submit("echo", INPUT) for _ in range(jobs)]
                for future in futures:
                    future.result(timeout=120)
                result = client.fetch(futures[0].job_id).result
            keys = redis.command("--scan", "--pattern", "gw:*").split()
            total = sum(int(redis.command("MEMORY", "USAGE", key) or 0) for key in keys)
            result_bytes = len(json.dumps({"kind": "output", "value": getattr(result, "value", None)},
                                          separators=(",", ":")))
            return total / jobs, result_bytes, len(keys)
        finally:
            redis.stop()


def run(args: argparse.Namespace) -> list[Row]:
    jobs = 300 if args.quick else 2000
    rows = []
    for label, setting in (("Redis's defaults", None), ("hash-max-listpack-value 1024", 1024)):
        per_job, result_bytes, keys = _per_job(setting, jobs)
        _log(f"{label}: {per_job:.0f} bytes per finished job ({keys} keys for {jobs} jobs)")
        goal = GOAL_BYTES + result_bytes
        rows.append(Row(f"Redis bytes per finished echo job, {label}", "bytes", per_job, goal,
                        goal=f"< {goal} (1,500 + the result's {result_bytes})", met=per_job < goal,
                        note=f"{keys / jobs:.1f} keys per job; before compaction: 7,511 bytes (Redis's defaults)",
                        raw={"jobs": jobs, "keys": keys, "result_bytes": result_bytes}))
    return rows
