"""`gateway serve`: runs the gateway.

    gateway serve [--listen HOST:PORT] [--http-listen HOST:PORT] [--store URL | --data-dir DIR] [--workers N]
                  [--config FILE]
    gateway worker --store URL [--route NAME]... [--workers N] [--listen HOST:PORT] [--config FILE]

``serve`` runs the job API (gRPC, the HTTP facade) and, unless ``--workers 0``, the routes' workers.
``worker`` runs only the workers of the named routes (default: all), taking jobs from the shared queue
of a Redis store, with gRPC health on ``--listen`` (``route/<name>`` is SERVING once its model is warm).

Once serving it prints one JSON line on stdout with the bound addresses (useful with port 0):
``{"event": "serving", "grpc": "127.0.0.1:50051", "http": "127.0.0.1:8080"}``. Logs go to stderr.

A start that fails prints one line, ``gateway: <cause>; set <the setting to change>``, and exits with
a code of its own: 2 invalid configuration, 3 the data dir cannot be used (a file, not writable, on a
full disk: what the start made there is removed again), 4 the data dir is owned by another running
gateway (its pid is named), 5 the gRPC address cannot be listened on, 6 the HTTP address cannot be
listened on, 7 the TLS files cannot be read or do not match (``[tls]``), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Before numpy loads: each whisper job computes its features on its own thread, and OpenBLAS's threads
# on top of those oversubscribe the cores (measured on a 16-core GPU host, 32 jobs at once: 5.8 ms a
# clip with OpenBLAS's default threads, 1.2 ms with one). An operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pydantic import ValidationError

from gateway import __version__, collector
from gateway.allocator import map_large_allocations
from gateway.errors import StartupError
from gateway.http import parse_address
from gateway.logcontext import FIELDS, JobLogFilter
from gateway.server import Gateway
from gateway.settings import Settings, load_settings

__all__ = ["main"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:  # the job the line is about (gateway.logcontext)
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(JobLogFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


async def _serve(settings: Settings, api: bool = True) -> None:
    import signal

    loop = asyncio.get_running_loop()
    logging.getLogger("gateway").info("event loop: %s", type(loop).__module__.split(".")[0])
    async with Gateway(settings, api=api) as gateway:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gateway.request_stop)
        grpc_host, _ = parse_address(settings.listen)
        line = {"event": "serving", "grpc": f"{grpc_host}:{gateway.grpc_port}"}
        if gateway.http_port:
            http_host, _ = parse_address(settings.http_listen)
            line["http"] = f"{http_host}:{gateway.http_port}"
        print(json.dumps(line), flush=True)
        collector.settle_after_startup()
        try:
            await gateway.wait_for_stop()
        finally:
            collector.before_shutdown()


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop's maker (None: asyncio's own); ImportError when uvloop is asked for and missing."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def _configuration_error(exc: Exception) -> str:
    """One line: each problem of a ValidationError as "where: what" (its own str() takes several lines)."""
    if not isinstance(exc, ValidationError):
        return " ".join(str(exc).split())
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(" ".join(p.split()) for p in problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="A streaming gRPC gateway for asynchronous inference.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gateway (gRPC default 127.0.0.1:50051)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="gRPC address (default 127.0.0.1:50051)")
    serve.add_argument("--http-listen", metavar="HOST:PORT", help="HTTP address (default 127.0.0.1:8080; '' for none)")
    serve.add_argument("--data-dir", metavar="DIR", type=Path, help="where the SQLite store lives (default ./data)")
    serve.add_argument("--store", metavar="URL", help="redis://HOST:PORT/DB: a shared Redis store (default: SQLite)")
    serve.add_argument("--workers", metavar="N", type=int, help="workers per route here, instead of the routes' own (0: none)")
    worker = commands.add_parser("worker", help="run only the routes' workers, on a shared (Redis) store")
    worker.add_argument("--store", metavar="URL", help="redis://HOST:PORT/DB (required: workers share its queue)")
    worker.add_argument("--route", metavar="NAME", action="append", help="run this route's jobs (repeatable; default: all)")
    worker.add_argument("--workers", metavar="N", type=int, help="workers per route (default: the routes' own)")
    worker.add_argument("--listen", metavar="HOST:PORT", help="gRPC health address (default 127.0.0.1:50061)")
    worker.add_argument("--config", metavar="FILE", type=Path, help="a TOML configuration file")
    worker.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument("--config", metavar="FILE", type=Path, help="a TOML configuration file")
    serve.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)

    is_worker = args.command == "worker"
    try:
        if is_worker:
            settings = load_settings(args.config, listen=args.listen or "127.0.0.1:50061", http_listen="",
                                     store=args.store, workers=args.workers, log_level=args.log_level)
            if not settings.store:
                raise ValueError("gateway worker needs a shared store: --store redis://HOST:PORT/DB")
            if args.route:
                unknown = sorted(set(args.route) - set(settings.routes))
                if unknown:
                    raise ValueError(f"no route named {', '.join(unknown)}; routes: {', '.join(settings.routes)}")
                settings = settings.model_copy(update={"routes": {n: settings.routes[n] for n in args.route}})
        else:
            settings = load_settings(
                args.config, listen=args.listen, http_listen=args.http_listen, data_dir=args.data_dir,
                store=args.store, workers=args.workers, log_level=args.log_level,
            )
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"gateway: invalid configuration: {_configuration_error(exc)}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    # Large uploads' buffers go back to the system once done. The threshold is the inference's to pay:
    # a process that runs whisper jobs keeps CTranslate2's buffers (1-4 MiB) on the heap, where mapping
    # each on its own made a transcription a third slower (gateway.allocator).
    runs_whisper = settings.workers != 0 and any(r.backend == "whisper" for r in settings.routes.values())
    if runs_whisper:
        # (No raised trim threshold: the per-thread arenas, where gRPC's receive slices and the jobs'
        # decoding live, shrink only when a free leaves trim_threshold at a heap's top, and malloc_trim
        # never shrinks them; at 256 MiB a whisper process kept 20-30 MiB per arena after each burst
        # of uploads, more arenas with each burst: issue 27.)
        map_large_allocations(4 << 20)
    else:
        map_large_allocations(1 << 20)
    try:
        loop_factory = _loop_factory(settings.event_loop)
    except ImportError:
        print("gateway: invalid configuration: event_loop: uvloop is not installed (pip install uvloop)", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(settings, api=not is_worker))
    except StartupError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
