"""The Helm chart, rendered with `helm template` and validated against the Kubernetes schemas offline."""

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "armorm-triton"
HELM = ROOT / "build" / "tools" / "helm"
KUBERNETES_VERSION = "1.30.0"


def render(*values: str) -> list[dict]:
    if not HELM.exists():
        pytest.skip("helm is not installed: run `make tools`")
    command = [str(HELM), "template", "rm", str(CHART)] + [a for v in values for a in ("--set", v)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def validate(documents: list[dict]) -> None:
    import kubernetes_validate

    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def by_kind(documents: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in documents}


def test_helm_lint():
    if not HELM.exists():
        pytest.skip("helm is not installed: run `make tools`")
    done = subprocess.run([str(HELM), "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_render_is_valid_and_production_shaped():
    documents = render()
    validate(documents)
    kinds = by_kind(documents)
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "an 8B load needs a long startup window"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["securityContext"]["runAsNonRoot"] is True
    ports = {p["name"] for p in kinds["Service"]["spec"]["ports"]}
    assert ports == {"http", "grpc", "metrics"}
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "armorm_backbone_queue_us_per_request"


def test_security_options_render_valid_manifests():
    documents = render("security.adminKeySecret=armorm-admin", "security.apiKeySecret=armorm-api",
                       "security.tlsSecret=armorm-tls", "autoscaling.enabled=false", "replicaCount=3")
    validate(documents)
    kinds = by_kind(documents)
    assert "HorizontalPodAutoscaler" not in kinds and kinds["Deployment"]["spec"]["replicas"] == 3
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in container["env"]} == {"ARMORM_ADMIN_KEY", "ARMORM_API_KEY"}
    assert "--tls-cert" in container["command"]


def test_validation_catches_a_broken_manifest():
    import kubernetes_validate

    documents = render()
    deployment = by_kind(documents)["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "not-a-port"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate([deployment])
