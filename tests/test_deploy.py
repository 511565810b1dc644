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


def test_compose_runs_postgres_two_scorers_a_worker_and_a_proxy() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "scorer", "worker", "proxy", "prometheus", "grafana"} <= set(services)
    scorer, worker = services["scorer"], services["worker"]
    assert scorer["deploy"]["replicas"] == 2 and scorer["build"]["context"] == "."
    assert scorer["command"] == ["patchshift", "serve"]
    assert worker["command"] == ["patchshift", "worker"]
    assert scorer["image"] == worker["image"]  # one image, built once
    for service in (scorer, worker):
        url = service["environment"]["PATCHSHIFT_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
        assert service["volumes"] == ["models:/models"]  # one shared store
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert scorer["environment"]["PATCHSHIFT_RUN_JOBS"] == "false"
    assert "8000:80" in services["proxy"]["ports"]  # only the proxy is published
    assert "ports" not in scorer and "ports" not in worker
    for name in ("proxy", "prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    nginx = (ROOT / "deploy/nginx/nginx.conf").read_text()
    assert "proxy_pass http://$scorers:8000" in nginx and "set $scorers scorer;" in nginx
    scrapes = {
        job["job_name"]: job
        for job in yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())[
            "scrape_configs"
        ]
    }
    ports = {
        "patchshift-scorer": 8000,
        "patchshift-worker": int(worker["environment"]["PATCHSHIFT_PORT"]),
    }
    for job, port in ports.items():
        discovery = scrapes[job]["dns_sd_configs"][0]
        assert discovery["port"] == port and discovery["names"] == [job.split("-")[1]]
        assert scrapes[job]["metrics_path"] in app_routes()  # the service really serves it


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


def test_kubernetes_runs_scorers_with_an_autoscaler_and_workers_on_a_shared_volume() -> None:
    from patchshift.service.settings import Settings

    documents = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((ROOT / "deploy/k8s/patchshift.yaml").read_text())
    }
    claim = documents[("PersistentVolumeClaim", "patchshift-models")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on many nodes share it
    scorer = documents[("Deployment", "patchshift-scorer")]["spec"]
    worker = documents[("Deployment", "patchshift-worker")]["spec"]
    routes = app_routes()
    settings = {f"PATCHSHIFT_{k.upper()}" for k in Settings.model_fields}
    for deployment, command in ((scorer, "serve"), (worker, "worker")):
        pod = deployment["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"] == ["patchshift", command]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "patchshift-models"
        env = {e["name"]: e for e in container["env"]}
        assert env["PATCHSHIFT_MODELS_DIR"]["value"] == container["volumeMounts"][0]["mountPath"]
        assert set(env) <= settings
        secret = env["PATCHSHIFT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "patchshift-database", "key": "url"}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["path"] in routes
        port = container["ports"][0]["containerPort"]
        assert int(deployment["template"]["metadata"]["annotations"]["prometheus.io/port"]) == port
        assert container["resources"]["limits"]["memory"]
    assert {"PATCHSHIFT_RUN_JOBS": "false"}.items() <= {
        e["name"]: e.get("value") for e in scorer["template"]["spec"]["containers"][0]["env"]
    }.items()
    worker_env = {
        e["name"]: e.get("value") for e in worker["template"]["spec"]["containers"][0]["env"]
    }
    assert int(worker_env["PATCHSHIFT_PORT"]) == 9100
    autoscaler = documents[("HorizontalPodAutoscaler", "patchshift-scorer")]["spec"]
    assert autoscaler["scaleTargetRef"]["name"] == "patchshift-scorer"
    assert autoscaler["minReplicas"] >= 2 and autoscaler["metrics"][0]["resource"]["name"] == "cpu"
    service = documents[("Service", "patchshift")]["spec"]
    assert service["selector"] == scorer["selector"]["matchLabels"]  # jobs reach any scorer
    assert service["ports"][0]["targetPort"] == "http"


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
