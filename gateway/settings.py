"""All configuration, in one pydantic-settings class, built once in ``main()`` and passed down.

Sources, strongest first: command-line flags, environment variables (``GATEWAY_`` prefix, ``__``
between nested names, e.g. ``GATEWAY_AUTH__ENABLED=true``; a whole table as JSON, e.g.
``GATEWAY_ROUTES='{"echo": {"backend": "echo"}}'``), the TOML file given by ``--config``, defaults.

Routes are ``[routes.<name>]`` tables with ``backend = "..."`` plus that backend's keys. Without a
``[routes]`` table the routes are ``echo`` and ``whisper``; with one, exactly those it names.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

__all__ = [
    "AuthSettings",
    "EchoRoute",
    "OctoAIRoute",
    "OperatorSettings",
    "RetryPolicy",
    "RouteSettings",
    "Settings",
    "TenantSettings",
    "TlsSettings",
    "WebhookSettings",
    "WhisperRoute",
    "load_settings",
    "split_host",
]

MiB = 1024 * 1024
ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header (or an http_allowed_hosts entry) as (name, port or None), normalised so that
    equal hosts compare equal: lowercase, without the DNS root's trailing dot, an IP address in its
    canonical text (IPv6 without brackets). ValueError when it is not a host: an IPv6 address must be
    bracketed when a port follows, as in a URL; a bare IPv6 address is taken as one without a port."""
    import ipaddress

    text = value.strip().lower()
    port: int | None = None
    if text.startswith("["):
        name, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: expected [IPv6] or [IPv6]:PORT")
        try:
            name = str(ipaddress.IPv6Address(name))
        except ValueError:
            raise ValueError(f"{value!r}: not an IPv6 address in brackets") from None
        rest = rest[1:] if rest else ""
        if rest or text.endswith(":"):
            port = _port(rest, value)
        return name, port
    try:
        return str(ipaddress.IPv6Address(text)), None  # ::1, as an entry: no port can follow
    except ValueError:
        pass
    name, sep, rest = text.rpartition(":")
    if not sep:
        name = text
    else:
        port = _port(rest, value)
    name = name.removesuffix(".")
    try:
        return str(ipaddress.IPv4Address(name)), port
    except ValueError:
        pass
    if not _DNS_NAME.match(name):
        raise ValueError(f"{value!r}: not a host name")
    return name, port


