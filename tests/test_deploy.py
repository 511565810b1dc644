"""No Docker engine here: parse the container and deploy files and check they fit the real
service."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRIC = re.compile(r"\bpatchshift_[a-z_]+\b")


def exported_series() -> set[str]:
    """Every sample name the service's registry can expose."""
    from patchshift.service.prometheus import ServiceMetrics

    names = set()
    for family in ServiceMetrics().registry.collect():
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
        }[family.type]
        names.update(family.name + s for s in suffixes)
    return names


def app_routes() -> set[str]:
    from patchshift.service.app import create_app

    return {path for path in create_app().openapi()["paths"]}


def test_compose_wires_service_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"patchshift", "prometheus", "grafana"} <= set(services)
    assert "8000:8000" in services["patchshift"]["ports"]
    assert services["patchshift"]["build"]["context"] == "."
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())[
        "scrape_configs"
    ][0]
    assert scrape["metrics_path"] in app_routes()  # the service really serves it
    assert scrape["static_configs"][0]["targets"] == ["patchshift:8000"]


def test_dashboard_and_alerts_query_real_metrics() -> None:
    exported = exported_series()
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/patchshift.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    expressions += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    assert len(expressions) > 10
    for expr in expressions:
        used = METRIC.findall(expr)
        assert used, expr
        for name in used:
            assert name in exported, f"{name} in {expr!r} is not exported by the service"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/patchshift.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_kubernetes_probes_hit_real_routes() -> None:
    from patchshift.service.settings import Settings

    documents = {
        d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy/k8s/patchshift.yaml").read_text())
    }
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(documents)
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    routes = app_routes()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    assert container["ports"][0]["containerPort"] == 8000
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == documents["PersistentVolumeClaim"]["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PATCHSHIFT_MODELS_DIR"]["value"] == container["volumeMounts"][0]["mountPath"]
    assert set(env) - {"PATCHSHIFT_MODELS_DIR"} <= {
        f"PATCHSHIFT_{k.upper()}" for k in Settings.model_fields
    }
    assert documents["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_dockerfile_is_multistage_with_cpu_default_and_cuda_option() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3
    assert re.search(r"^ARG VARIANT=cpu", text, re.M)
    assert "faiss-cpu" in text and "[gpu,clip]" in text and "[clip]" in text
    assert re.search(r"^EXPOSE 8000", text, re.M)
    assert 'CMD ["patchshift", "serve"]' in text
    assert "/healthz" in text and "/healthz" in app_routes()
    for copied in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which does not exist"
