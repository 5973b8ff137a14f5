"""TLS and mTLS on both listeners, from files made at test time: the Python client, the CLI and the
Node.js client connect; plaintext, unknown CAs and missing client certificates are refused; a renewed
certificate is served to new connections without a restart; unusable files stop the start with one
line and exit code 7."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway_client import Client, UnavailableError, tls_credentials
from harness import ECHO_CONFIG, ROOT, ServerProcess, wait_until
from harness.certs import Authority, Issued

TOKEN = "tls-token"


def _config(server: Issued, client_ca: Path | None = None, reload_s: float = 10.0, auth: bool = True) -> str:
    tls = f'[tls]\ncert_file = "{server.cert}"\nkey_file = "{server.key}"\nreload_interval_seconds = {reload_s}\n'
    if client_ca is not None:
        tls += f'client_ca_file = "{client_ca}"\n'
    tokens = f'[auth]\nenabled = true\n[auth.tokens]\n"{TOKEN}" = "t1"\n' if auth else ""
    return ECHO_CONFIG + tls + tokens


def _served_serial(port: int, ca: Path, client: Issued | None = None) -> int:
    """The serial of the certificate a new TLS connection to ``port`` is shown."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _https_get(url: str, ca: Path, client: Issued | None = None) -> tuple[int, dict[str, object]]:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with urllib.request.urlopen(url, context=context, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


def _echo_round_trip(client: Client) -> None:
    future = client.submit("echo", {"via": "tls"})
    assert future.result(timeout=30).value == {"via": "tls"}


def _gateway_client(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway_client.cli", "--target", server.target, "--token", TOKEN, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki")


