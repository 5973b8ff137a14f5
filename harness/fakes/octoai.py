"""A fake OctoAI endpoint that speaks the asynchronous inference protocol the way `octoai-sdk` expects it.

The hosted service is gone; this fake stands in for an upstream endpoint in the tests. Its faithfulness is
proved by tests/http/test_fake_octoai.py, which runs the real `octoai-sdk==0.2.0` client against it.

Routes (what the SDK calls, see `octoai/client.py` of 0.2.0):

- ``POST /predict``: JSON inputs. With ``X-OctoAI-Async: 1``: 201 ``{"response_id", "poll_url"}``; without it the job
  runs at once and the answer is 200 with the output JSON (the SDK's ``infer`` takes nothing but 200).
- ``GET /v1/requests/{id}``: 200 ``{"status": "pending"|"running"|"completed", "response_url"?}``; unknown id: 404.
- ``GET /v1/responses/{id}``: 200 the output JSON; unknown id: 404.
- ``GET /healthcheck``: 200 when warm, 503 during a configurable cold start.
- ``GET /_stats``, ``GET|POST /_control``: test-only, never faulted, never authenticated.

Every error answer is JSON ``{"error": {"code": <status>, "message": ..., "fault": <kind or null>}}`` and every answer
carries ``X-User-Request-ID`` (later SDKs quote it in their error messages).

In process::

    async with FakeOctoAI(token="t", pending_seconds=0.2) as fake:
        fake.faults.fail_rate = 0.5          # switchable at run time
        ... fake.url, fake.stats ...

As a subprocess::

    python -m harness.fakes.octoai --port 0 --token t --faults '{"fail_rate": 0.3, "targets": ["predict"]}'

prints ``{"event": "serving", "url": "http://127.0.0.1:PORT"}`` on stdout once it accepts connections; drive it with
``POST /_control`` (the same field names as :class:`Faults` and :class:`Timing`, plus ``"reset_stats": true``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import random
import signal
import socket
import struct
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from harness.process import start_serving, stop_process

MAX_BODY_BYTES = 10 * 1024 * 1024  # the hosted service's limit for a request body
ASYNC_HEADER = "X-OctoAI-Async"
REQUEST_ID_HEADER = "X-User-Request-ID"

# The routes a fault can be aimed at (Faults.targets).
PREDICT, POLL, RESULT, HEALTH = "predict", "poll", "result", "health"
ALL_TARGETS = frozenset({PREDICT, POLL, RESULT, HEALTH})
DEFAULT_TARGETS = frozenset({PREDICT, POLL, RESULT})

TRANSCRIPTION = " She sells seashells by the seashore."
_WORDS = [  # (word, start, end, score): the Whisper template's output for the seed's audio
    ("She", 5.553, 5.633, 0.945),
    ("sells", 5.693, 5.954, 0.871),
    ("seashells", 6.014, 6.655, 0.902),
    ("by", 6.735, 6.856, 0.963),
    ("the", 6.896, 6.976, 0.998),
    ("seashore.", 7.056, 8.66, 0.893),
]


def whisper_output(inputs: dict[str, Any]) -> dict[str, Any]:
    """The Whisper template's output shape (see the protocol doc), plus the inputs echoed back.

    A function of the inputs: ``inputs`` is echoed, ``diarize: true`` labels the speaker, and the audio's length
    (when it is a WAV file) is reported as ``audio_duration_s``.
    """
    speaker = "SPEAKER_00" if inputs.get("diarize") else None
    words = [{"word": w, "start": s, "end": e, "score": p, "speaker": speaker} for w, s, e, p in _WORDS]
    segment = {"start": _WORDS[0][1], "end": _WORDS[-1][2], "text": TRANSCRIPTION, "words": words, "speaker": speaker}
    return {
        "prediction_time_ms": 626.4,
        "transcription": TRANSCRIPTION,
        "response": {"segments": [segment], "word_segments": [dict(w) for w in words]},
        "audio_duration_s": _wav_duration(inputs.get("audio")),
        "inputs": inputs,
    }


def _wav_duration(audio_b64: Any) -> float | None:
    """Seconds of audio in a base64 RIFF/WAVE PCM file, else None."""
    if not isinstance(audio_b64, str):
        return None
    try:
        data = base64.b64decode(audio_b64[:5464])  # the first 4098 bytes hold the header
        whole = len(audio_b64) * 3 // 4
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            return None
        pos, byte_rate = 12, None
        while pos + 8 <= len(data):
            chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if chunk == b"fmt ":
                byte_rate = struct.unpack("<I", data[pos + 16:pos + 20])[0]
            elif chunk == b"data" and byte_rate:
                return round(min(size, whole - pos - 8) / byte_rate, 3)
            pos += 8 + size + (size & 1)
    except (ValueError, struct.error):
        return None
    return None


@dataclass
class Faults:
    """What goes wrong, switchable at run time (assign fields, or ``POST /_control``).

    One draw of the seeded RNG per faultable request decides among reset, 5xx and 429 (their rates add up, at most
    1); a slow answer is decided by a second draw and combines with any of them.
    """

    fail_rate: float = 0.0                       # answer one of fail_statuses
    fail_statuses: tuple[int, ...] = (500, 502, 503)
    throttle_rate: float = 0.0                   # answer 429 with Retry-After
    retry_after: int = 1                         # seconds, in the Retry-After header
    reset_rate: float = 0.0                      # close the connection (TCP RST) without answering
    slow_rate: float = 0.0                       # sleep slow_seconds before answering
    slow_seconds: float = 0.0
    targets: frozenset[str] = DEFAULT_TARGETS    # which routes the random faults above apply to (see ALL_TARGETS)
    max_faults: int | None = None                # stop injecting random faults after this many (None: no cap)
    stuck_pending: bool = False                  # jobs created while set never leave "pending"
    stuck_jobs: frozenset[str] = frozenset()     # these job ids never leave "pending"
    failing_results: frozenset[str] = frozenset()  # result fetch keeps answering result_fail_status ("*": every job)
    result_fail_status: int = 500
    bad_token: bool = False                      # 401 to everything (but /_control and /_stats)
    post_status: int | None = None               # answer this status (a 4xx) to every POST /predict
    foreign_base: str = ""                       # a spoofed upstream: poll and response URLs on this base instead
    redirect_polls: str = ""                     # polls answer 302 to this base, same path
    answer_padding: int = 0                      # poll answers carry this many bytes of padding
    seed: int = 0                                # seeds the RNG when set through the constructor or /_control

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("targets", "stuck_jobs", "failing_results"):
            out[key] = sorted(out[key])
        out["fail_statuses"] = list(self.fail_statuses)
        return out


@dataclass
class Timing:
    """How long things take; switchable at run time like Faults."""

    pending_seconds: float = 0.2        # an async job is "pending" this long, then
    running_seconds: float = 0.3        # "running" this long, then "completed"; a sync POST takes running_seconds
    cold_start_seconds: float = 0.0     # /healthcheck answers 503 for this long after start (or a /_control reset)
    cold_start_calls: int = 0           # ... and for this many first calls
    result_ttl_seconds: float | None = None  # a completed job is forgotten (404) this long after it completed

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SET_FIELDS = {"targets", "stuck_jobs", "failing_results"}


def _coerce(obj: Faults | Timing, key: str, value: Any) -> Any:
    if key in _SET_FIELDS:
        value = frozenset([value] if isinstance(value, str) else value)
        if key == "targets" and not value <= ALL_TARGETS:
            raise ValueError(f"targets must be among {sorted(ALL_TARGETS)}")
        return value
    if key == "fail_statuses":
        return tuple(int(v) for v in value)
    current = getattr(obj, key)
    if value is None or current is None:  # the optional ones (max_faults, post_status, result_ttl_seconds)
        return value
    return type(current)(value)  # bool, int or float, as the field is


@dataclass
class Job:
    id: str
    inputs: dict[str, Any]
    created: float
    pending_seconds: float
    running_seconds: float
    stuck: bool
    output: Any = None
    output_error: str | None = None
    computed: bool = False


@dataclass
class Stats:
    posts: int = 0                      # every POST /predict: answered, faulted or refused (401)
    async_posts: int = 0                # ... of those answered 201
    sync_posts: int = 0                 # ... of those answered 200
    polls: Counter[str] = field(default_factory=Counter)          # GET /v1/requests/{id}, per id
    result_fetches: Counter[str] = field(default_factory=Counter)  # GET /v1/responses/{id}, per id
    healthchecks: int = 0
    faults: Counter[str] = field(default_factory=Counter)          # per kind: error, throttle, reset, slow, ...
    user_agents: Counter[str] = field(default_factory=Counter)
    authorization: Counter[str] = field(default_factory=Counter)  # the Authorization headers seen (None: "")

    @property
    def total_polls(self) -> int:
        return sum(self.polls.values())

    @property
    def total_result_fetches(self) -> int:
        return sum(self.result_fetches.values())

    @property
    def total_faults(self) -> int:
        return sum(v for k, v in self.faults.items() if k != "slow")

    @property
    def random_faults(self) -> int:
        """The faults drawn from the RNG that replace an answer (what Faults.max_faults caps)."""
        return self.faults["error"] + self.faults["throttle"] + self.faults["reset"]

    def to_json(self) -> dict[str, Any]:
        return {
            "posts": self.posts, "async_posts": self.async_posts, "sync_posts": self.sync_posts,
            "polls": dict(self.polls), "total_polls": self.total_polls,
            "result_fetches": dict(self.result_fetches), "total_result_fetches": self.total_result_fetches,
            "healthchecks": self.healthchecks, "faults": dict(self.faults), "total_faults": self.total_faults,
            "random_faults": self.random_faults,
            "user_agents": dict(self.user_agents), "authorization": dict(self.authorization),
        }


class _Reset(Exception):
    """The connection was reset on purpose: nothing is to be answered."""


class FakeOctoAI:
    """An OctoAI endpoint on 127.0.0.1, in process (``async with``) or as a subprocess (``main``)."""

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 output_fn: Callable[[dict[str, Any]], Any] = whisper_output,
                 faults: Faults | None = None, timing: Timing | None = None, public_url: str | None = None,
                 **timing_kwargs: Any) -> None:
        self.token = token
        self.host, self.port = host, port
        self.output_fn = output_fn
        self.faults = faults or Faults()
        self.timing = timing or Timing(**timing_kwargs)
        if timing is not None and timing_kwargs:
            raise TypeError("give either timing or its fields, not both")
        self.public_url = public_url        # the base of poll/response URLs; default: the Host the client used
        self.rng = random.Random(self.faults.seed)
        self.remember_settings()
        self.stats = Stats()
        self.jobs: dict[str, Job] = {}
        self._cold_epoch = time.monotonic()
        self._cold_calls = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- lifecycle ----

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware])
        app.router.add_post("/predict", self._predict, name=PREDICT)
        app.router.add_get("/v1/requests/{id}", self._poll, name=POLL)
        app.router.add_get("/v1/responses/{id}", self._result, name=RESULT)
        app.router.add_get("/healthcheck", self._health, name=HEALTH)
        app.router.add_get("/_stats", self._stats)
        app.router.add_get("/_control", self._control)
        app.router.add_post("/_control", self._control)
        return app

    async def start(self) -> FakeOctoAI:
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self.restart_cold()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOctoAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- run-time switches ----

    def remember_settings(self) -> None:
        """Makes the present settings the ones that ``configure(reset=True)`` goes back to."""
        self._initial = (dataclasses.replace(self.faults), dataclasses.replace(self.timing), self.token)

    def restart_cold(self) -> None:
        """Starts the cold start (if any is configured) over, as if the endpoint had just scaled up from zero."""
        self._cold_epoch = time.monotonic()
        self._cold_calls = 0

    def reset_stats(self) -> None:
        self.stats = Stats()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Sets Faults/Timing fields by name (what ``POST /_control`` does); returns the whole configuration."""
        if changes.pop("reset", False):  # back to the settings the fake was made with, stats and jobs cleared
            faults, timing, self.token = self._initial
            self.faults, self.timing = dataclasses.replace(faults), dataclasses.replace(timing)
            self.rng.seed(self.faults.seed)
            changes.update(reset_stats=True, restart_cold=True, clear_jobs=True)
        reset_stats = bool(changes.pop("reset_stats", False))
        restart_cold = bool(changes.pop("restart_cold", False))
        clear_jobs = bool(changes.pop("clear_jobs", False))
        if "token" in changes:
            self.token = changes.pop("token") or None
        fault_names = {f.name for f in dataclasses.fields(Faults)}
        timing_names = {f.name for f in dataclasses.fields(Timing)}
        unknown = set(changes) - fault_names - timing_names
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for key, value in changes.items():
            target: Faults | Timing = self.faults if key in fault_names else self.timing
            setattr(target, key, _coerce(target, key, value))
        if "seed" in changes:
            self.rng.seed(self.faults.seed)
        if restart_cold or {"cold_start_seconds", "cold_start_calls"} & set(changes):
            self.restart_cold()
        if reset_stats:
            self.reset_stats()
        if clear_jobs:
            self.jobs.clear()
        return self.config()

    def config(self) -> dict[str, Any]:
        return {"faults": self.faults.to_json(), "timing": self.timing.to_json(), "token_required": bool(self.token)}

    # ---- helpers ----

    def _base(self, request: web.Request) -> str:
        return self.faults.foreign_base or self.public_url or f"{request.scheme}://{request.host}"

    @staticmethod
    def _error(status: int, message: str, fault: str | None = None, headers: dict[str, str] | None = None
               ) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message, "fault": fault}},
                                 status=status, headers=headers)

    def _job_status(self, job: Job, now: float) -> str:
        if job.stuck or job.id in self.faults.stuck_jobs:
            return "pending"
        elapsed = now - job.created
        if elapsed < job.pending_seconds:
            return "pending"
        if elapsed < job.pending_seconds + job.running_seconds:
            return "running"
        return "completed"

    def _expired(self, job: Job, now: float) -> bool:
        ttl = self.timing.result_ttl_seconds
        if ttl is None or self._job_status(job, now) != "completed":
            return False
        return now - (job.created + job.pending_seconds + job.running_seconds) > ttl

    def _find(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is not None and self._expired(job, time.monotonic()):
            del self.jobs[job_id]
            return None
        return job

    def _compute(self, job: Job) -> None:
        if not job.computed:
            try:
                job.output = self.output_fn(job.inputs)
            except Exception as exc:  # the model failed: the result fetch reports it
                job.output_error = f"{type(exc).__name__}: {exc}"
            job.computed = True

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Drops the connection with a TCP RST: the client sees a reset, not an answer."""
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise _Reset

    async def _inject(self, request: web.Request, target: str) -> web.Response | None:
        """Random faults for a route: an error answer to give, a reset (raises), a delay, or None."""
        f = self.faults
        if f.slow_seconds > 0 and f.slow_rate > 0 and target in f.targets and self.rng.random() < f.slow_rate:
            self.stats.faults["slow"] += 1
            await asyncio.sleep(f.slow_seconds)
        if target not in f.targets or (f.max_faults is not None and self.stats.random_faults >= f.max_faults):
            return None
        if f.reset_rate <= 0 and f.fail_rate <= 0 and f.throttle_rate <= 0:
            return None
        draw = self.rng.random()
        if draw < f.reset_rate:
            self.stats.faults["reset"] += 1
            self._reset(request)
        draw -= f.reset_rate
        if draw < f.fail_rate:
            status = self.rng.choice(f.fail_statuses)
            self.stats.faults["error"] += 1
            return self._error(status, f"injected {status} on {target}", "error")
        draw -= f.fail_rate
        if draw < f.throttle_rate:
            self.stats.faults["throttle"] += 1
            return self._error(429, "Too many requests: slow down", "throttle",
                               headers={"Retry-After": str(f.retry_after)})
        return None

    # ---- middleware: auth, bad token, request ids, resets ----

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await handler(request)
        request_id = str(uuid.uuid4())
        self._count(request)
        try:
            self.stats.user_agents[request.headers.get("User-Agent", "")] += 1
            self.stats.authorization[request.headers.get("Authorization", "")] += 1
            if self.faults.bad_token:
                self.stats.faults["bad_token"] += 1
                response: web.StreamResponse = self._error(401, "Invalid API token", "bad_token")
            elif self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                response = self._error(401, "Missing or invalid API token: send Authorization: Bearer <token>")
            else:
                response = await handler(request)
        except _Reset:
            # Nothing can be answered: the transport is gone. A bare exception would make aiohttp log and try a 500.
            raise asyncio.CancelledError from None
        except web.HTTPException as exc:
            response = self._error(exc.status, exc.reason)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    # ---- routes ----

    def _count(self, request: web.Request) -> None:
        """Counts every request to a route, answered or faulted, authenticated or not."""
        route = request.match_info.route.name
        job_id = request.match_info.get("id", "")
        if route == PREDICT:
            self.stats.posts += 1
        elif route == POLL:
            self.stats.polls[job_id] += 1
        elif route == RESULT:
            self.stats.result_fetches[job_id] += 1
        elif route == HEALTH:
            self.stats.healthchecks += 1
            self._cold_calls += 1

    async def _predict(self, request: web.Request) -> web.Response:
        if (fault := await self._inject(request, PREDICT)) is not None:
            return fault
        if self.faults.post_status is not None:
            self.stats.faults["post_status"] += 1
            status = self.faults.post_status
            return self._error(status, f"injected {status} on predict", "post_status")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return self._error(413, f"Request body over {MAX_BODY_BYTES} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, f"Request body over {MAX_BODY_BYTES} bytes")
        try:
            inputs = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._error(400, "Request body is not JSON")
        if not isinstance(inputs, dict):
            return self._error(400, "Inputs must be a JSON object")
        timing = self.timing
        if request.headers.get(ASYNC_HEADER, "").strip() not in ("", "0", "false"):
            job = Job(id=str(uuid.uuid4()), inputs=inputs, created=time.monotonic(),
                      pending_seconds=timing.pending_seconds, running_seconds=timing.running_seconds,
                      stuck=self.faults.stuck_pending)
            self.jobs[job.id] = job
            self.stats.async_posts += 1
            return web.json_response({"response_id": job.id, "poll_url": f"{self._base(request)}/v1/requests/{job.id}"},
                                     status=201)
        await asyncio.sleep(timing.running_seconds)
        try:
            output = self.output_fn(inputs)
        except Exception as exc:  # the model failed: a 500
            return self._error(500, f"Prediction failed: {type(exc).__name__}: {exc}")
        self.stats.sync_posts += 1
        return web.json_response(output)

    async def _poll(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if (fault := await self._inject(request, POLL)) is not None:
            return fault
        job = self._find(job_id)
        if job is None:
            return self._error(404, f"No request {job_id}")
        if self.faults.redirect_polls:
            return web.Response(status=302, headers={"Location": f"{self.faults.redirect_polls}{request.path}"})
        status = self._job_status(job, time.monotonic())
        body: dict[str, Any] = {"status": status}
        if status == "completed":
            body["response_url"] = f"{self._base(request)}/v1/responses/{job.id}"
        if self.faults.answer_padding:
            body["padding"] = "x" * self.faults.answer_padding
        return web.json_response(body)

    async def _result(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if (fault := await self._inject(request, RESULT)) is not None:
            return fault
        job = self._find(job_id)
        if job is None or self._job_status(job, time.monotonic()) != "completed":
            return self._error(404, f"No response {job_id}")
        if "*" in self.faults.failing_results or job_id in self.faults.failing_results:
            status = self.faults.result_fail_status
            self.stats.faults["failing_result"] += 1
            return self._error(status, f"injected {status} on the result of {job_id}", "failing_result")
        self._compute(job)
        if job.output_error is not None:
            return self._error(500, f"Prediction failed: {job.output_error}")
        return web.json_response(job.output)

    async def _health(self, request: web.Request) -> web.Response:
        if (fault := await self._inject(request, HEALTH)) is not None:
            return fault
        t = self.timing
        if time.monotonic() - self._cold_epoch < t.cold_start_seconds or self._cold_calls <= t.cold_start_calls:
            return self._error(503, "Endpoint is starting (cold start)", "cold_start")
        return web.json_response({"status": "ok"})

    async def _stats(self, request: web.Request) -> web.Response:
        body = self.stats.to_json()
        body["jobs"] = {job_id: self._job_status(job, time.monotonic()) for job_id, job in self.jobs.items()}
        return web.json_response(body)

    async def _control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("a JSON object of settings")
                return web.json_response(self.configure(**changes))
            except (ValueError, TypeError) as exc:
                return self._error(400, str(exc))
        return web.json_response(self.config())


# ---- subprocess entry point ----

async def _serve(args: argparse.Namespace) -> None:
    faults = Faults()
    fake = FakeOctoAI(token=args.token, host=args.host, port=args.port, faults=faults,
                      timing=Timing(pending_seconds=args.pending_seconds, running_seconds=args.running_seconds,
                                    cold_start_seconds=args.cold_start_seconds,
                                    cold_start_calls=args.cold_start_calls))
    settings = json.loads(args.faults) if args.faults else {}
    if args.seed is not None:
        settings["seed"] = args.seed
    fake.configure(**settings)
    fake.remember_settings()
    await fake.start()
    print(json.dumps({"event": "serving", "url": fake.url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


# The token a fake started with ``--token TOKEN`` asks for, and a gateway route to a fake at ``url``
# (named "upstream", its token in UPSTREAM_TOKEN; short polls and retries, for tests).
TOKEN = "upstream-secret"


def route_config(url: str, **extra: Any) -> str:
    settings = {
        "backend": '"octoai"', "endpoint": f'"{url}/predict"', "healthcheck": f'"{url}/healthcheck"',
        "token_env": '"UPSTREAM_TOKEN"', "poll_initial_seconds": 0.1, "poll_max_seconds": 0.4,
        "retry_initial_seconds": 0.05, "retry_max_seconds": 0.3, "max_retries": 10, "deadline_seconds": 30,
        "health_interval_seconds": 0.2, **extra,
    }
    return "[routes.upstream]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


class FakeProcess:
    """The fake as a subprocess (``python -m harness.fakes.octoai``), driven over /_control and /_stats."""

    def __init__(self, *args: str) -> None:
        self.proc, event, _ = start_serving([sys.executable, "-m", "harness.fakes.octoai", "--port", "0", *args],
                                            what="the fake OctoAI", timeout=30,
                                            die_with_parent=False)
        self.url: str = event["url"]

    def control(self, **changes: Any) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/_control", data=json.dumps(changes).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=10) as resp:
            return json.load(resp)

    def stop(self) -> None:
        stop_process(self.proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.fakes.octoai", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    parser.add_argument("--pending-seconds", type=float, default=Timing.pending_seconds)
    parser.add_argument("--running-seconds", type=float, default=Timing.running_seconds)
    parser.add_argument("--cold-start-seconds", type=float, default=0.0)
    parser.add_argument("--cold-start-calls", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults", default=None,
                        help='JSON object of settings, as for POST /_control, e.g. \'{"fail_rate": 0.2}\'')
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
