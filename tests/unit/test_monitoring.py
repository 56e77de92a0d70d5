"""manifests/monitoring: the alert rules (promtool), the PrometheusRule copy, the
Grafana dashboard's queries and the ServiceMonitor, checked without a cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary_operator.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "rules" / "canary-operator.rules.yaml"
RULES_TEST = MONITORING / "rules" / "canary-operator.rules_test.yaml"
DASHBOARD = MONITORING / "dashboards" / "canary-operator.json"
METRIC = re.compile(r"\b(canary_operator_[a-z_]+)")
# Grafana's variables, replaced by values that keep the PromQL valid.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: hack/ensure-deps.sh installs Debian's prometheus"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    out = []
    for query in queries:
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        out.append(query)
    return out


def exposed_families() -> set[str]:
    """Metric family names the operator exposes (even before any sample exists)."""
    text = Metrics().render()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def base_name(sample: str, families: set[str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in families:
            return sample.removesuffix(suffix)
    return sample


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_rule_unit_tests_pass_including_the_blocked_cleanup_alert() -> None:
    result = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]
    }
    assert "CanaryCleanupBlocked" in fired  # the file really tests it firing


def test_a_wrong_expectation_makes_promtool_fail(tmp_path: Path) -> None:
    """The rule tests can fail: expecting no blocked-cleanup alert at 6m is refused."""
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["rule_files"] = [str(RULES)]
    tests["tests"][0]["alert_rule_test"][1]["exp_alerts"] = []
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(broken))
    assert result.returncode != 0
    assert "CanaryCleanupBlocked" in result.stdout + result.stderr


def test_prometheusrule_has_exactly_the_rules_file_groups() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_and_rules_use_only_metrics_the_operator_exposes() -> None:
    families = exposed_families()
    used = {
        base_name(name, families)
        for text in [*dashboard_queries(), RULES.read_text()]
        for name in METRIC.findall(text)
    }
    assert used, "no metric found in the queries"
    assert used <= families, sorted(used - families)
    # The panels the issue asks for are there.
    for wanted in (
        "canary_operator_rollout_phase",
        "canary_operator_rollout_weight_percent",
        "canary_operator_lock_wait_seconds",
        "canary_operator_queue_length",
        "canary_operator_workqueue_depth",
        "canary_operator_cleanup_blocked",
    ):
        assert wanted in used, wanted


def test_dashboard_shape() -> None:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "canary-operator"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


@pytest.fixture
def base_service() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "manifests" / "base" / "service.yaml").read_text())
    return doc


def test_servicemonitor_selects_the_operator_service(base_service: dict[str, Any]) -> None:
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= base_service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [
        base_service["metadata"]["namespace"]
    ]
    ports = {p["name"] for p in base_service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert "http" in ports