def _port(text: str, value: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ValueError(f"{value!r}: the port must be a number up to 65535")
    return int(text)


MAX_TIMEOUT_SECONDS = 30 * 24 * 3600.0  # a queue_timeout or run_timeout, at most


class RetryPolicy(BaseModel):
    """A route's automatic retry of failures its backend marks transient ([routes.<name>.retry]): the job stays
    RUNNING, its worker waits the backoff and runs it again, and Job.attempt counts the runs."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(
        1, ge=1, le=100, description="Runs of a job at most, the first included; 1: no automatic retry. Only a "
                                     "failure its backend marks transient is retried, and only while the job "
                                     "has streamed no segments (a run again would contradict them).",
    )
    initial_backoff_seconds: float = Field(1.0, gt=0, le=3600, description="The wait before the first retry.")
    backoff_multiplier: float = Field(2.0, ge=1, le=10, description="Each further wait is this times the last.")
    max_backoff_seconds: float = Field(30.0, gt=0, le=3600, description="The longest wait between two runs.")

    def backoff(self, attempt: int) -> float:
        """The wait after run ``attempt`` (1-based) failed, before the next."""
        return min(self.max_backoff_seconds, self.initial_backoff_seconds * self.backoff_multiplier ** (attempt - 1))


class _Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    max_queue: int = Field(1000, ge=1, description="Jobs waiting beyond this are refused (RESOURCE_EXHAUSTED).")
    max_queued_bytes: int = Field(
        512 * MiB, ge=0,
        description="With a Redis store, which keeps inputs in memory: the input bytes of the route's jobs that "
                    "have not ended, at most (beyond: RESOURCE_EXHAUSTED QUEUE_BYTES_FULL); 0: no limit.",
    )
    workers: int = Field(1, ge=1, description="Jobs run at once.")
    queue_timeout_seconds: float = Field(
        0.0, ge=0, le=MAX_TIMEOUT_SECONDS,
        description="The longest a job may wait QUEUED when its Submit sets no queue_timeout (then FAILED "
                    "QUEUE_TIMEOUT); 0: no limit.")
    run_timeout_seconds: float = Field(
        0.0, ge=0, le=MAX_TIMEOUT_SECONDS,
        description="The longest a job may run when its Submit sets no run_timeout (then FAILED RUN_TIMEOUT, its "
                    "backend stopped as a cancel stops it); 0: no limit.")


class EchoRoute(_Route):
    """The built-in diagnostic: inputs delay_ms, steps, fail_with; the result echoes the inputs."""

    backend: Literal["echo"] = "echo"
    workers: int = Field(1024, ge=1, description="Echo jobs only sleep, so many run at once.")
    max_queue: int = 100_000


class WhisperRoute(_Route):
    """The co-located faster-whisper engine."""

    backend: Literal["whisper"] = "whisper"
    model: str = Field("", description="A CTranslate2 model directory, or a hub name; empty: the bundled tiny.en.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when CTranslate2 sees a GPU.")
    compute_type: str = Field("auto", description="auto: int8 on CPU, float16 on GPU.")
    cpu_threads: int = Field(0, ge=0, description="Threads per model replica; 0: the cores this process may use, shared.")
    workers: int = Field(
        0, ge=0,
        description="Jobs transcribed at once; 0: max_batch when batching, else the measured CPU default "
                    "(see the README). Without batching each has its own model replica.",
    )
    batching: bool | None = Field(
        None, description="Batch the 30 s windows of running jobs into one model call; default: on with CUDA."
    )
    without_timestamps: bool | None = Field(
        None, description="Decode without timestamp tokens (a segment per 30 s window of speech); default: on when "
                          "batching on CUDA, where CTranslate2 cannot batch timestamped decoding (see the README).",
    )
    max_batch: int = Field(64, ge=1, le=256, description="Windows in one batched call, at most.")
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="How long a waiting window waits for the batch to fill, at most."
    )
    beam_size: int = Field(5, ge=1, le=20, description="Default beam size when a request gives none.")
    vad_filter: bool = Field(True, description="Skip silence (avoids Whisper's hallucinations on it).")
    language: str = Field("", description="Default language; empty: detected (tiny.en: English).")
    batched: bool = Field(False, description="Use BatchedInferencePipeline (the windows of one file in one call).")
    batch_size: int = Field(8, ge=1, le=256)
    max_queue: int = Field(64, ge=1)
    max_audio_bytes: int = Field(1024 * MiB, ge=1)
    max_audio_seconds: float = Field(4 * 3600.0, gt=0)
    section_seconds: float = Field(
        120.0, ge=60, le=3600,
        description="Audio is decoded, filtered for speech and transcribed this much at a time, so a job's memory "
                    "does not grow with its duration (about 1 MiB per second of section, most of it faster-whisper's "
                    "feature extraction); a section starts where the transcript of the one before ends.",
    )
    warmup: bool = Field(True, description="Run one tiny transcription before reporting SERVING.")


class OctoAIRoute(_Route):
    """An upstream endpoint speaking OctoAI's async protocol, polled once on everyone's behalf."""

    backend: Literal["octoai"] = "octoai"
    endpoint: str = Field(..., description="https://.../predict")
    healthcheck: str = Field("", description="https://.../healthcheck; empty: none.")
    token_env: str = Field("OCTOAI_TOKEN", description="The environment variable holding the bearer token.")
    token: SecretStr | None = Field(None, description="The bearer token; default: the value of token_env.")
    workers: int = Field(1000, ge=1, description="Jobs in flight upstream at once.")
    max_queue: int = 10_000
    max_concurrent_requests: int = Field(32, ge=1, description="Upstream HTTP requests in flight at once.")
    poll_initial_seconds: float = Field(0.2, gt=0, description="First poll interval.")
    poll_max_seconds: float = Field(
        0.5, gt=0, description="Poll interval cap (backoff with jitter): half the seed's 1 s loop, once for all watchers."
    )
    poll_backoff: float = Field(1.5, ge=1.0)
    deadline_seconds: float = Field(3600.0, gt=0, description="A job not completed by then ends FAILED.")
    request_timeout_seconds: float = Field(60.0, gt=0, description="One HTTP request.")
    max_retries: int = Field(8, ge=0, description="Retries of one request on 5xx, 429, timeouts, resets.")
    retry_initial_seconds: float = Field(0.5, gt=0)
    retry_max_seconds: float = Field(30.0, gt=0)
    health_interval_seconds: float = Field(10.0, gt=0)
    max_input_bytes: int = Field(10 * 1000 * 1000, ge=1, description="OctoAI's own limit was 10 MB.")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) besides the endpoint's that poll and response URLs may point "
                    "at; the token goes only to these and the endpoint's.",
    )
    max_answer_bytes: int = Field(1 * MiB, ge=1024, description="The largest submit or poll answer read.")
    max_result_bytes: int = Field(64 * MiB, ge=1024, description="The largest result read.")

    # The upstream core's names for these (gateway.backends.upstream.core), OctoAI's kept for compatibility.
    @property
    def url(self) -> str:
        return self.endpoint

    @property
    def poll_interval_seconds(self) -> float:
        return self.poll_initial_seconds

    max_log_bytes: ClassVar[int] = 0  # OctoAI reports no log
    stream_idle_seconds: ClassVar[float] = 60.0  # nor any stream

    @model_validator(mode="after")
    def _token_from_env(self) -> OctoAIRoute:
        if self.token is None and os.environ.get(self.token_env):
            self.token = SecretStr(os.environ[self.token_env])
        return self

    @field_validator("endpoint", "healthcheck")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r}: expected an http(s) URL")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(r"^https?://[^/\s]+/?$", value):
                raise ValueError(f"{value!r}: expected an origin, scheme://host[:port]")
        return values


class _UpstreamRoute(_Route):
    """What every async-HTTP upstream profile shares (gateway.backends.upstream)."""

    url: str = Field("", description="The API's base URL; the hosted providers' public one by default.")
    token_env: str = Field("", description="The environment variable holding the API token.")
    token: SecretStr | None = Field(None, description="The API token; default: the value of token_env.")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) besides url's that the provider's URLs (status, result, "
                    "stream, cancel) may point at; the token goes only to these and url's.",
    )
    poll_interval_seconds: float = Field(
        1.0, gt=0, description="The fallback poll: sent only when nothing was pushed for this long, then backing "
                               "off to poll_max_seconds.")
    poll_max_seconds: float = Field(30.0, gt=0, description="The longest wait between two fallback polls.")
    poll_backoff: float = Field(1.5, ge=1.0)
    workers: int = Field(1000, ge=1, description="Jobs in flight upstream at once.")
    max_queue: int = 10_000
    max_concurrent_requests: int = Field(32, ge=1, description="Upstream HTTP requests in flight at once.")
    deadline_seconds: float = Field(3600.0, gt=0, description="A job not finished by then is cancelled upstream "
                                                              "and ends FAILED (UPSTREAM_DEADLINE_EXCEEDED).")
    request_timeout_seconds: float = Field(60.0, gt=0, description="One HTTP request.")
    stream_idle_seconds: float = Field(
        60.0, gt=0, description="An event stream silent this long is reconnected (polling goes on meanwhile).")
    max_retries: int = Field(8, ge=0, description="Retries of one request on 5xx, 429, timeouts, resets.")
    retry_initial_seconds: float = Field(0.5, gt=0, description="The first retry's delay (then doubling, jittered).")
    retry_max_seconds: float = Field(30.0, gt=0, description="The longest delay between two retries.")
    health_interval_seconds: float = Field(10.0, gt=0, description="How often the provider's health is checked "
                                                                   "(Cog, RunPod), for the route's health.")
    max_input_bytes: int = Field(10 * 1000 * 1000, ge=1, description="The largest JSON input sent upstream.")
    max_answer_bytes: int = Field(1 * MiB, ge=1024, description="The largest status answer, event or webhook read.")
    max_result_bytes: int = Field(64 * MiB, ge=1024, description="The largest result read.")
    max_log_bytes: int = Field(4096, ge=0, description="The tail of the provider's log kept on the job (Watch).")

    _default_url: ClassVar[str] = ""
    _default_token_env: ClassVar[str] = ""

    @model_validator(mode="after")
    def _defaults(self) -> _UpstreamRoute:
        if not self.url:
            if not self._default_url:
                raise ValueError("url is required (http://HOST:PORT of the server)")
            self.url = self._default_url
        self.url = self.url.rstrip("/")
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"url {self.url!r}: expected an http(s) URL")
        if not self.token_env:
            self.token_env = self._default_token_env
        if self.token is None and self.token_env and os.environ.get(self.token_env):
            self.token = SecretStr(os.environ[self.token_env])
        for value in self.allowed_origins:
            if not re.match(r"^https?://[^/\s]+/?$", value):
                raise ValueError(f"allowed_origins: {value!r}: expected an origin, scheme://host[:port]")
        return self


class CogRoute(_UpstreamRoute):
    """A self-hosted Cog model server (the container format Replicate runs): predictions created with
    an idempotent PUT, followed through Cog's webhooks to the gateway's HTTP face."""

    backend: Literal["cog"] = "cog"
    max_concurrency: int = Field(
        1, ge=1, description="The Cog server's prediction slots (its COG_MAX_CONCURRENCY): the route's jobs in "
                             "flight at once, the others wait here (Cog itself queues nothing).")
    webhook_grace_seconds: float = Field(
        150.0, gt=0, description="How long a job whose prediction has left Cog's slot waits for Cog's (retried) "
                                 "final webhook before it fails UPSTREAM_RESULT_LOST.")
    workers: int = Field(0, ge=0, description="Jobs in flight upstream; 0: max_concurrency.")

    @model_validator(mode="after")
    def _slots(self) -> CogRoute:
        if self.workers == 0:
            self.workers = self.max_concurrency
        return self


class ReplicateRoute(_UpstreamRoute):
    """Replicate's hosted predictions API, on a model, a version or a deployment."""

    backend: Literal["replicate"] = "replicate"
    model: str = Field("", description="owner/name: the model's latest version (official models).")
    version: str = Field("", description="A version id (or owner/name:version).")
    deployment: str = Field("", description="owner/name of a deployment.")
    webhooks: bool = Field(True, description="Also ask for Replicate's webhooks (when the gateway has a public_url "
                                             "or an HTTP face), besides the event stream and the fallback poll.")
    wait_seconds: int = Field(0, ge=0, le=60, description="Prefer: wait=N on create (0: answer at once).")

    _default_url: ClassVar[str] = "https://api.replicate.com"
    _default_token_env: ClassVar[str] = "REPLICATE_API_TOKEN"

    @model_validator(mode="after")
    def _one_target(self) -> ReplicateRoute:
        given = [name for name in ("model", "version", "deployment") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of model (owner/name), version, deployment (owner/name)")
        for name in ("model", "deployment"):
            value = getattr(self, name)
            if value and not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", value):
                raise ValueError(f"{name} {value!r}: expected owner/name")
        return self


class FalRoute(_UpstreamRoute):
    """fal.ai's queue API on one application."""

    backend: Literal["fal"] = "fal"
    model: str = Field(..., description="The application id, owner/app (optionally /path).")

    _default_url: ClassVar[str] = "https://queue.fal.run"
    _default_token_env: ClassVar[str] = "FAL_KEY"

    @field_validator("model")
    @classmethod
    def _app(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?", value):
            raise ValueError(f"{value!r}: expected owner/app")
        return value


class RunPodRoute(_UpstreamRoute):
    """A RunPod serverless endpoint."""

    backend: Literal["runpod"] = "runpod"
    endpoint_id: str = Field(..., description="The endpoint's id.")
    execution_timeout_seconds: float = Field(0, ge=0, description="policy.executionTimeout sent with each job "
                                                                  "(0: the endpoint's own).")

    _default_url: ClassVar[str] = "https://api.runpod.ai/v2"
    _default_token_env: ClassVar[str] = "RUNPOD_API_KEY"

    @field_validator("endpoint_id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(f"{value!r}: expected an endpoint id")
        return value


UPSTREAM_ROUTES = (CogRoute, ReplicateRoute, FalRoute, RunPodRoute)

RouteSettings = Annotated[EchoRoute | WhisperRoute | OctoAIRoute | CogRoute | ReplicateRoute | FalRoute | RunPodRoute,
                          Field(discriminator="backend")]


def _default_routes() -> dict[str, Any]:
    return {"echo": EchoRoute(), "whisper": WhisperRoute()}


# Tokens that appear in this project's documentation and manifests as examples (and the usual stand-ins): whoever
# read them holds them, so a gateway given one refuses to start rather than let it authenticate.
PLACEHOLDER_TOKENS = frozenset({
    "replace-this-token", "replace-me", "replace_me", "change-me", "changeme", "change_me", "changeit",
    "s3cr3t-token-a", "your-token", "your-token-here", "example-token", "placeholder", "token", "secret",
    "password", "xxx", "todo",
})


class OperatorSettings(BaseModel):
    """A tenant that may look at other tenants' jobs on the dashboard ([auth.operators.<tenant>])."""

    model_config = ConfigDict(extra="forbid")

    tenants: list[str] = Field(
        default_factory=list,
        description="The tenants whose jobs this tenant may view on the dashboard (its own always): names that a "
                    "token maps to, or \"*\": every tenant a token maps to and every [tenants.<tenant>] table's.",
    )
    actions: bool = Field(
        False, description="It may also cancel, retry, delete and bulk-cancel those tenants' jobs from the dashboard "
                           "(each such action logged at INFO); false: it views them only.",
    )


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Off for local use; on in the Kubernetes manifests.")
    tokens: dict[str, str] = Field(default_factory=dict, description="Bearer token -> tenant.")
    tokens_file: Path | None = Field(
        None, description="A JSON object, bearer token -> tenant, read at start and added to tokens (a mounted "
                          "Secret: tokens never pass through the environment or the config file).",
    )
    operators: dict[str, OperatorSettings] = Field(
        default_factory=dict,
        description="Tenants that may view (and, with actions, act on) other tenants' jobs on the dashboard "
                    "([auth.operators.<tenant>]); every other tenant sees only its own.",
    )

    @model_validator(mode="after")
    def _read_tokens_file(self) -> AuthSettings:
        if self.tokens_file is None:
            return self
        try:
            loaded = json.loads(self.tokens_file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"auth.tokens_file {self.tokens_file}: {getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()):
            raise ValueError(f"auth.tokens_file {self.tokens_file}: expected a JSON object of token -> tenant strings")
        self.tokens = {**self.tokens, **loaded}
        return self

    @model_validator(mode="after")
    def _check_operators(self) -> AuthSettings:
        """Every operator, and every tenant it names but "*", is a tenant some token maps to (after tokens_file)."""
        known = set(self.tokens.values())
        for operator, allowed in self.operators.items():
            if operator not in known:
                raise ValueError(f"auth.operators.{operator}: no token (auth.tokens, auth.tokens_file) maps to the "
                                 f"tenant {operator!r}")
            for tenant in allowed.tenants:
                if tenant != "*" and tenant not in known:
                    raise ValueError(f"auth.operators.{operator}.tenants: no token (auth.tokens, auth.tokens_file) "
                                     f"maps to the tenant {tenant!r}; name tenants that tokens map to, or \"*\"")
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> AuthSettings:
        for token, tenant in self.tokens.items():
            if token.strip().lower() in PLACEHOLDER_TOKENS or not token.strip():
                raise ValueError(
                    f"auth: the token of tenant {tenant!r} is {token!r}, a documented placeholder that anyone can "
                    "read: put a secret of your own in its place (e.g. `openssl rand -hex 32`)")
        return self


class TlsSettings(BaseModel):
    """TLS on both listeners (gRPC and HTTP). Without cert_file and key_file: plaintext."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = Field(None, description="The server's certificate chain, PEM (leaf first).")
    key_file: Path | None = Field(None, description="The certificate's private key, PEM.")
    client_ca_file: Path | None = Field(
        None, description="A CA bundle, PEM: clients must present a certificate it signed (mTLS); empty: none asked."
    )
    reload_interval_seconds: float = Field(
        10.0, gt=0, description="How often the files are checked; a changed, valid set is used for new connections."
    )

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: set both cert_file and key_file, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls: client_ca_file needs cert_file and key_file (mTLS is on top of TLS)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


def _secrets(value: SecretStr | list[SecretStr] | None, env: str, where: str) -> list[str]:
    """The whsec_ secrets of a [webhooks] table: ``secret`` (one, or a list during a rotation), else the
    whitespace-separated ones in the variable ``secret_env`` names. Each must be whsec_ + base64."""
    import base64
    import binascii

    if value is None:
        raw = os.environ.get(env, "").split() if env else []
    else:
        raw = [v.get_secret_value() for v in (value if isinstance(value, list) else [value])]
    for secret in raw:
        try:
            key = base64.b64decode(secret.removeprefix("whsec_") + "==", validate=False) if secret.startswith("whsec_") else b""
        except (binascii.Error, ValueError):
            key = b""
        if len(key) < 16:
            raise ValueError(f"{where}: a secret must be whsec_ followed by base64 of at least 16 bytes")
    return raw


def _parses(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:
        return False


class TenantSettings(BaseModel):
    """What a tenant gets of the routes it shares with the others ([tenants.<tenant>]; [tenants.default] is
    every tenant not named, and the only one with auth off)."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(
        1.0, gt=0, le=1000, description="Its share of a route's workers while other tenants have jobs waiting too: "
                                        "free workers take the next job from the tenants in weighted round robin.",
    )
    max_queued: int = Field(
        0, ge=0, description="Its jobs waiting on one route at most; beyond, Submit is RESOURCE_EXHAUSTED "
                             "TENANT_QUEUE_FULL. 0: no limit but the route's max_queue.",
    )
    max_running: int = Field(
        0, ge=0, description="Its jobs running at once on one route at most; its others wait (the other tenants' "
                             "jobs are taken meanwhile). 0: no limit.",
    )
    submit_rate: float = Field(
        0.0, ge=0, description="Jobs it may submit per second (all routes), a token bucket holding submit_burst; "
                               "beyond, RESOURCE_EXHAUSTED TENANT_RATE_LIMITED with the true wait. 0: no limit.",
    )
    submit_burst: int = Field(0, ge=0, description="Submits it may make at once after a pause; 0: one second's "
                                                    "worth of submit_rate (at least 1).")

    @property
    def burst(self) -> int:
        return self.submit_burst or max(1, math.ceil(self.submit_rate))


_NO_TENANT_TABLE = TenantSettings()  # (read per Submit and per job taken: made once, not each time)


class WebhookTenant(BaseModel):
    """A tenant's own webhook keys (under [webhooks.tenants.<tenant>]); a key left out is the [webhooks] one."""

    model_config = ConfigDict(extra="forbid")

    allowed_prefixes: list[str] | None = None
    allowed_networks: list[str] | None = None
    secret: SecretStr | list[SecretStr] | None = None
    secret_env: str = ""


class WebhookSettings(BaseModel):
    """Webhooks given at Submit: which URLs are accepted, how deliveries are signed and retried."""

    model_config = ConfigDict(extra="forbid")

    allowed_prefixes: list[str] = Field(
        default_factory=list,
        description="URL prefixes a webhook must start with (https://hooks.example.com/ ...); empty: webhooks are "
                    "refused. http:// only where a prefix says so.",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) a webhook host may resolve to although they are loopback, private or link-local "
                    "(refused otherwise), e.g. 127.0.0.1/32 for a receiver on the same machine.",
    )
    secret: SecretStr | list[SecretStr] | None = Field(
        None, description="The whsec_ secret deliveries are signed with (Standard Webhooks); a list during a rotation "
                          "(every one signs).",
    )
    secret_env: str = Field("", description="A variable holding the secret(s), whitespace-separated, instead of secret.")
    tenants: dict[str, WebhookTenant] = Field(default_factory=dict, description="Per-tenant keys, when auth is on.")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="One delivery attempt, connection to answer.")
    retry_period_seconds: float = Field(
        24 * 3600.0, gt=0, description="How long an event is retried (timeouts, connection failures, 429, 5xx) before "
                                        "it is given up; the job and its result stay stored.",
    )
    backoff_initial_seconds: float = Field(1.0, gt=0, description="The first retry's delay (then doubling, jittered).")
    backoff_max_seconds: float = Field(3600.0, gt=0, description="The longest delay between two attempts.")
    max_concurrent_per_host: int = Field(
        4, ge=1, description="Deliveries in flight to one destination (host:port) at once, per process: a slow "
                             "receiver delays only its own.",
    )
    max_concurrent: int = Field(64, ge=1, description="Deliveries in flight at once, per process.")
    progress_interval_seconds: float = Field(0.5, ge=0, description="Progress deliveries of one job: at most one per this.")
    poll_interval_seconds: float = Field(
        0.25, gt=0, le=60, description="How often due deliveries are looked for (retries, and other processes' jobs)."
    )

    def resolved(self, tenant: str) -> tuple[list[str], list[str], list[str]]:
        """(allowed prefixes, allowed networks, secrets) for a tenant."""
        own = self.tenants.get(tenant)
        prefixes = self.allowed_prefixes if own is None or own.allowed_prefixes is None else own.allowed_prefixes
        networks = self.allowed_networks if own is None or own.allowed_networks is None else own.allowed_networks
        if own is not None and (own.secret is not None or own.secret_env):
            secrets = _secrets(own.secret, own.secret_env, f"webhooks.tenants.{tenant}")
        else:
            secrets = _secrets(self.secret, self.secret_env, "webhooks")
        return prefixes, networks, secrets

    @model_validator(mode="after")
    def _check(self) -> WebhookSettings:
        import ipaddress

        for tenant in ["", *self.tenants]:
            prefixes, networks, secrets = self.resolved(tenant)
            where = f"webhooks.tenants.{tenant}" if tenant else "webhooks"
            for prefix in prefixes:
                if not re.match(r"^https?://[^/?#\s@]+(/[^\s#]*)?$", prefix) or not _parses(prefix):
                    raise ValueError(f"{where}.allowed_prefixes: {prefix!r} is not an http(s) URL prefix")
            for network in networks:
                try:
                    ipaddress.ip_network(network, strict=False)
                except ValueError:
                    raise ValueError(f"{where}.allowed_networks: {network!r} is not a network (CIDR)") from None
            if prefixes and not secrets:
                raise ValueError(f"{where}: webhooks are allowed (allowed_prefixes) but no secret signs them; set secret "
                                 "or secret_env (whsec_ + base64)")
        return self


class AudioUrlSettings(BaseModel):
    """Where a transcription's ``audio_url`` may be fetched from (by the process that runs the job)."""

    model_config = ConfigDict(extra="forbid")

    allowed_prefixes: list[str] = Field(
        default_factory=lambda: ["https://"],
        description="URLs must start with one of these: https:// (any host), or a scheme://host[:port]/path prefix "
                    "(http:// only this way); empty: audio by URL is off.")
    allowed_networks: list[str] = Field(
        default_factory=list, description="Networks (CIDR) a URL's host may resolve to besides public addresses "
                                          "(loopback, private and link-local ones are refused otherwise).")
    max_bytes: int = Field(1024 * MiB, ge=1, description="The largest audio fetched (streamed to disk as it comes).")
    timeout_seconds: float = Field(600.0, gt=0, description="The longest a fetch may take, connection to last byte.")

    @field_validator("allowed_prefixes")
    @classmethod
    def _prefixes(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(r"^https?://", value) or value == "http://":
                raise ValueError(f"{value!r}: https://, or an http(s)://host[:port]/path prefix")
        return values

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a network (CIDR)") from None
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid")

    listen: str = Field("127.0.0.1:50051", description="gRPC address, HOST:PORT (port 0: any free port).")
    http_listen: str = Field("127.0.0.1:8080", description="HTTP address (OctoAI facade, health); empty: off.")
    store: str = Field(
        "", description="Empty: the embedded SQLite store in data_dir. redis://HOST:PORT/DB (rediss:// for TLS): "
        "a shared Redis or Valkey, for several replicas and workers."
    )
    store_password_file: Path | None = Field(
        None, description="A file holding the Redis password (a mounted Secret), sent with store's URL: the password "
                          "is then in neither the settings nor the environment.",
    )
    workers: int | None = Field(
        None, ge=0, description="Workers of every route in this process, instead of each route's own; 0: it runs no jobs."
    )
    lease_seconds: float = Field(
        10.0, gt=0, description="Shared queue: a worker renews its hold on a running job three times in this time; "
        "a job held by a worker silent this long is taken over by another."
    )
    worker_id: str = Field(
        "", max_length=200, pattern=r"^[\x21-\x7e]*$",
        description="Shared queue: this process's name among the workers; a process that comes back under "
        "its name takes its jobs back at once. Empty: the host name and the gRPC port (random if the port is 0).",
    )
    data_dir: Path = Field(Path("data"), description="Where the SQLite store lives, and where Uploads are spooled.")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL", description="NORMAL survives a process crash (kill -9); FULL also a power loss."
    )
    retention_seconds: float = Field(24 * 3600.0, gt=0, description="How long a finished job is kept.")
    sweep_interval_seconds: float = Field(60.0, gt=0, description="How often expired jobs are deleted.")
    heartbeat_seconds: float = Field(10.0, gt=0, description="Watch heartbeat interval while idle.")
    max_receive_bytes: int = Field(32 * MiB, ge=1024, description="Largest request accepted.")
    max_refused_request_bytes: int = Field(
        256 * MiB, ge=1024, lt=2 * 1024 * MiB,
        description="Requests over max_receive_bytes up to this size are received and refused with "
                    "RESOURCE_EXHAUSTED REQUEST_TOO_LARGE, naming the limit; beyond it gRPC refuses them "
                    "from their length prefix, receiving nothing, with no ErrorInfo. Receiving one to refuse "
                    "it costs about three times its size, briefly, and only after the caller authenticated. "
                    "Never below max_receive_bytes + 4 MiB.",
    )
    max_inflight_submit_bytes: int = Field(
        96 * MiB, ge=1024,
        description="Submit request bytes being parsed, checked and stored at once (each costs about four times "
                    "its size meanwhile); a Submit that would pass it is refused before it is parsed "
                    "(RESOURCE_EXHAUSTED SUBMIT_BYTES_IN_FLIGHT, RetryInfo). It also sets how many large Submits are "
                    "received at once (this / max_receive_bytes): the others wait, unread, for their turn.",
    )
    keepalive_time_seconds: float = Field(30.0, gt=0)
    keepalive_timeout_seconds: float = Field(10.0, gt=0)
    max_connection_age_seconds: float = Field(
        1800.0, gt=0, description="Connections are recycled after this, so load balancers can rebalance."
    )
    max_connection_age_grace_seconds: float = Field(
        300.0, ge=0, description="Streams still open that long after are cut; clients resume them."
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="Drain time on SIGTERM.")
    max_attempts: int = Field(3, ge=1, description="Runs of one job across restarts before it FAILS.")
    keep_failed_inputs: bool = Field(
        True, description="Keeps the inputs of FAILED and CANCELLED jobs (uploaded audio included) until the job "
                          "expires, so that Retry can run them again; false: every job's inputs go when it ends, "
                          "and Retry answers FAILED_PRECONDITION INPUT_LOST.",
    )
    http_read_timeout_seconds: float = Field(
        30.0, gt=0, description="An HTTP request body not received within this is answered 408 and dropped."
    )
    max_concurrent_uploads: int = Field(
        64, ge=1, description="HTTP request bodies being received at once; beyond: 503 with Retry-After."
    )
    predict_timeout_seconds: float = Field(
        600.0, gt=0, le=3600,
        description="A synchronous predict on the facade waits this long for its job, then answers 504 with the "
                    "job id and its poll URL (the job goes on).",
    )
    public_url: str = Field(
        "", description="The facade's external base URL for poll/response URLs (behind a proxy); default: the request's."
    )
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the HTTP listener answers besides localhost, IP addresses and the names of "
                    "http_listen and public_url: name (any port), name:port, *.domain (its subdomains), or * (any "
                    "Host). Another Host is answered 421 HOST_NOT_ALLOWED, so a DNS-rebinding page cannot reach the "
                    "facade or the dashboard from an operator's browser. Applies with auth off; with auth on, only "
                    "when set. From the environment: a JSON list or comma-separated names.",
    )
    metrics_listen: str = Field(
        "", description="HOST:PORT of a Prometheus /metrics listener of its own (for `gateway worker`, which has no "
                        "HTTP face); empty: metrics only at /metrics on http_listen.",
    )
    tracing: bool = Field(
        False, description="OpenTelemetry traces of the gRPC server (the [tracing] extra), exported with OTLP to "
                            "OTEL_EXPORTER_OTLP_ENDPOINT (the OTEL_* variables configure it), or to stderr without one.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="The event loop: uvloop where installed (auto), or asyncio's own. uvloop runs the loop's "
                            "bookkeeping in C: Submit 10-20% faster (docs/benchmarks.md).",
    )
    log_level: str = "INFO"
    log_json: bool = Field(False, description="Log JSON lines (with job_id, route and tenant where a job is concerned).")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    audio_url: AudioUrlSettings = Field(default_factory=AudioUrlSettings)
    routes: dict[str, RouteSettings] = Field(default_factory=_default_routes)
    tenants: dict[str, TenantSettings] = Field(
        default_factory=dict, description="Per-tenant shares ([tenants.<tenant>]); [tenants.default] for the rest.",
    )

    def tenant(self, name: str) -> TenantSettings:
        """A tenant's settings: its own table, else [tenants.default], else the defaults."""
        found = self.tenants.get(name) or self.tenants.get("default")
        return found if found is not None else _NO_TENANT_TABLE

    def known_tenants(self) -> set[str]:
        """The tenants the settings name: those the tokens map to, and those with a [tenants.<tenant>] table
        ([tenants.default] is the table of every tenant not named, not a tenant of its own)."""
        return set(self.auth.tokens.values()) | {name for name in self.tenants if name != "default"}

    def viewable_tenants(self, tenant: str) -> list[str]:
        """The other tenants whose jobs ``tenant`` may view on the dashboard, sorted ([auth.operators.<tenant>],
        "*" being every one of :meth:`known_tenants`); none with auth off, where there is one tenant."""
        operator = self.auth.operators.get(tenant)
        if not self.auth.enabled or operator is None:
            return []
        names = set(operator.tenants)
        if "*" in names:
            names = (names - {"*"}) | self.known_tenants()
        return sorted(names - {tenant})

    @field_validator("routes")
    @classmethod
    def _route_names(cls, routes: dict[str, Any]) -> dict[str, Any]:
        for name in routes:
            if not ROUTE_NAME.fullmatch(name):
                raise ValueError(f"route name {name!r}: lowercase letters, digits, '-' and '_', at most 63")
        return routes

    @field_validator("http_allowed_hosts", mode="before")
    @classmethod
    def _hosts_text(cls, value: Any) -> Any:
        """The environment gives one string: a JSON list, as for the other lists, or plain comma-separated
        names (GATEWAY_HTTP_ALLOWED_HOSTS=gw.example.com,gw.internal)."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        return value

    @field_validator("http_allowed_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        hosts = []
        for value in values:
            text = value.strip().lower()
            if text == "*":
                hosts.append(text)
                continue
            wildcard = text.startswith("*.")
            try:
                name, port = split_host(text[2:] if wildcard else text)
            except ValueError as exc:
                raise ValueError(f"http_allowed_hosts: {exc}; expected name, name:port, [IPv6]:port, *.domain or *") \
                    from None
            if wildcard and not _DNS_NAME.match(name):
                raise ValueError(f"http_allowed_hosts: {value!r}: *. must be followed by a domain name")
            shown = f"[{name}]" if ":" in name else name
            hosts.append(("*." if wildcard else "") + shown + ("" if port is None else f":{port}"))
        return hosts

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value and not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError(f"{value!r}: expected empty (SQLite) or a redis:// URL")
        return value

    @model_validator(mode="after")
    def _store_password(self) -> Settings:
        """The password of store_password_file, put in the store's URL (percent-encoded)."""
        if self.store_password_file is None:
            return self
        if not self.store:
            raise ValueError("store_password_file: there is no Redis store to use it with (store is empty)")
        try:
            password = self.store_password_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"store_password_file {self.store_password_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        if not password:
            raise ValueError(f"store_password_file {self.store_password_file} is empty")
        parts = urlsplit(self.store)
        if parts.password or "password=" in parts.query:
            raise ValueError("store names a password already, and store_password_file another: keep one")
        if parts.scheme == "unix":
            query = "&".join(q for q in (parts.query, f"password={quote(password, safe='')}") if q)
            self.store = f"{self.store.partition('?')[0]}?{query}"
        else:
            user, _, host = parts.netloc.rpartition("@")
            self.store = urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))
        return self

    @field_validator("listen", "http_listen", "metrics_listen")
    @classmethod
    def _address(cls, value: str) -> str:
        if value and not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]\s]*):\d{1,5}", value):
            raise ValueError(f"{value!r}: expected HOST:PORT")
        return value


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Builds the settings: overrides (flags) > environment > the TOML file > defaults."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file)
            return (init_settings, env_settings, toml, file_secret_settings)

    return _FromFile(**overrides)
