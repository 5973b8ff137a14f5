"""scripts/k8s-secrets.sh makes the Secrets the manifests ask for, with values of its own: tokens the gateway
accepts, a Redis password, and a CA and certificate that a real redis-server serves TLS with and the gateway
verifies, through the scaled overlay's settings (store URL with ssl_ca_certs, store_password_file)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from gateway.settings import Settings
from harness import ECHO_CONFIG, ROOT, ServerProcess, unavailable
from harness.redis import RedisProcess

SCRIPT = ROOT / "scripts" / "k8s-secrets.sh"


def _secrets(*args: str) -> tuple[dict[str, dict[str, bytes]], str]:
    if shutil.which("kubectl") is None or shutil.which("openssl") is None:
        unavailable("kubectl and openssl are needed by scripts/k8s-secrets.sh")
    done = subprocess.run(["sh", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            assert doc["kind"] == "Secret" and doc["metadata"]["namespace"] == "inference-gateway"
            found[doc["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in doc["data"].items()}
    return found, done.stderr


def test_the_secrets_script_makes_tokens_the_gateway_accepts_and_a_fresh_redis_password(tmp_path: Path) -> None:
    secrets, said = _secrets("alice", "bob")
    assert set(secrets) == {"gateway-tokens", "gateway-redis", "gateway-redis-tls"}
    tokens = json.loads(secrets["gateway-tokens"]["tokens.json"])
    assert sorted(tokens.values()) == ["alice", "bob"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", t) and t in said for t in tokens)  # each told once, on stderr
    path = tmp_path / "tokens.json"
    path.write_bytes(secrets["gateway-tokens"]["tokens.json"])
    assert Settings(auth={"enabled": True, "tokens_file": str(path)}).auth.tokens == tokens
    again, _ = _secrets()
    assert again["gateway-redis"]["password"] != secrets["gateway-redis"]["password"]  # never the same twice
    assert len(secrets["gateway-redis"]["password"]) == 64
    single, _ = _secrets("--single")
    assert set(single) == {"gateway-tokens"}


def test_redis_serves_tls_with_the_scripts_certificate_and_the_gateway_connects_as_the_overlay_says(
        tmp_path: Path, make_server: Callable[..., ServerProcess]) -> None:
    secrets, _ = _secrets()
    tls = tmp_path / "tls"
    tls.mkdir()
    pem = secrets["gateway-redis-tls"]
    (tls / "server.pem").write_bytes(pem["tls.crt"])
    (tls / "server.key").write_bytes(pem["tls.key"])
    (tls / "ca.pem").write_bytes(pem["ca.crt"])
    password = secrets["gateway-redis"]["password"].decode()
    try:
        redis = RedisProcess(tmp_path / "redis", tls=tls, password=password).start()
    except RuntimeError as exc:
        pytest.skip(f"redis-server without TLS: {exc}")
    try:
        secret = tmp_path / "password"
        secret.write_text(password)
        # As k8s/overlays/scaled/gateway.toml has it, with this test's host and port.
        config = (f'store = "rediss://localhost:{redis.tls_port}/0?ssl_ca_certs={tls / "ca.pem"}"\n'
                  f'store_password_file = "{secret}"\nshutdown_grace_seconds = 0\n' + ECHO_CONFIG)
        server = make_server(config)
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            inputs = struct_pb2.Struct()
            inputs.update({"x": 1})
            job = stub.Submit(pb.SubmitRequest(route="echo", inputs=inputs), timeout=30).job
            last = [r.update.job for r in stub.Watch(pb.WatchRequest(job_id=job.id), timeout=60)
                    if r.WhichOneof("event") == "update"][-1]
        assert last.state == pb.JOB_STATE_SUCCEEDED
    finally:
        redis.stop()


def test_the_compose_file_runs_two_api_replicas_two_workers_and_redis_with_a_password() -> None:
    """docker/compose/compose.yaml (no Docker here: its structure, and its settings as the server loads them)."""
    folder = ROOT / "docker" / "compose"
    compose = yaml.safe_load((folder / "compose.yaml").read_text())
    services = compose["services"]
    apis = [s for s in services.values() if s.get("command", [""])[0] == "serve"]
    workers = [s for s in services.values() if s.get("command", [""])[0] == "worker"]
    assert len(apis) == 2 and all(a["command"][-2:] == ["--workers", "0"] for a in apis)
    assert len(workers) == 2
    for service in (*apis, *workers):
        assert (folder / service["build"]["context"] / service["build"]["dockerfile"]).resolve().is_file()
        assert service["environment"]["GATEWAY_STORE_PASSWORD_FILE"] == "/run/secrets/redis-password"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    ports = [p for a in apis for p in a["ports"]]
    assert all(p.startswith("127.0.0.1:") for p in ports) and len(set(ports)) == 4  # on the laptop only
    redis = " ".join(services["redis"]["command"])
    assert "--requirepass" in redis and "--appendonly yes" in redis and "noeviction" in redis
    assert "ports" not in services["redis"]  # not reachable from outside the compose network
    assert compose["secrets"]["redis-password"] == {"environment": "REDIS_PASSWORD"}
    data = tomllib.loads((folder / "gateway.toml").read_text())
    settings = Settings(**data)
    assert settings.store.startswith("redis://redis:6379/") and set(settings.routes) == {"echo", "whisper"}
