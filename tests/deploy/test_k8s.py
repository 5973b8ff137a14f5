"""The Kubernetes manifests (k8s/) and the images (docker/): both overlays render with ``kubectl kustomize``,
every object validates against the Kubernetes 1.32 schemas (kubernetes-validate, strict) and KEDA's
ScaledObject against its published CRD schema (vendored in tests/k8s_schemas), checkov finds nothing on
the rendered manifests and the Dockerfiles, and the invariants that tie the manifests to the server hold:
probes name health services the server really serves, the grace period covers the drain, ports match the
listen settings, every container runs as non-root with a read-only root filesystem, and the settings
each overlay ships load. checkov and kubernetes-validate live in a venv of their own (``.venv-k8s``)."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.api.servicer import SERVICE_NAME
from gateway.redis.keys import waiting_key
from gateway.server import FINAL_GRACE_SECONDS
from gateway.settings import Settings
from gateway.work import health_name
from harness import ROOT, unavailable
from harness.tool_venv import ToolVenv

OVERLAYS = ("single", "scaled")
K8S_VERSION = "1.32.0"
TOOLS = ToolVenv("k8s-tools", ROOT / ".venv-k8s", ("checkov==3.3.30", "kubernetes-validate==1.37.0"),
                 "import kubernetes_validate, jsonschema, yaml, checkov")
SCHEMAS = ROOT / "tests" / "k8s_schemas"


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        unavailable("kubectl is not installed (it carries kustomize): https://kubernetes.io/docs/tasks/tools/")
    return path


@cache
def _rendered_text(overlay: str) -> str:
    done = subprocess.run([_kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _objects(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_rendered_text(overlay)) if d]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in ("Deployment", "StatefulSet"))


def _settings(objects: list[dict[str, Any]], tmp_path: Path) -> Settings:
    """The gateway.toml the overlay's ConfigMap carries, loaded as the server loads it (the tokens file
    it names replaced by one as an operator makes it for the gateway-tokens Secret, which the pods mount)."""
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("gateway-config")]
    data = tomllib.loads(config_map["data"]["gateway.toml"])
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({secrets.token_hex(32): "team-a"}))
    data["auth"]["tokens_file"] = str(tokens)
    if "store_password_file" in data:  # (the gateway-redis Secret's password, mounted there)
        password = tmp_path / "redis-password"
        password.write_text(secrets.token_hex(32))
        data["store_password_file"] = str(password)
    return Settings(**data)


@pytest.fixture(scope="module")
def tools() -> Path:
    return TOOLS.ensure()


_VALIDATE = r"""
import json, sys, yaml, jsonschema, kubernetes_validate
version, schemas, files = sys.argv[1], sys.argv[2], sys.argv[3:]
crds = {"keda.sh/v1alpha1/ScaledObject": json.load(open(f"{schemas}/keda.sh_v1alpha1_scaledobject.json")),
        "monitoring.coreos.com/v1/ServiceMonitor": json.load(open(f"{schemas}/monitoring.coreos.com_v1_servicemonitor.json")),
        "monitoring.coreos.com/v1/PrometheusRule": json.load(open(f"{schemas}/monitoring.coreos.com_v1_prometheusrule.json"))}
errors, checked = [], 0
for path in files:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        key = f"{doc['apiVersion']}/{doc['kind']}"
        try:
            if key in crds:
                jsonschema.validate(doc, crds[key])
            else:
                kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
        except Exception as exc:
            errors.append(f"{path}: {key} {doc['metadata'].get('name')}: {str(exc)[:400]}")
