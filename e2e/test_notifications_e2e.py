"""Notifications end to end: the operator (a separate process) on the local cluster
posts to local endpoints that record what they receive and refuse what the real
services would refuse (e2e/chat_endpoints.py, which cites the Slack and Teams
documentation). One message per trigger per run and service; an endpoint answering
500 throughout delays neither the rollout nor its cleanup, and its failures show in
the metrics and in an Event."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.chat_endpoints import ChatEndpoints, slack_problem, teams_problem
from e2e.conftest import OperatorProcess, events_of, get_rollout, serving_operator, wait_phase
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

SUB = "notifications.canary-operator.dev/subscribe."
LEDGER = "notifications.canary-operator.dev/notified"


def notification_config(cluster: Cluster, ns: str, chat: ChatEndpoints) -> None:
    """The ConfigMap/Secret pair: URLs in the Secret, referenced as $key."""
    secret = {
        "slack-url": chat.url(f"slack/{ns}"),
        "teams-url": chat.url(f"teams/{ns}"),
        "broken-url": chat.url(f"broken/{ns}"),
    }
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "canary-operator-notifications-secret"},
                    "stringData": secret,
                },
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "canary-operator-notifications"},
                    "data": {
                        "service.slack.chat": "url: $slack-url\n",
                        "service.teams.ops": "url: $teams-url\n",
                        "service.slack.broken": "url: $broken-url\n",
                    },
                },
            ]
        ),
        ns,
    )


def with_annotations(manifest: str, annotations: dict[str, str]) -> str:
    doc = yaml.safe_load(manifest)
    doc["metadata"]["annotations"] = annotations
    return yaml.safe_dump(doc)


def trigger_of(received: Any) -> str:
    """The trigger a message announces (in the facts both services carry)."""
    body = received.body
    if "blocks" in body:
        (context,) = [b for b in body["blocks"] if b["type"] == "context"]
        facts = dict(e["text"].split(":* ", 1) for e in context["elements"])
        return facts["*Trigger"]
    card = body["attachments"][0]["content"]
    (factset,) = [b for b in card["body"] if b["type"] == "FactSet"]
    return {f["title"]: f["value"] for f in factset["facts"]}["Trigger"]


def ledger(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    raw = (get_rollout(cluster, ns, name)["metadata"].get("annotations") or {}).get(LEDGER)
    return dict(json.loads(raw)) if raw else {}


def test_slack_and_teams_get_one_message_per_trigger(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    with ChatEndpoints() as chat:
        notification_config(kube_cluster, ns, chat)
        kube_cluster.apply(m.app("web") + "---\n" + m.app("api"), ns)
        good = ("on-started", "on-paused", "on-promoted", "on-succeeded")
        bad = ("on-started", "on-step-failed", "on-failed")
        kube_cluster.apply(
            with_annotations(
                m.rollout(
                    "web-ok",
                    [{"canary": {"replicas": 1}}, {"name": "hold", "pause": {}}, {"promote": {}}],
                ),
                {f"{SUB}{t}.{s}": "" for t in good for s in ("chat", "ops")},
            ),
            ns,
        )
        kube_cluster.apply(
            with_annotations(
                m.rollout(
                    "api-bad",
                    [
                        {"canary": {"replicas": 1}},
                        {
                            "name": "contract",
                            "test": {"webhook": {"url": chat.url("broken/test"), "retries": 0}},
                        },
                    ],
                    target="api",
                    service="api",
                ),
                {f"{SUB}{t}.{s}": "" for t in bad for s in ("chat", "ops")},
            ),
            ns,
        )
        wait_phase(kube_cluster, ns, "web-ok", "Paused", timeout=120)
        kube_cluster.kubectl("annotate", "cro", "web-ok", "-n", ns, "canary-operator.dev/resume=2")
        wait_phase(kube_cluster, ns, "web-ok", "Succeeded", timeout=180)
        wait_phase(kube_cluster, ns, "api-bad", "Failed", timeout=180)
        expected = {
            "web-ok": {
                f"1/{t}{'/step-2' if t == 'on-paused' else ''}/{s}"
                for t in good
                for s in ("chat", "ops")
            },
            "api-bad": {f"1/{t}/{s}" for t in bad for s in ("chat", "ops")},
        }
        for name, keys in expected.items():
            wait_for(
                lambda name=name, keys=keys: (
                    {  # type: ignore[misc]
                        k for k, v in ledger(kube_cluster, ns, name).items() if v == "sent"
                    }
                    == keys
                ),
                timeout=60,
                message=lambda name=name: f"ledger of {name}: {ledger(kube_cluster, ns, name)}",  # type: ignore[misc]
            )
        slack, teams = chat.to(f"slack/{ns}"), chat.to(f"teams/{ns}")
    # Every message passed the endpoint's checks of the documented shape...
    assert [slack_problem(r.body) for r in slack] == [None] * len(slack)
    assert [teams_problem(r.body) for r in teams] == [None] * len(teams)

    # ... and each trigger of each run reached each service exactly once.
    def per_rollout(received: list[Any]) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for r in received:
            text = json.dumps(r.body)
            name = "web-ok" if f"{ns}/web-ok" in text else "api-bad"
            out[(name, trigger_of(r))] += 1
        return out

    want = Counter({("web-ok", t): 1 for t in good} | {("api-bad", t): 1 for t in bad})
    assert per_rollout(slack) == want
    assert per_rollout(teams) == want
    first = next(r.body for r in slack if trigger_of(r) == "on-succeeded")
    assert first["text"].startswith("Rollout web-ok succeeded")
    assert first["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Rollout web-ok succeeded"},
    }


# ------------------------------------------------ a failing endpoint delays nothing

STEPS = [
    {"canary": {"replicas": 1}},
    {"pause": {"duration": "3s"}},
    {"setWeight": 50},
    {"pause": {"duration": "3s"}},
    {"promote": {}},
]
TOLERANCE_S = 8.0  # absolute slack between two identical rollouts run side by side
TOLERANCE_RATIO = 0.25  # and relative to the slower one (2 shared cores, other suites)


def _seconds(a: str, b: str) -> float:
    def parse(t: str) -> datetime:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))

    return (parse(b) - parse(a)).total_seconds()


@pytest.fixture
def operator_with_metrics(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> str:
    return serving_operator(kube_cluster, namespace, operators, tmp_path / "op.log")


def test_an_endpoint_answering_500_delays_no_rollout_and_no_cleanup(
    kube_cluster: Cluster, namespace: str, operator_with_metrics: str
) -> None:
    ns = namespace
    every = (
        "on-started",
        "on-paused",
        "on-promoted",
        "on-succeeded",
        "on-failed",
        "on-aborted",
        "on-cleanup-blocked",
        "on-step-failed",
    )
    with ChatEndpoints() as chat:
        notification_config(kube_cluster, ns, chat)
        kube_cluster.apply(m.app("web") + "---\n" + m.app("api"), ns)
        # Identical rollouts of two targets, side by side: one notifies the broken
        # endpoint on every trigger, the other has no notifications at all.
        noisy = with_annotations(
            m.rollout("noisy", STEPS, target="web", service="web"),
            {f"{SUB}{t}.broken": "" for t in every},
        )
        quiet = m.rollout("quiet", STEPS, target="api", service="api")
        kube_cluster.apply(noisy + "---\n" + quiet, ns)
        # The next rollout of the noisy target waits in its queue: the lock must pass
        # to it as soon as the noisy one's cleanup is verified.
        kube_cluster.apply(
            with_annotations(
                m.rollout("noisy-next", STEPS[:1], target="web", service="web"),
                {f"{SUB}{t}.broken": "" for t in every},
            ),
            ns,
        )
        for name in ("noisy", "quiet", "noisy-next"):
            wait_phase(kube_cluster, ns, name, "Succeeded", timeout=240)
        calls = len(chat.to(f"broken/{ns}"))
        metrics = (
            urllib.request.urlopen(f"{operator_with_metrics}/metrics", timeout=10).read().decode()
        )
    timings = {}
    for name in ("noisy", "quiet"):
        status = get_rollout(kube_cluster, ns, name)["status"]
        timings[name] = (
            _seconds(status["startedAt"], status["completedAt"]),
            _seconds(status["cleanup"]["startedAt"], status["cleanup"]["finishedAt"]),
        )
    for i, what in enumerate(("rollout", "cleanup")):
        noisy_s, quiet_s = timings["noisy"][i], timings["quiet"][i]
        allowed = TOLERANCE_S + TOLERANCE_RATIO * max(noisy_s, quiet_s)
        assert noisy_s - quiet_s <= allowed, f"{what}: noisy {noisy_s}s vs quiet {quiet_s}s"
    noisy_done = get_rollout(kube_cluster, ns, "noisy")["status"]["cleanup"]["finishedAt"]
    handed = get_rollout(kube_cluster, ns, "noisy-next")["status"]["lock"]["acquiredAt"]
    handoff = _seconds(noisy_done, handed)
    assert handoff <= 5.0, f"lock handed over {handoff}s after the cleanup was verified"
    assert calls >= 3  # started, promoted, succeeded at least; each retried
    failed = [
        line
        for line in metrics.splitlines()
        if line.startswith("canary_operator_notifications_total{")
        and 'service="broken"' in line
        and 'result="failed"' in line
    ]
    assert failed and sum(float(line.rsplit(" ", 1)[1]) for line in failed) >= 3, metrics
    assert not any(
        'result="sent"' in line and 'service="broken"' in line for line in metrics.splitlines()
    )
    # Still retrying (with backoff) when both rollouts have ended: nothing waited on it.
    in_flight = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("canary_operator_notifications_in_flight ")
    ]
    assert in_flight and in_flight[0] >= 1, metrics
    reasons = [e["reason"] for e in events_of(kube_cluster, ns, "noisy")]
    assert "NotificationFailed" in reasons
    assert "NotificationFailed" not in [e["reason"] for e in events_of(kube_cluster, ns, "quiet")]
    print(
        f"timings (rollout s, cleanup s): {timings}; lock handoff {handoff}s; "
        f"calls to the broken endpoint: {calls}"
    )


@pytest.mark.parametrize("overlay", ["cluster", "namespaced"])
def test_reading_the_configuration_is_opt_in_and_named(
    overlay: str, kube_cluster: Cluster, tmp_path: Path
) -> None:
    """Without the component the operator reads no ConfigMap and no Secret; with it,
    `get` on the two notification objects by name, nothing more."""
    import os

    repo = Path(__file__).resolve().parent.parent / "manifests"

    def roles(kustomization_dir: Path) -> list[dict[str, Any]]:
        out = kube_cluster.kubectl("kustomize", str(kustomization_dir)).stdout
        return [
            d
            for d in yaml.safe_load_all(out)
            if d
            and d["kind"] in ("ClusterRole", "Role")
            and d["metadata"]["name"] == "canary-operator"
        ]

    def rules_on(role: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in role["rules"] if {"configmaps", "secrets"} & set(r["resources"])]

    assert [rules_on(r) for r in roles(repo / overlay)] == [[]]
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(repo / overlay, tmp_path)],
                "components": [os.path.relpath(repo / "components" / "notifications", tmp_path)],
            }
        )
    )
    (role,) = roles(tmp_path)
    assert rules_on(role) == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["get"],
            "resourceNames": ["canary-operator-notifications"],
        },
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get"],
            "resourceNames": ["canary-operator-notifications-secret"],
        },
    ]
