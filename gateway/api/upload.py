"""Upload: a Submit whose audio comes in chunks, written to disk as they arrive.

The call is authenticated from its headers before any message is read (a stranger is refused having
sent nothing that was kept). Then each message is read as it comes: the SubmitRequest (once, before
the chunks or after them) and the audio's chunks, appended to a spool file with a running sha256, so
that the server holds a chunk at a time whatever the file's size, and HTTP/2 flow control keeps the
rest with the client while the disk catches up. The upload is refused as soon as it passes the
route's limit (or, before the request names the route, the largest of every route's). Once the
client half-closes, the request is checked and submitted as Submit does; the spool file becomes the
job's (the store keeps it) or is deleted, whatever happens, including a call cancelled midway.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway.api.gate import Rejected
from gateway.errors import FieldViolation, GatewayError, InvalidArgument, Unavailable
from gateway.store.uploads import remove, spool_file

__all__ = ["MAX_CHUNK_BYTES", "Received", "check_request", "receive"]

MAX_CHUNK_BYTES = 4 * 1024 * 1024  # the largest audio_chunk (the message, with its few framing bytes, a little more)


@dataclass(slots=True)
class Received:
    request: pb.SubmitRequest
    path: Path
    sha256: str
    size: int


def _open(path: Path) -> BinaryIO:
    return open(path, "ab")


def _too_large(size: int, limit: int) -> InvalidArgument:
    error = InvalidArgument.fields(
        FieldViolation("audio_chunk", f"more than {limit} bytes of audio, over this route's limit"), reason="AUDIO_TOO_LARGE")
    error.metadata = {"limit_bytes": str(limit), "size_bytes": str(size)}
    return error


def _malformed(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="MALFORMED_REQUEST")


async def receive(messages: AsyncIterator[Any], folder: Path, limit_for: Callable[[str | None], int]) -> Received:
    """Reads the call's messages into a new file in ``folder``; ``limit_for(route)`` is the most audio
    bytes the route takes (raising GatewayError for a route that takes none), ``limit_for(None)`` the
    most any route takes. The caller deletes the file (``Received.path``) unless the store took it. A
    disk that cannot take it (full, or failing) is UNAVAILABLE with RetryInfo: the upload is dropped,
    and the same one sent again later succeeds."""
    try:
        path = await asyncio.to_thread(spool_file, folder)
    except OSError as exc:
        raise _no_room(exc) from None
    try:
        return await _receive(messages, path, limit_for)
    except OSError as exc:
        remove(path)
        raise _no_room(exc) from None
    except BaseException:
        remove(path)
        raise


def _no_room(exc: OSError) -> Unavailable:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return Unavailable(f"the upload could not be written to disk ({exc.strerror or exc}); retry later",
                       reason="UPLOAD_DISK_FULL" if full else "UPLOAD_DISK_FAILED", retry_after=5.0)


async def _receive(messages: AsyncIterator[Any], path: Path, limit_for: Callable[[str | None], int]) -> Received:
    request: pb.SubmitRequest | None = None
    digest = hashlib.sha256()
    size = 0
    limit = limit_for(None)
    file = await asyncio.to_thread(_open, path)
    try:
        async for message in messages:
            if isinstance(message, Rejected):
                raise message.error
            part = message.WhichOneof("part")
            if part == "audio_chunk":
                chunk = message.audio_chunk
                size += len(chunk)
                if size > limit:
                    raise _too_large(size, limit)
                digest.update(chunk)
                await asyncio.to_thread(file.write, chunk)
            elif part == "submit":
                if request is not None:
                    raise _malformed("an Upload carries one SubmitRequest, not several")
                request = message.submit
                limit = limit_for(request.route)
                if size > limit:
                    raise _too_large(size, limit)
            else:
                raise _malformed("an UploadRequest must set submit or audio_chunk")
        await asyncio.to_thread(_finish, file)
    finally:
        await asyncio.to_thread(file.close)
    if request is None:
        raise _malformed("the Upload carried no SubmitRequest (send one, before or after the audio's chunks)")
    return Received(request, path, digest.hexdigest(), size)


def _finish(file: BinaryIO) -> None:
    """Written through to the disk: the job it becomes is durable before Submit answers."""
    file.flush()
    os.fsync(file.fileno())


def check_request(request: pb.SubmitRequest) -> GatewayError | None:
    """What an Upload's SubmitRequest may not hold."""
    if request.WhichOneof("input") != "transcription":
        return InvalidArgument.fields(FieldViolation("submit.transcription", "an Upload is a transcription request: set "
                                                     "transcription (its audio comes in the chunks)"))
    if request.transcription.audio or request.transcription.audio_url:
        return InvalidArgument.fields(FieldViolation(
            "submit.transcription.audio", "empty in an Upload: the audio comes in the chunks (and audio_url is for Submit)"))
    return None