print(json.dumps({"checked": checked, "errors": errors}))
"""


def _validate(tools: Path, files: list[Path]) -> dict[str, Any]:
    done = subprocess.run([str(tools), "-c", _VALIDATE, K8S_VERSION, str(SCHEMAS), *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_every_object_validates_against_its_schema(tools: Path, tmp_path: Path) -> None:
    files = []
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(_rendered_text(overlay))
        files.append(path)
    report = _validate(tools, files)
    assert report["errors"] == [] and report["checked"] == sum(len(_objects(o)) for o in OVERLAYS)

    # The validators refuse what is wrong: a misspelt field, a ScaledObject trigger without its type.
    broken = _objects("scaled")
    api = _one(broken, "Deployment", "gateway-api")
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    scaled_object = _one(broken, "ScaledObject", "gateway-worker")
    del scaled_object["spec"]["triggers"][0]["type"]
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump_all([api, scaled_object]))
    assert len(_validate(tools, [bad])["errors"]) == 2


def test_checkov_finds_nothing_in_the_manifests_and_the_dockerfiles(tools: Path, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for overlay in OVERLAYS:
        (rendered / f"{overlay}.yaml").write_text(_rendered_text(overlay))
    checkov = str(TOOLS.bin("checkov"))
    for target, framework in ((rendered, "kubernetes"), (ROOT / "docker", "dockerfile")):
        done = subprocess.run([checkov, "-d", str(target), "--framework", framework, "--skip-download", "--quiet",
                               "--compact", "-o", "json"], capture_output=True, text=True, timeout=600)
        report = json.loads(done.stdout)
        reports = report if isinstance(report, list) else [report]
        summaries = [r["summary"] for r in reports]
        failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
        assert not failed, [(c["check_id"], c["resource"], c["file_path"]) for c in failed]
        assert sum(s["passed"] for s in summaries) > 50, summaries  # it did look
        # Every skip says why, in place.
        skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
        assert all(len((c.get("check_result") or {}).get("suppress_comment") or "") > 20 for c in skipped), skipped


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_grace_match_the_server(overlay: str, tmp_path: Path) -> None:
    objects = _objects(overlay)
    settings = _settings(objects, tmp_path)
    served_by_api = {"", SERVICE_NAME, *(health_name(r) for r in settings.routes)}
    served_by_worker = {"", *(health_name(r) for r in settings.routes)}
    grpc_port = int(settings.listen.rsplit(":", 1)[1])
    http_port = int(settings.http_listen.rsplit(":", 1)[1])
    for workload in _workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            args = container.get("args", [])
            if container["name"] in ("redis", "exporter"):
                continue
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            if args[0] == "serve":
                assert ports == {"grpc": grpc_port, "http": http_port}
                served, port = served_by_api if "--workers" not in args else {"", SERVICE_NAME}, grpc_port
                if "--workers" not in args:  # runs jobs here: ready only when its model is warm
                    assert container["readinessProbe"]["grpc"]["service"] == health_name("whisper")
            else:
                assert args[0] == "worker"
                port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                metrics_port = int(env["GATEWAY_METRICS_LISTEN"].rsplit(":", 1)[1])
                assert ports == {"health": port, "metrics": metrics_port}
                served = served_by_worker
                assert container["readinessProbe"]["grpc"]["service"] == health_name(args[args.index("--route") + 1])
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container[kind]["grpc"]
                assert probe["port"] == port and probe["service"] in served, (workload["metadata"]["name"], kind)
            # The drain fits: preStop pause, then shutdown_grace_seconds, then the server's final grace.
            pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert pod["terminationGracePeriodSeconds"] > pause + settings.shutdown_grace_seconds + FINAL_GRACE_SECONDS
            # Its config and tokens are mounted where the settings look for them.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/etc/gateway/config"] == "config" and "/etc/gateway/config/gateway.toml" in args
            assert "/etc/gateway/tokens" in mounts  # auth.tokens_file lives there
            assert settings.auth.enabled


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_bounded(overlay: str) -> None:
    objects = _objects(overlay)
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"inference-gateway"}
    for workload in _workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])
        # Nothing but mounted volumes is writable: the data dir and /tmp are volumes.
        names = {v["name"] for v in pod.get("volumes", [])} | {
            t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            assert {m["name"] for m in container["volumeMounts"]} <= names
    for selector in (w["spec"]["selector"]["matchLabels"] for w in _workloads(objects)):
        policies = [p for p in objects if p["kind"] == "NetworkPolicy"
                    and p["spec"]["podSelector"]["matchLabels"].items() <= selector.items()]
        pdbs = [p for p in objects if p["kind"] == "PodDisruptionBudget"
                and p["spec"]["selector"]["matchLabels"].items() <= selector.items()]
        assert policies, selector  # every pod is behind a NetworkPolicy
        assert pdbs or selector["app.kubernetes.io/component"] == "redis", selector


def test_the_single_overlay_is_one_writer_on_a_volume(tmp_path: Path) -> None:
    objects = _objects("single")
    settings = _settings(objects, tmp_path)
    assert settings.store == ""  # SQLite in the data dir
    api = _one(objects, "Deployment", "gateway-api")
    assert api["spec"]["replicas"] == 1 and api["spec"]["strategy"]["type"] == "Recreate"
    pod = api["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == str(settings.data_dir)]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = _one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "worker" in pod["containers"][0]["image"]  # the image that carries faster-whisper


def test_the_scaled_overlay_wires_replicas_workers_redis_and_keda(tmp_path: Path) -> None:
    objects = _objects("scaled")
    settings = _settings(objects, tmp_path)
    api = _one(objects, "Deployment", "gateway-api")
    assert api["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--workers", "0"]
    assert _one(objects, "HorizontalPodAutoscaler", "gateway-api")["spec"]["scaleTargetRef"]["name"] == "gateway-api"
    worker = _one(objects, "Deployment", "gateway-worker")
    pod = worker["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and pod["nodeSelector"] and pod["tolerations"]
    assert settings.routes["whisper"].device == "cuda"
    # The store URL names the Redis Service; KEDA reads the whisper queue's lag from it.
    redis_service = _one(objects, "Service", "gateway-redis")
    host = f"{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/"
    assert settings.store.startswith("rediss://:") and host in settings.store  # TLS, and the password
    redis_set = _one(objects, "StatefulSet", "gateway-redis")
    assert "--appendonly" in redis_set["spec"]["template"]["spec"]["containers"][0]["args"]
    trigger = _one(objects, "ScaledObject", "gateway-worker")["spec"]["triggers"][0]
    assert trigger["type"] == "redis" and trigger["metadata"]["activationListLength"] == "0"
    assert trigger["metadata"]["listName"] == waiting_key("gw:", "whisper")
    assert trigger["metadata"]["address"].startswith(f"gateway-redis.{redis_set['metadata']['namespace']}.svc")
    # Only the gateway's pods (and KEDA) reach Redis; both kinds of gateway pod carry the label.
    policy = _one(objects, "NetworkPolicy", "gateway-redis-ingress")
    [label] = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items()
    for name in ("gateway-api", "gateway-worker"):
        labels = _one(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels.get(label[0]) == label[1], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_monitor_scrapes_every_metrics_port(overlay: str) -> None:
    """The ServiceMonitor selects Services whose ports, by name, lead to /metrics: the API's HTTP port
    (the HTTP face serves /metrics) and, where workers run, their metrics_listen port."""
    objects = _objects(overlay)
    [monitor] = [o for o in objects if o["kind"] == "ServiceMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = {e["port"]: e["path"] for e in monitor["spec"]["endpoints"]}
    assert set(endpoints.values()) == {"/metrics"}
    services = [o for o in objects if o["kind"] == "Service" and selector.items() <= o["metadata"]["labels"].items()]
    scraped = {(s["metadata"]["name"], p["name"]) for s in services for p in s["spec"]["ports"] if p["name"] in endpoints}
    assert ("gateway-api", "http") in scraped
    workers = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway-worker"]
    if workers:
        assert ("gateway-worker-metrics", "metrics") in scraped
        # Prometheus may reach that port: the workers' NetworkPolicy lets the monitoring namespace in.
        policy = _one(objects, "NetworkPolicy", "gateway-worker-ingress")
        assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [9090]


# -- a first apply that works ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_example_token_ships_and_the_pods_ask_for_the_tokens_secret(overlay: str) -> None:
    objects = _objects(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"], "no Secret is shipped: the operator makes gateway-tokens"
    for workload in _workloads(objects):
        volumes = workload["spec"]["template"]["spec"].get("volumes", [])
        secrets_used = {v["secret"]["secretName"] for v in volumes if "secret" in v}
        if workload["metadata"]["name"] in ("gateway-api", "gateway-worker"):
            assert "gateway-tokens" in secrets_used, workload["metadata"]["name"]
    # And the gateway itself refuses a token from its docs or the old example.
    for placeholder in ("replace-this-token", "s3cr3t-token-a", "CHANGE-ME"):
        with pytest.raises(ValueError, match="placeholder"):
            Settings(auth={"enabled": True, "tokens": {placeholder: "team-a"}})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_an_autoscaler_scales_carries_no_replicas(overlay: str) -> None:
    objects = _objects(overlay)
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in objects if o["kind"] in ("HorizontalPodAutoscaler",
                                                                                  "ScaledObject")}
    for workload in _workloads(objects):
        name = workload["metadata"]["name"]
        assert ("replicas" in workload["spec"]) is (name not in scaled), name
    if overlay == "scaled":
        assert scaled == {"gateway-api", "gateway-worker"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_set_in_the_overlays_images_list_with_the_default_pull_policy(overlay: str) -> None:
    kustomization = yaml.safe_load((ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text())
    listed = {(i.get("newName", i["name"]), i["newTag"]) for i in kustomization["images"]}
    for workload in _workloads(_objects(overlay)):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            name, _, tag = container["image"].rpartition(":")
            assert (name, tag) in listed, container["image"]
            assert "imagePullPolicy" not in container, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_serves_http_and_grpc_with_tls_from_cert_manager(overlay: str) -> None:
    objects = _objects(overlay)
    service = _one(objects, "Service", "gateway-api")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    http, grpc_ingress = _one(objects, "Ingress", "gateway-http"), _one(objects, "Ingress", "gateway-grpc")
    for ingress, port in ((http, "http"), (grpc_ingress, "grpc")):
        annotations = ingress["metadata"]["annotations"]
        assert annotations["cert-manager.io/cluster-issuer"]
        [tls] = ingress["spec"]["tls"]
        [rule] = ingress["spec"]["rules"]
        assert tls["hosts"] == [rule["host"]] and tls["secretName"]
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == "gateway-api" and backend["port"]["name"] == port and port in ports
    assert grpc_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    # The controller may reach the API's ports.
    policy = _one(objects, "NetworkPolicy", "gateway-api-from-ingress")
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == set(ports.values())


def _metric_names(text: str) -> set[str]:
    """The gateway's (and the process collector's) metric names a PromQL text reads."""
    names = set(re.findall(r"\b((?:gateway|process|python)_[a-z_]+)", text))
    return {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}


@pytest.fixture(scope="module")
def served_metrics(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The metric families a real gateway serves (one with a route of each kind the rules name)."""
    import urllib.request

    from harness import ECHO_CONFIG, ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("metrics"), ECHO_CONFIG).start()
    try:
        with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        server.stop()
    return {re.sub(r"_(bucket|sum|count|total)$", "", line.split()[2]) for line in text.splitlines()
            if line.startswith("# TYPE ")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_alerts_and_the_dashboard_read_metrics_the_gateway_serves(overlay: str, served_metrics: set[str]) -> None:
    objects = _objects(overlay)
    [monitor] = [o for o in objects if o["kind"] == "ServiceMonitor"]
    [rule] = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]  # one selector for both
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"GatewayQueueTooOld", "GatewayFailureRateHigh", "GatewayNoHealthyWorker", "GatewayStoreUnavailable"} <= set(alerts)
    for alert in alerts.values():
        assert _metric_names(alert["expr"]) <= served_metrics, alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical") and alert["annotations"]["summary"]
    [dashboard_map] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "inference-gateway-dashboard"]
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["grafana-dashboard.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert _metric_names(expr) <= served_metrics, expr


def test_redis_runs_as_production_needs_it() -> None:
    """Password from a Secret with protected mode on, TLS only, AOF on a claim, noeviction under a memory limit
    with headroom, a startup probe, a PodDisruptionBudget, the exporter scraped; and KEDA connects as the
    gateway does."""
    objects = _objects("scaled")
    redis_set = _one(objects, "StatefulSet", "gateway-redis")
    pod = redis_set["spec"]["template"]["spec"]
    redis, exporter = pod["containers"]
    args = redis["args"]
    option = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert option["--port"] == "0" and option["--tls-port"] == "6379"  # nothing but TLS
    assert option["--requirepass"] == "$(REDIS_PASSWORD)" and option["--protected-mode"] == "yes"
    [password_env] = [e for e in redis["env"] if e["name"] == "REDIS_PASSWORD"]
    assert password_env["valueFrom"]["secretKeyRef"] == {"name": "gateway-redis", "key": "password"}
    assert option["--appendonly"] == "yes" and option["--maxmemory-policy"] == "noeviction"
    assert redis_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    maxmemory = int(option["--maxmemory"].removesuffix("gb")) * 2**30
    limit = int(redis["resources"]["limits"]["memory"].removesuffix("Gi")) * 2**30
    assert limit >= maxmemory * 1.25, "headroom above maxmemory for a rewrite's copy-on-write and buffers"
    assert redis["resources"]["requests"]["memory"] == redis["resources"]["limits"]["memory"]  # never squeezed
    assert redis["startupProbe"]["failureThreshold"] * redis["startupProbe"]["periodSeconds"] >= 120
    assert _one(objects, "PodDisruptionBudget", "gateway-redis")["spec"]["selector"]["matchLabels"] == \
        redis_set["spec"]["selector"]["matchLabels"]
    assert exporter["ports"][0]["containerPort"] == 9121
    service = _one(objects, "Service", "gateway-redis")
    assert service["metadata"]["labels"]["inference-gateway/metrics"] == "true"
    assert {"redis", "metrics"} == {p["name"] for p in service["spec"]["ports"]}
    trigger = _one(objects, "ScaledObject", "gateway-worker")["spec"]["triggers"][0]["metadata"]
    assert trigger["enableTLS"] == "true" and trigger["passwordFromEnv"] == "REDIS_PASSWORD"
    worker = _one(objects, "Deployment", "gateway-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "REDIS_PASSWORD" in {e["name"] for e in worker["env"]}
