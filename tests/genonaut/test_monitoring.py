"""deploy/prometheus (alert rules) and deploy/grafana (dashboard) against the real thing: promtool checks the
rules and lints /metrics, and a real Prometheus scrapes the live server with the bearer token, loads the
rules and evaluates every dashboard query. Every metric they name is one /metrics exposes."""

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "genonaut-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "genonaut-dashboard.json"
TOKEN = "monitoring-test-token-0123456789"
MISSING = "Debian's prometheus package is missing (scripts/system-deps.sh installs it)"


def dashboard_queries():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def rule_queries():
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.fixture
def exposed(client, settings, make_generation, user):
    """Every sample name /metrics exposes (histogram buckets, counters' _total included)."""
    settings.METRICS_TOKEN = TOKEN
    from generation import metrics

    make_generation(user)  # a queued request: the by-status gauge has a sample
    metrics.count("requeues", {"workflow": "txt2img"})  # counters show their samples once they have a row
    metrics.count("failures", {"workflow": "txt2img", "reason": "execution"})
    metrics.count("requests_finished", {"workflow": "txt2img", "status": "completed"})
    metrics.count("webhook_deliveries", {"outcome": "delivered"})
    for name in metrics.BUCKETS:
        metrics.observe(name, 1.0, {"workflow": "txt2img", "backend": "http://127.0.0.1:9"})
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    return text, {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_metric_the_rules_and_dashboard_name_is_exposed(exposed):
    _, names = exposed
    named = {name for query in [*rule_queries(), *dashboard_queries()] for name in re.findall(r"genonaut_\w+", query)}
    assert named and sorted(named - names) == []


def test_the_dashboard_is_importable_json(exposed):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "genonaut" and dashboard["panels"]
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_promtool_accepts_the_rules_and_lints_metrics_clean(exposed):
    assert shutil.which("promtool"), MISSING
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text, _ = exposed
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout + lint.stderr


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def prometheus(live_server, settings, tmp_path):
    """A real Prometheus scraping the live server's /metrics every second with the bearer token, with the
    alert rules loaded; yields its base URL."""
    prometheus = shutil.which("prometheus")
    assert prometheus, MISSING
    settings.METRICS_TOKEN = TOKEN
    target = live_server.url.split("://", 1)[1]
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{RULES}]
scrape_configs:
  - job_name: genonaut
    metrics_path: /metrics
    authorization: {{type: Bearer, credentials: {TOKEN}}}
    static_configs: [{{targets: ["{target}"]}}]
""")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def query(base, expression):
    answer = requests.get(f"{base}/api/v1/query", params={"query": expression}, timeout=5).json()
    assert answer["status"] == "success", (expression, answer)
    return answer["data"]["result"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_prometheus_scrapes_with_the_token_and_evaluates_rules_and_dashboard(prometheus, settings):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 2}]
    deadline = time.monotonic() + 30
    while not query(prometheus, 'up{job="genonaut"} == 1'):
        assert time.monotonic() < deadline, requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()
        time.sleep(0.2)
    assert query(prometheus, "genonaut_backend_up")[0]["metric"]["backend"] == "http://127.0.0.1:9"
    while True:  # every rule evaluated at least once, without an error
        rules = [rule for group in requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
                 for rule in group["rules"]]
        if rules and all(rule["health"] == "ok" for rule in rules):
            break
        assert time.monotonic() < deadline, [(r["name"], r["health"], r.get("lastError")) for r in rules]
        time.sleep(0.2)
    assert len(rules) == len(rule_queries())
    for expression in dashboard_queries():
        query(prometheus, expression)  # each is valid PromQL the server can evaluate
