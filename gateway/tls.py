"""TLS for both listeners, from certificate files that may be replaced while the gateway runs.

``[tls]`` names a certificate chain and its key (PEM), and optionally a CA whose certificates clients
must present (mTLS). The files are read at start (a missing or mismatched file stops the start, exit
code 7) and checked again every ``reload_interval_seconds``: when one changed (cert-manager renews a
Secret, the kubelet swaps the mounted files), the new pair is loaded once it is complete and valid,
and new connections get it, on gRPC (dynamic server credentials: the core asks for the current
configuration at each handshake) and on HTTP (the listener's SSL context loads the new pair).
Connections already open keep the certificate they started with. A half-written or mismatched set of
files is logged and skipped; the previous certificate stays in use until a valid set appears.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.errors import StartupError
from gateway.settings import TlsSettings

__all__ = ["CertificateFiles"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    client_ca: bytes | None


def _check_pair(material: _Material, cert_file: Path, key_file: Path, ca_file: Path | None) -> None:
    """Raises ssl.SSLError/ValueError unless the key matches the certificate and the CA parses."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    if material.client_ca is not None and ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))


class CertificateFiles:
    def __init__(self, settings: TlsSettings) -> None:
        assert settings.cert_file is not None and settings.key_file is not None
        self.settings = settings
        self.cert_file: Path = settings.cert_file
        self.key_file: Path = settings.key_file
        self.ca_file: Path | None = settings.client_ca_file
        self._lock = threading.Lock()  # gRPC asks for the configuration from its own threads
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._contexts: list[ssl.SSLContext] = []
        self.reloads = 0
        try:
            self._stamp = self._stat()
            self._material = self._read()
            _check_pair(self._material, self.cert_file, self.key_file, self.ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartupError(f"cannot use the TLS files ({_describe(exc)}); set tls.cert_file, tls.key_file and "
                               "tls.client_ca_file to readable PEM files, the key matching the certificate",
                               StartupError.TLS_FILES) from None

    @property
    def mutual(self) -> bool:
        return self.ca_file is not None

    def _files(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.ca_file) if p is not None]

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        # Through the symlinks Kubernetes uses for mounted Secrets (..data -> a new timestamped dir).
        stamps = []
        for path in self._files():
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _read(self) -> _Material:
        return _Material(self.cert_file.read_bytes(), self.key_file.read_bytes(),
                         self.ca_file.read_bytes() if self.ca_file is not None else None)

    def _grpc_config(self, material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.client_ca)

    # -- the two listeners ---------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(self._material), self._fetch_grpc_config, require_client_authentication=self.mutual,
        )

    def _fetch_grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each new connection: a new configuration once, after a reload; else None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the HTTP listener; reload() loads new files into it."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self.ca_file))
        self._contexts.append(context)
        return context

    # -- reloading -----------------------------------------------------------------------------

    def reload(self) -> bool:
        """Loads the files again if they changed and form a valid set; whether it did."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            material = self._read()
            if material == self._material:
                self._stamp = stamp
                return False
            _check_pair(material, self.cert_file, self.key_file, self.ca_file)
            for context in self._contexts:
                context.load_cert_chain(self.cert_file, self.key_file)
                if self.ca_file is not None:
                    context.load_verify_locations(cafile=str(self.ca_file))
            config = self._grpc_config(material)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("TLS files changed but cannot be used yet (%s); keeping the current certificate", _describe(exc))
            return False
        with self._lock:
            self._pending = config
        self._stamp, self._material = stamp, material
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    async def watch(self) -> None:
        """Reloads when the files change, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_seconds)
            self.reload()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
