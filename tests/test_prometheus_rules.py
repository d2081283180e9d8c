"""The alert rules (deploy/prometheus/alerts.yml): valid for Prometheus, unit-tested with
promtool (deploy/prometheus/alerts_test.yml), and written against metrics the service exports.

The promtool checks skip, with the reason, where promtool is not installed (.ci/run installs
Debian's `prometheus`, which ships it)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.metrics import ServiceMetrics

REPO_ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = REPO_ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
PROMTOOL_TIMEOUT_S = 120
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load((RULES_DIR / "alerts.yml").read_text())["groups"]
            for rule in group["rules"]]


def exported_metric_names() -> set[str]:
    """Sample names the service exports (counters with _total, histograms with _bucket ...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",),
                "gauge": ("",)}
    return {family.name + suffix for family in ServiceMetrics().registry.collect()
            for suffix in suffixes[family.type]}


def test_alerts_use_only_metrics_the_service_exports() -> None:
    exported = exported_metric_names()
    for rule in rules():
        used = set(re.findall(r"mind_recall_\w+", rule["expr"]))
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"
        assert used or 'up{job="mind-recall"}' in rule["expr"], f"{rule['alert']}: on no service metric"


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((RULES_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in rules()}


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_compose_prometheus_config_is_valid_with_its_rules(tmp_path: Path) -> None:
    """deploy/prometheus.yml as compose mounts it (alerts.yml next to it) passes check config."""
    shutil.copy(REPO_ROOT / "deploy" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(RULES_DIR / "alerts.yml", tmp_path / "alerts.yml")
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
