"""Audio by URL: a transcription's ``audio_url``, checked at Submit and fetched by the process that runs
the job, streamed to a file as it arrives (never whole in memory), bounded in size and time.

The rules of webhooks hold for where the gateway may connect (gateway.webhooks): the URL must start
with one of ``[audio_url] allowed_prefixes`` (``https://`` alone: any host over https), hold no
credentials nor fragment; its host must resolve only to public addresses, or to ones in
``allowed_networks``, checked at Submit and again at every connection (the resolver answers only
allowed addresses, so DNS rebinding cannot undo the check) and at every redirect (each one's URL is
checked as the first was). A presigned URL (S3, GCS, Azure) works as given: its query string is kept
and no header is added.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
import yarl

from gateway import __version__
from gateway.errors import Code, FieldViolation, InvalidArgument, JobError, clip
from gateway.settings import AudioUrlSettings
from gateway.webhooks import CheckedResolver, resolve

__all__ = ["check_audio_url", "discard", "fetch_audio"]

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 8192  # presigned URLs are long
MAX_REDIRECTS = 5
_SETTING = "audio_url.allowed_networks"


def _refuse(field: str, description: str, reason: str = "AUDIO_URL_NOT_ALLOWED") -> InvalidArgument:
    return InvalidArgument(f"{field}: {description}", reason, field_violations=(FieldViolation(field, description),))


def _allowed(url: str, prefix: str) -> bool:
    parts, allowed = urlsplit(url), urlsplit(prefix)
    if parts.scheme.lower() != allowed.scheme.lower():
        return False
    if not allowed.netloc:  # "https://": any host
        return True
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    allowed_port = allowed.port or (443 if allowed.scheme.lower() == "https" else 80)
    return ((parts.hostname or "").lower().rstrip("."), port) == ((allowed.hostname or "").lower(), allowed_port) \
        and (parts.path or "/").startswith(allowed.path or "/")


def check_form(url: str, settings: AudioUrlSettings, field: str) -> tuple[str, int]:
    """The URL's form and prefix; answers (host, port)."""
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(field, f"longer than {MAX_URL_LENGTH} characters", "AUDIO_URL_INVALID")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _refuse(field, "contains whitespace or control characters", "AUDIO_URL_INVALID")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise _refuse(field, f"{clip(url, 200)!r} is not a URL", "AUDIO_URL_INVALID") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _refuse(field, f"{clip(url, 200)!r} is not an http(s) URL", "AUDIO_URL_INVALID")
    if parts.username is not None or parts.password is not None:
        raise _refuse(field, "must not hold credentials (user:password@)", "AUDIO_URL_INVALID")
    if parts.fragment:
        raise _refuse(field, "must not have a #fragment", "AUDIO_URL_INVALID")
    if any(step in (".", "..") for step in map(unquote, parts.path.split("/"))):
        raise _refuse(field, "must not have . or .. path segments", "AUDIO_URL_INVALID")
    if not settings.allowed_prefixes:
        raise _refuse(field, "audio by URL is off on this server (audio_url.allowed_prefixes is empty)")
    if not any(_allowed(url, prefix) for prefix in settings.allowed_prefixes):
        raise _refuse(field, f"{clip(url, 200)!r} does not start with an allowed prefix: "
                             f"{', '.join(settings.allowed_prefixes)} (audio_url.allowed_prefixes)")
    return parts.hostname.lower().rstrip("."), port


def _networks(settings: AudioUrlSettings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks]


async def check_audio_url(url: str, settings: AudioUrlSettings, field: str) -> None:
    """Everything Submit checks of an audio URL: its form, its prefix, and where its host resolves."""
    host, port = check_form(url, settings, field)
    try:
        await resolve(host, port, _networks(settings), _SETTING)
    except TimeoutError:
        raise _refuse(field, f"the host {host!r} could not be resolved in time", "AUDIO_URL_UNRESOLVABLE") from None
    except OSError as exc:
        if isinstance(exc, socket.gaierror):
            raise _refuse(field, f"the host {host!r} could not be resolved: {exc.strerror or exc}",
                          "AUDIO_URL_UNRESOLVABLE") from None
        raise _refuse(field, str(exc)) from None


def discard(path: Path) -> None:
    """Deletes a fetched file (a quick local unlink, also from the event loop)."""
    path.unlink(missing_ok=True)


def _failed(message: str, reason: str = "AUDIO_URL_FETCH_FAILED", code: Code = Code.FAILED_PRECONDITION,
            transient: bool = False) -> JobError:
    """``transient``: the server was briefly away or busy (a timeout, no connection, 408, 429, 5xx): the
    route's retry policy may fetch again."""
    return JobError(f"the audio URL could not be fetched: {message}", reason, code, transient=transient)


async def fetch_audio(url: str, settings: AudioUrlSettings, max_bytes: int) -> Path:
    """The audio at ``url`` in a temporary file (the caller deletes it); JobError with a reason if it cannot
    be had: refused by the rules (at a redirect, or DNS answering otherwise than at Submit), too large,
    too slow, or answered with an error."""
    limit = min(max_bytes, settings.max_bytes)
    fd, name = tempfile.mkstemp(prefix="gateway-audio-", suffix=".audio")
    path = Path(name)
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(_networks(settings), _SETTING), use_dns_cache=False)
    try:
        async with asyncio.timeout(settings.timeout_seconds), aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": f"inference-gateway/{__version__}"}, auto_decompress=False,
        ) as session:
            target = url
            for _hop in range(MAX_REDIRECTS + 1):
                try:
                    check_form(target, settings, "audio_url")
                except InvalidArgument as exc:
                    raise _failed(f"a redirect led to a URL that is not allowed: {exc.message}",
                                  "AUDIO_URL_NOT_ALLOWED") from None
                # encoded=True: the URL goes out byte for byte (a presigned URL's signature covers its
                # encoding; aiohttp would otherwise re-quote %2F and friends)
                async with session.get(yarl.URL(target, encoded=True), allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                        target = urljoin(target, response.headers["Location"])
                        continue
                    if response.status != 200:
                        body = (await response.content.read(300)).decode("utf-8", "replace")
                        raise _failed(f"HTTP {response.status}: {clip(body, 200)}", "AUDIO_URL_FETCH_FAILED",
                                      transient=response.status in (408, 429) or response.status >= 500)
                    if response.content_length is not None and response.content_length > limit:
                        raise _failed(f"{response.content_length} bytes, over the limit of {limit}", "AUDIO_TOO_LARGE",
                                      Code.INVALID_ARGUMENT)
                    size = 0
                    with os.fdopen(fd, "wb", closefd=True) as out:
                        fd = -1
                        async for chunk in response.content.iter_chunked(256 * 1024):
                            size += len(chunk)
                            if size > limit:
                                raise _failed(f"over the limit of {limit} bytes", "AUDIO_TOO_LARGE", Code.INVALID_ARGUMENT)
                            await asyncio.to_thread(out.write, chunk)
                    return path
            raise _failed(f"more than {MAX_REDIRECTS} redirects")
    except JobError:
        discard(path)
        raise
    except TimeoutError:
        discard(path)
        raise _failed(f"not fetched within {settings.timeout_seconds:.0f} s (audio_url.timeout_seconds)",
                      "AUDIO_URL_TIMEOUT", Code.DEADLINE_EXCEEDED, transient=True) from None
    except (aiohttp.ClientError, OSError) as exc:
        discard(path)
        raise _failed(str(exc) or type(exc).__name__, transient=True) from None
    except BaseException:
        discard(path)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
