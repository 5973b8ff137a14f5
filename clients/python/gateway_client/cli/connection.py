"""Where the CLI connects and as whom: the target, the token, TLS, and the session every command calls through."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from gateway_client._aio import (
    CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    UPLOAD_ABOVE_BYTES,
    UPLOAD_SECONDS_PER_MIB,
    tls_credentials,
    upload_messages,
)
from gateway_client._errors import translate_errors
from gateway_client.cli.args import UsageError, read_bytes, seconds

__all__ = ["DEFAULT_RPC_TIMEOUT", "Session", "add_options", "channel", "check_target", "resolve_token"]

DEFAULT_RPC_TIMEOUT = 30.0


@dataclass
class Session:
    """The generated stub, with the caller's metadata and deadline on every call. The CLI prints
    the API's own messages, so it calls the stub rather than the typed client."""

    stub: Any
    metadata: tuple[tuple[str, str], ...]
    rpc_timeout: float

    async def call(self, method: str, request: Message, *, wait: float = 0.0) -> Any:
        with translate_errors():
            return await getattr(self.stub, method)(request, timeout=wait + self.rpc_timeout, metadata=self.metadata)

    async def submit(self, request: Any, audio: str | None) -> Any:
        """Submit, or, for an audio file over the client's upload size, Upload (the file read as it is
        sent); ``audio``: the file's path (``-``: stdin), or None when the request holds its input."""
        if audio is not None and audio != "-" and _size(audio) > UPLOAD_ABOVE_BYTES:
            with translate_errors():
                size = _size(audio)
                return await self.stub.Upload(upload_messages(request, audio), metadata=self.metadata,
                                              timeout=self.rpc_timeout + size / (1024 * 1024) * UPLOAD_SECONDS_PER_MIB)
        if audio is not None:
            request.transcription.audio = read_bytes(audio)
        return await self.call("Submit", request)

    def stream(self, method: str, request: Message) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_token(path: str, source: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file of {source} ({path}): {exc}") from None
    if not token:
        raise UsageError(f"the token file of {source} ({path}) is empty")
    return token


def resolve_token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """--token, --token-file, $GATEWAY_TOKEN, $GATEWAY_TOKEN_FILE: the first one set."""
    if args.token is not None:
        return str(args.token)
    if args.token_file is not None:
        return _read_token(args.token_file, "--token-file")
    value, path = environ.get("GATEWAY_TOKEN"), environ.get("GATEWAY_TOKEN_FILE")
    if value and path:
        raise UsageError("GATEWAY_TOKEN and GATEWAY_TOKEN_FILE are both set; unset one")
    if value:
        return value
    if path:
        return _read_token(path, "GATEWAY_TOKEN_FILE")
    return None


_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")  # gRPC name syntax, taken as given


def check_target(target: str) -> str:
    """A gRPC target the CLI can use: HOST:PORT, [IPV6]:PORT, or a gRPC URI (unix:PATH, dns:///HOST:PORT...). A
    host without a port is refused rather than sent to port 443, which gRPC would pick."""
    if target.startswith(_SCHEMES):
        return target
    host, colon, port = target.rpartition(":")
    if not colon or not host or (host.count(":") and not (host.startswith("[") and host.endswith("]"))):
        raise UsageError(f"--target {target!r} has no port: give HOST:PORT (a gateway listens on port 50051 unless "
                         "told otherwise), or unix:PATH")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--target {target!r}: the port must be a number from 1 to 65535")
    return target


def channel(args: argparse.Namespace) -> grpc.aio.Channel:
    check_target(args.target)
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    if not (args.tls or args.ca_file or args.cert_file):
        return grpc.aio.insecure_channel(args.target, options=CHANNEL_OPTIONS)
    try:
        credentials = tls_credentials(args.ca_file, args.cert_file, args.key_file)
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.aio.secure_channel(args.target, credentials, options=CHANNEL_OPTIONS)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options before the command: the target, the token, the unary calls' deadline, TLS."""
    parser.add_argument("--target", default=os.environ.get("GATEWAY_TARGET", DEFAULT_TARGET), metavar="HOST:PORT",
                        help=f"the gateway's gRPC address (default: $GATEWAY_TARGET, else {DEFAULT_TARGET})")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", metavar="PATH", help="read the bearer token from this file")
    tokens.add_argument("--token", metavar="TOKEN",
                        help="the bearer token (visible to other users in the process list: prefer --token-file "
                             "or $GATEWAY_TOKEN)")
    parser.add_argument("--rpc-timeout", type=seconds, default=DEFAULT_RPC_TIMEOUT, metavar="SECONDS",
                        help=f"the deadline of each unary call (default {DEFAULT_RPC_TIMEOUT:g})")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the system's roots verify the gateway)")
    parser.add_argument("--ca-file", metavar="PATH", help="verify the gateway's certificate with this CA (PEM; implies --tls)")
    parser.add_argument("--cert-file", metavar="PATH", help="this client's certificate, for mTLS (PEM; with --key-file)")
    parser.add_argument("--key-file", metavar="PATH", help="the private key of --cert-file (PEM)")
