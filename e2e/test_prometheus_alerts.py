"""manifests/monitoring against the real thing: a Prometheus server (Debian's) scrapes
a running operator, evaluates the alert rules of the plain rules file (with shorter
`for` durations) and answers every query of the Grafana dashboard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import REPO, TERMINAL, OperatorProcess, get_rollout, wait_phase
from e2e.identity import free_port
from tests.harness.cluster import Cluster, wait_for
from tests.harness.prometheus import MetricsExporter, PrometheusServer

pytestmark = pytest.mark.cluster

MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "rules" / "canary-operator.rules.yaml"
DASHBOARD = MONITORING / "dashboards" / "canary-operator.json"


class OperatorPrometheus(PrometheusServer):
    """Prometheus scraping the operator's /metrics every second, with the alert rules."""

    def __init__(self, exporter: MetricsExporter, operator_target: str, rules: Path) -> None:
        super().__init__(exporter)
        self.operator_target = operator_target
        self.rules = rules

    def config(self) -> str:
        return yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(self.rules)],
                "scrape_configs": [
                    {
                        "job_name": "exporter",
                        "static_configs": [{"targets": [self.exporter.target]}],
                    },
                    {
                        "job_name": "canary-operator",
                        "static_configs": [{"targets": [self.operator_target]}],
                    },
                ],
            }
        )


def fast_rules(path: Path) -> Path:
    """The shipped rules with every `for` cut to 2 s (the expressions unchanged)."""
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture
def scraped_operator(
    crd_installed: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
) -> Iterator[tuple[OperatorProcess, PrometheusServer]]:
    port = free_port()
    op = OperatorProcess(
        crd_installed,
        namespace,
        tmp_path / "operator.log",
        args=["--http-port", str(port), "--http-host", "127.0.0.1"],
    ).start()
    operators.append(op)
    exporter = MetricsExporter().start()
    server = OperatorPrometheus(exporter, f"127.0.0.1:{port}", fast_rules(tmp_path / "rules.yaml"))
    try:
        server.start()
        server.wait_for_value(
            'up{job="canary-operator"}',
            lambda v: v == 1.0,
            timeout=60,
            what="the operator to be scraped",
        )
        yield op, server
    finally:
        server.stop()
        exporter.stop()


def firing(server: PrometheusServer, alert: str, **labels: str) -> bool:
    selector = ",".join(
        [f'alertname="{alert}"', 'alertstate="firing"', *(f'{k}="{v}"' for k, v in labels.items())]
    )
    return bool(server.query(f"ALERTS{{{selector}}}")["result"])


def dashboard_queries(namespace: str) -> dict[str, str]:
    board = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        .replace("$__rate_interval", "1m")
        .replace("$namespace", namespace)
        for panel in board["panels"]
        for target in panel["targets"]
    }


def test_blocked_cleanup_fires_the_alert_and_the_dashboard_answers(
    kube_cluster: Cluster,
    namespace: str,
    scraped_operator: tuple[OperatorProcess, PrometheusServer],
) -> None:
    op, server = scraped_operator
    kube_cluster.apply(m.app("web"), namespace)
    kube_cluster.apply(
        m.rollout(
            "stuck",
            [{"canary": {}}, m.job_test("broken", fail=True)],
            cleanup=[m.cleanup_job("never-works", fail=True)],
            cleanupPolicy={"retryBackoffSeconds": 1, "maxBackoffSeconds": 2},
        ),
        namespace,
    )

    def blocked() -> bool:
        status = get_rollout(kube_cluster, namespace, "stuck").get("status") or {}
        return int((status.get("cleanup") or {}).get("attempts", 0)) >= 1

    wait_for(blocked, 90, message="the cleanup to fail")
    wait_for(
        lambda: firing(server, "CanaryCleanupBlocked", namespace=namespace, name="stuck"),
        60,
        message="CanaryCleanupBlocked to fire",
    )
    assert not firing(server, "CanaryRolloutFailed", namespace=namespace, name="stuck")

    # Every dashboard query evaluates; those about this rollout have data.
    answers = {
        title: server.query(q)["result"] for title, q in dashboard_queries(namespace).items()
    }
    for title in ("Rollout phase / A", "Cleanup blocked / A", "Rollouts by phase / A"):
        assert answers[title], f"{title}: no data"
    phases = {s["metric"]["phase"] for s in answers["Rollout phase / A"]}
    assert phases == {"CleaningUp"}
    assert (
        server.value(
            f'max(canary_operator_rollout_weight_percent{{namespace="{namespace}",name="stuck"}})'
        )
        is not None
    )

    # A human force-releases the lock: the rollout ends Failed, the alert moves on.
    kube_cluster.kubectl(
        "annotate", "cro", "stuck", "-n", namespace, "canary-operator.dev/force-release=true"
    )
    ended = wait_phase(kube_cluster, namespace, "stuck", TERMINAL, timeout=60)
    assert ended["status"]["phase"] == "Failed"
    wait_for(
        lambda: (
            firing(server, "CanaryRolloutFailed", namespace=namespace, name="stuck")
            and not firing(server, "CanaryCleanupBlocked", namespace=namespace, name="stuck")
        ),
        60,
        message="CanaryRolloutFailed to fire and CanaryCleanupBlocked to resolve",
    )
    assert op.running()
