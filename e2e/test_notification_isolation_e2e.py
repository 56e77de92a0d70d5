"""Notifications end to end, one endpoint isolated from another: ten rollouts run at
once, each subscribed to an endpoint that accepts requests and never answers
(`timeoutSeconds: 30`), one that answers 500 throughout, and a recorder. Every message
reaches the recorder within 2 s of its transition: the recorder's clock (wall time,
the same machine) against the Event the operator stamped when it wrote the transition
(`eventTime`, microseconds). See docs/notifications.md, "Delivery, retries, dedupe"."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.chat_endpoints import ChatEndpoints, Received
from e2e.conftest import OperatorProcess, wait_phase
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

SUB = "notifications.canary-operator.dev/subscribe."
LEDGER = "notifications.canary-operator.dev/notified"
ROLLOUTS = 10
BOUND_S = 2.0
STEPS: list[dict[str, Any]] = [{"canary": {"replicas": 1}}, {"promote": {}}]
# trigger -> the Event the same status write announces (reason, message starts with)
TRANSITION_EVENT = {
    "on-started": ("Progressing", "started"),
    "on-promoted": ("StepSucceeded", "step 2 promote"),
    "on-succeeded": ("Succeeded", ""),
}


def configure(cluster: Cluster, ns: str, chat: ChatEndpoints) -> None:
    cluster.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "canary-operator-notifications"},
                "data": {
                    "service.slack.rec": f"url: {chat.url(f'slack/{ns}')}\n",
                    "service.slack.hang": f"url: {chat.url(f'hang/{ns}')}\ntimeoutSeconds: 30\n",
                    "service.slack.broken": f"url: {chat.url(f'broken/{ns}')}\n",
                },
            }
        ),
        ns,
    )


def rollout(i: int) -> str:
    doc = yaml.safe_load(m.rollout(f"web{i}", STEPS, target=f"web{i}", service=f"web{i}"))
    doc["metadata"]["annotations"] = {
        f"{SUB}{t}.{s}": "" for t in TRANSITION_EVENT for s in ("rec", "hang", "broken")
    }
    return yaml.safe_dump(doc)


def facts(received: Received) -> tuple[str, str]:
    """(rollout name, trigger) of a Slack message (its context block)."""
    (context,) = [b for b in received.body["blocks"] if b["type"] == "context"]
    fields = dict(e["text"].split(":* ", 1) for e in context["elements"])
    return fields["*Rollout"].split("/")[-1], fields["*Trigger"]


def transition_times(cluster: Cluster, ns: str) -> dict[tuple[str, str], float]:
    """(rollout, trigger) -> when the operator wrote the transition (its Event)."""
    events = cluster.get_json("events", "-n", ns)["items"]
    out: dict[tuple[str, str], float] = {}
    for e in events:
        if e["involvedObject"].get("kind") != "CanaryRollout" or not e.get("eventTime"):
            continue
        for trigger, (reason, starts) in TRANSITION_EVENT.items():
            if e["reason"] == reason and e["message"].startswith(starts):
                at = datetime.fromisoformat(e["eventTime"].replace("Z", "+00:00"))
                out[(e["involvedObject"]["name"], trigger)] = at.timestamp()
    return out


def complete(
    times: dict[tuple[str, str], float], want: set[tuple[str, str]]
) -> dict[tuple[str, str], float] | None:
    return times if set(times) >= want else None


def test_ten_rollouts_reach_the_recorder_within_2s_beside_hanging_and_failing_endpoints(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    names = [f"web{i}" for i in range(ROLLOUTS)]
    with ChatEndpoints() as chat:
        configure(kube_cluster, ns, chat)
        kube_cluster.apply("---\n".join(m.app(n, replicas=1) for n in names), ns)
        kube_cluster.apply("---\n".join(rollout(i) for i in range(ROLLOUTS)), ns)  # at once
        for name in names:
            wait_phase(kube_cluster, ns, name, "Succeeded", timeout=300)
        want = {(n, t) for n in names for t in TRANSITION_EVENT}
        wait_for(
            lambda: len(chat.to(f"slack/{ns}")) >= len(want),
            timeout=30,
            message=lambda: f"recorder has {len(chat.to(f'slack/{ns}'))} of {len(want)}",
        )
        recorded = chat.to(f"slack/{ns}")
        hanging, broken = chat.to(f"hang/{ns}"), chat.to(f"broken/{ns}")
        # The Events are written in the background, in order: the last may come later.
        times = wait_for(
            lambda: complete(transition_times(kube_cluster, ns), want),
            timeout=60,
            message=lambda: f"Events: {sorted(want - set(transition_times(kube_cluster, ns)))}",
        )
        ledgers = {
            n: json.loads(
                kube_cluster.get_json("canaryrollout", n, "-n", ns)["metadata"]["annotations"][
                    LEDGER
                ]
            )
            for n in names
        }
    # Exactly one message per rollout and trigger reached the recorder...
    assert Counter(facts(r) for r in recorded) == Counter(want)
    # ... each within 2 s of the status write that fired it.
    late: dict[tuple[str, str], float] = {
        facts(r): round(r.wall - times[facts(r)], 3) for r in recorded
    }
    print(f"recorder latency (s) by (rollout, trigger): {dict(sorted(late.items()))}")
    assert max(late.values()) <= BOUND_S, {k: v for k, v in late.items() if v > BOUND_S}
    assert min(late.values()) >= -0.05  # the same clock: no message before its transition
    # Meanwhile the other two endpoints were busy: the hanging one holds its bound of
    # open requests (4) with the rest waiting behind them, the broken one was retried.
    assert len(hanging) == 4, [facts(r) for r in hanging]
    assert len({facts(r) for r in broken}) >= ROLLOUTS
    states: dict[str, Any] = {}
    for n, entries in ledgers.items():
        for key, state in entries.items():
            states[f"{n}:{key}"] = state
    assert {k: v for k, v in states.items() if k.endswith("/rec")} == {
        f"{n}:1/{t}/rec": "sent" for n, t in want
    }
    assert all(v == "pending" for k, v in states.items() if not k.endswith("/rec")), states