def test_tls_serves_both_listeners_and_refuses_plaintext_and_unknown_cas(
    ca: Authority, tmp_path: Path, make_server: Callable[..., ServerProcess]
) -> None:
    issued = ca.issue("server")
    server = make_server(_config(issued))
    with Client(server.target, token=TOKEN, credentials=tls_credentials(ca.path), timeout=20) as client:
        _echo_round_trip(client)

    with Client(server.target, token=TOKEN, timeout=3, retry=None) as plain, pytest.raises(UnavailableError):
        plain.list()
    rogue = Authority(tmp_path / "rogue", "rogue CA")
    with Client(server.target, token=TOKEN, credentials=tls_credentials(rogue.path), timeout=3, retry=None) as other, \
            pytest.raises(UnavailableError):
        other.list()

    # Health answers without a token, over TLS, and says nothing but the status.
    with grpc.secure_channel(server.target, tls_credentials(ca.path)) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert answer.ListFields() == [(health_pb2.HealthCheckResponse.DESCRIPTOR.fields_by_name["status"], answer.status)]

    # HTTP: https with the same certificate; plain http is not answered.
    https = server.http_url.replace("http://", "https://")
    assert _https_get(https + "/healthz", ca.path) == (200, {"status": "ok"})
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(server.http_url + "/healthz", timeout=5)

    # The CLI: --ca-file (implies --tls); without it, the plaintext attempt fails with a clear exit.
    submitted = _gateway_client(server, "--ca-file", str(ca.path), "submit", "--route", "echo", "--inputs", '{"n": 1}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job"]["id"]
    fetched = _gateway_client(server, "--ca-file", str(ca.path), "fetch", job_id, "--wait")
    assert fetched.returncode == 0 and json.loads(fetched.stdout)["output"] == {"n": 1.0}, fetched.stderr
    refused = _gateway_client(server, "get", job_id)
    assert refused.returncode != 0 and "UNAVAILABLE" in refused.stderr


def test_mtls_admits_only_clients_with_a_certificate_from_the_ca(
    ca: Authority, tmp_path: Path, make_server: Callable[..., ServerProcess], node: str
) -> None:
    issued = ca.issue("server")
    member = ca.issue("client-a", server=False)
    rogue = Authority(tmp_path / "rogue", "rogue CA").issue("client-b", server=False)
    # Configured through the environment this time: GATEWAY_TLS__*.
    env = {"GATEWAY_TLS__CERT_FILE": str(issued.cert), "GATEWAY_TLS__KEY_FILE": str(issued.key),
           "GATEWAY_TLS__CLIENT_CA_FILE": str(ca.path)}
    server = make_server(ECHO_CONFIG + f'[auth]\nenabled = true\n[auth.tokens]\n"{TOKEN}" = "t1"\n', env=env)

    with Client(server.target, token=TOKEN, timeout=20,
                credentials=tls_credentials(ca.path, member.cert, member.key)) as client:
        _echo_round_trip(client)
    for credentials in (tls_credentials(ca.path), tls_credentials(ca.path, rogue.cert, rogue.key)):
        with Client(server.target, token=TOKEN, credentials=credentials, timeout=3, retry=None) as refused, \
                pytest.raises(UnavailableError):
            refused.list()

    https = server.http_url.replace("http://", "https://")
    assert _https_get(https + "/healthz", ca.path, member)[0] == 200
    for anonymous in (None, rogue):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _https_get(https + "/healthz", ca.path, anonymous)

    done = _gateway_client(server, "--ca-file", str(ca.path), "--cert-file", str(member.cert), "--key-file",
                           str(member.key), "submit", "--route", "echo", "--inputs", "{}")
    assert done.returncode == 0, done.stderr
    without = _gateway_client(server, "--tls", "--ca-file", str(ca.path), "list")
    assert without.returncode != 0 and "UNAVAILABLE" in without.stderr
    half = _gateway_client(server, "--cert-file", str(member.cert), "list")
    assert half.returncode == 2 and "--key-file" in half.stderr

    node_env = {"GATEWAY_CA_FILE": str(ca.path), "GATEWAY_CERT_FILE": str(member.cert),
                "GATEWAY_KEY_FILE": str(member.key), "GATEWAY_TOKEN": TOKEN}
    ran = subprocess.run([node, str(ROOT / "tests" / "node" / "client.js"), server.target], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={**server.env, **node_env})
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.splitlines()[-1])["final_state"] == "JOB_STATE_SUCCEEDED"


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    ca: Authority, make_server: Callable[..., ServerProcess]
) -> None:
    first = ca.issue("server")
    server = make_server(_config(first, reload_s=0.2, auth=False))
    grpc_port, http_port = _port(server.target), _port(server.http_address)
    assert _served_serial(grpc_port, ca.path) == first.serial == _served_serial(http_port, ca.path)
    with Client(server.target, credentials=tls_credentials(ca.path), timeout=20) as before:
        _echo_round_trip(before)

        # A half-written renewal (a certificate that is not PEM yet) is skipped: the old one stays.
        first.cert.write_text("-----BEGIN CERTIFICATE-----\nnot yet\n")
        wait_until(lambda: "cannot be used yet" in server.log(), "the skipped reload's warning")
        assert _served_serial(grpc_port, ca.path) == first.serial

        renewed = ca.issue("server-2", cert_path=first.cert, key_path=first.key)
        wait_until(lambda: _served_serial(grpc_port, ca.path) == renewed.serial, "the renewed certificate on gRPC")
        wait_until(lambda: _served_serial(http_port, ca.path) == renewed.serial, "the renewed certificate on HTTP")
        _echo_round_trip(before)  # a connection opened before the renewal goes on
    with Client(server.target, credentials=tls_credentials(ca.path), timeout=20) as after:
        _echo_round_trip(after)
    assert server.proc is not None and server.proc.poll() is None


def test_unusable_tls_files_stop_the_start_with_exit_code_7(ca: Authority, tmp_path: Path) -> None:
    one, other = ca.issue("one"), ca.issue("other")
    cases = {
        "a key of another certificate": f'cert_file = "{one.cert}"\nkey_file = "{other.key}"\n',
        "a missing file": f'cert_file = "{tmp_path / "absent.pem"}"\nkey_file = "{one.key}"\n',
        "a client CA that is not PEM": f'cert_file = "{one.cert}"\nkey_file = "{one.key}"\nclient_ca_file = "{one.key}"\n',
    }
    for case, table in cases.items():
        config = tmp_path / "gateway.toml"
        config.write_text(ECHO_CONFIG + "[tls]\n" + table)
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--listen", "127.0.0.1:0",
             "--http-listen", "", "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        lines = [line for line in done.stderr.splitlines() if line.startswith("gateway: ")]
        assert done.returncode == 7 and len(lines) == 1 and "tls.cert_file" in lines[0], (case, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == "", case

    config = tmp_path / "gateway.toml"
    config.write_text(ECHO_CONFIG + f'[tls]\ncert_file = "{one.cert}"\n')
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "both cert_file and key_file" in done.stderr
