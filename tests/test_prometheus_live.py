"""A real Prometheus scraping the real service on loopback: the target is up, the alert rules
load, and every PromQL expression of the Grafana dashboard evaluates; the request-rate and
latency panels return series after traffic.

Skips, with the reason, where the `prometheus` binary is absent (.ci/run installs Debian's).
Both processes listen on free ports of 127.0.0.1; Prometheus scrapes every second.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.service_support import build_bundle, free_port, item_id, start_server

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "mind-recall.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
SCRAPE_INTERVAL = "1s"
WAIT_S = 40                      # bound of every wait below (a loaded CI machine is slow)
TRAFFIC_ROUNDS, PER_ROUND = 6, 10
SERIES_PANELS = ("Requests per second by status", "Request latency (POST /recall and batch)")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def write_config(tmp: Path, service_port: int) -> Path:
    """deploy/prometheus.yml's scrape job and rule files, aimed at the loopback service."""
    deployed = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    job = next(j for j in deployed["scrape_configs"] if j["job_name"] == "mind-recall")
    shutil.copy(ALERTS, tmp / "alerts.yml")
    config = {"global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
              "rule_files": deployed["rule_files"],
              "scrape_configs": [dict(job, static_configs=[{"targets": [f"127.0.0.1:{service_port}"]}])]}
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_for(what: str, check, log: Path):
    """Poll ``check()`` until it returns a truthy value (returned), at most WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} not within {WAIT_S} s; prometheus log:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(Prometheus API URL, its log, service URL): the service running and scraped."""
    tmp = tmp_path_factory.mktemp("prometheus-live")
    bundle = build_bundle(tmp / "bundles")
    service_port, prometheus_port = free_port(), free_port()
    log = tmp / "prometheus.log"
    with open(log, "w") as out:   # started first: it comes up while the service loads
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={write_config(tmp, service_port)}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        service = start_server(bundle, service_port, tmp / "service.log")
    except RuntimeError:
        prometheus.kill()
        raise
    try:
        api = f"http://127.0.0.1:{prometheus_port}"
        wait_for("prometheus ready", lambda: httpx.get(f"{api}/-/ready", timeout=2).status_code == 200, log)
        yield api, log, f"http://127.0.0.1:{service_port}"
    finally:
        for proc in (prometheus, service):
            proc.terminate()
        for proc in (prometheus, service):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def query(api: str, expr: str) -> dict:
    answer = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]


def send_traffic(service: str) -> None:
    """Recall requests spread over several scrapes, so that rate() sees an increase."""
    with httpx.Client(base_url=service, timeout=10) as client:
        for round_ in range(TRAFFIC_ROUNDS):
            for i in range(PER_ROUND):
                answer = client.post("/recall", json={"history": [item_id(round_), item_id(i)], "top_n": 5})
                assert answer.status_code == 200, answer.text
            time.sleep(0.5)


def test_prometheus_scrapes_the_service_and_the_dashboard_queries_work(stack):
    api, log, service = stack
    targets = wait_for("target up", lambda: [t for t in httpx.get(f"{api}/api/v1/targets", timeout=5).json()
                                             ["data"]["activeTargets"] if t["health"] == "up"], log)
    assert [t["labels"]["job"] for t in targets] == ["mind-recall"]
    send_traffic(service)
    rate_expr = "sum(rate(mind_recall_requests_total{endpoint=\"/recall\"}[1m]))"
    wait_for("request rate above 0", lambda: [r for r in query(api, rate_expr)["result"] if float(r["value"][1]) > 0], log)

    for title, expr in dashboard_queries():
        data = query(api, expr)          # asserts status "success": the expression is valid PromQL
        if title in SERIES_PANELS:
            assert data["result"], f"{title}: {expr} returned no series"
    assert float(query(api, "mind_recall_ready")["result"][0]["value"][1]) == 1
    assert query(api, "up{job=\"mind-recall\"}")["result"][0]["value"][1] == "1"


def test_alert_rules_load_and_evaluate_without_firing(stack):
    api, log, _ = stack
    groups = wait_for("rules evaluated", lambda: [g for g in httpx.get(f"{api}/api/v1/rules", timeout=5).json()
                                                  ["data"]["groups"] if all("lastEvaluation" in r and
                                                                             not r["lastEvaluation"].startswith("0001")
                                                                             for r in g["rules"])], log)
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len([r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]])
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert [rule["name"] for rule in rules if rule["state"] != "inactive"] == []   # a healthy, fresh service
