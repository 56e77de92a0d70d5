"""A cleanup that makes no progress says so (issue 23, "Must show" 7), end to end on
the local cluster: a canary pod that cannot be deleted (someone else's finalizer on
it; in production, a pod on a node that went away stays Terminating the same way).

After `spec.abort: true` the rollout says, within 30 s, CleanupVerified=False with
reason CleanupBlocked naming the pod, a Warning Event, and the metric behind the
CanaryCleanupBlocked alert; it looks again less and less often (counted from the
operator's own /metrics), keeps the target's Lease, and never forces the pod. Then
the way out the condition gives (docs/troubleshooting.md) is typed as given, and the
cleanup finishes, the lock released.

Real control plane, the operator as a separate process; evidence from a watch of the
rollout in commit order and from the operator's /metrics, never a sleep.
"""

from __future__ import annotations

import itertools
import re
import shlex
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import OperatorProcess, events_of, lease, serving_operator
from e2e.watch import Seen, Watch, verified_end
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

NAME = "web-v2"
CANARY = {"canary": {"replicas": 1}}
HOLD = {"name": "hold", "pause": {}}
FINALIZER = "e2e.canary-operator.dev/hold"
ROLE = "canary-operator.dev/role"
RECONCILES = re.compile(
    r'^canary_operator_reconcile_duration_seconds_count\{result="(?:ok|error)"\} (\S+)$', re.M
)
REQUESTS = re.compile(r"^canary_operator_api_requests_total\{([^}]*)\} (\S+)$", re.M)


def scrape(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        return str(response.read().decode())


def reconciles(text: str) -> int:
    return sum(int(float(v)) for v in RECONCILES.findall(text))


def writes(text: str) -> dict[tuple[str, str], int]:
    """API requests that change something, by (verb, resource)."""
    counts: dict[tuple[str, str], int] = {}
    for labels, value in REQUESTS.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields["verb"] in ("get", "list", "watch"):
            continue
        key = (fields["verb"], fields["resource"])
        counts[key] = counts.get(key, 0) + int(float(value))
    return counts


def blocked_gauge(text: str, namespace: str) -> bool:
    sample = f'canary_operator_cleanup_blocked{{name="{NAME}",namespace="{namespace}"}} 1.0'
    return sample in text.splitlines()


def condition(event: Seen, type_: str) -> dict[str, Any]:
    for c in (event.object.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def blocked(event: Seen) -> bool:
    found = condition(event, "CleanupVerified")
    return found.get("status") == "False" and found.get("reason") == "CleanupBlocked"


def blocked_by(event: Seen) -> list[str]:
    return list(((event.object.get("status") or {}).get("cleanup") or {}).get("blockedBy") or [])


def canary_pods(cluster: Cluster, namespace: str) -> list[str]:
    return cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", f"{ROLE}=canary", "-o", "name"
    ).stdout.split()


@pytest.fixture
def let_go(kube_cluster: Cluster, namespace: str) -> Iterator[None]:
    """Whatever happens in the test, no pod keeps the test's finalizer (the namespace
    could not be deleted otherwise)."""
    yield
    for pod in kube_cluster.kubectl(
        "get", "pods", "-n", namespace, "-o", "name", check=False
    ).stdout.split():
        kube_cluster.kubectl(
            "patch", pod, "-n", namespace, "--type=merge", "-p",
            '{"metadata":{"finalizers":null}}', check=False,
        )  # fmt: skip


def test_a_canary_pod_that_will_not_go_blocks_the_cleanup_until_a_human_lets_it_go(
    kube_cluster: Cluster,
    namespace: str,
    operators: list[OperatorProcess],
    tmp_path: Path,
    let_go: None,
) -> None:
    base = serving_operator(kube_cluster, namespace, operators, tmp_path / "op.log")
    kube_cluster.apply(m.app(), namespace)
    with Watch(kube_cluster, namespace, "canaryrollouts") as rollouts:
        kube_cluster.apply(m.rollout(NAME, [CANARY, HOLD]), namespace)
        rollouts.wait(NAME, lambda e: e.phase == "Paused", 90)
        pods = canary_pods(kube_cluster, namespace)
        assert len(pods) == 1, pods
        pod = pods[0].removeprefix("pod/")
        # Someone else's finalizer: the pod cannot go until they remove it.
        kube_cluster.kubectl(
            "patch", "pod", pod, "-n", namespace, "--type=merge",
            "-p", f'{{"metadata":{{"finalizers":["{FINALIZER}"]}}}}',
        )  # fmt: skip
        holder = lease(kube_cluster, namespace)["spec"]["holderIdentity"]
        kube_cluster.kubectl(
            "patch", "cro", NAME, "-n", namespace, "--type=merge", "-p", '{"spec":{"abort":true}}'
        )

        # --- within 30 s: the condition, naming the pod and the way out.
        cleaning = rollouts.wait(NAME, lambda e: e.phase == "CleaningUp", 30)
        said = rollouts.wait(NAME, blocked, 45)
        assert said.at - cleaning.at <= 30, f"blocked {said.at - cleaning.at:.1f}s after abort"
        message = condition(said, "CleanupVerified")["message"]
        assert f"pod/{pod}" in message and FINALIZER in message, message
        assert "never forces a deletion" in message and "docs/troubleshooting.md#" in message
        status = said.object["status"]
        assert status["phase"] == "CleaningUp"
        assert any(b.startswith(f"pod/{pod}: ") for b in status["cleanup"]["blockedBy"])

        # A Warning Event, and the metric the CanaryCleanupBlocked alert is made of.
        def warned() -> list[dict[str, Any]]:
            return [
                e
                for e in events_of(kube_cluster, namespace, NAME)
                if e["reason"] == "CleanupBlocked" and e["type"] == "Warning"
            ]

        wait_for(warned, 30, message="a Warning Event CleanupBlocked")
        assert f"pod/{pod}" in warned()[0]["message"]
        wait_for(lambda: blocked_gauge(scrape(base), namespace), 30, message="the blocked gauge")

        # --- backoff: the reconciles the operator counts, each seen as it happens, until
        # one comes 12 s or more after the one before it. Blocked 20 s past the pod's
        # deletion, the next looks are planned 10 s, 15 s, 22.5 s, then 30 s apart.
        seen: list[tuple[float, int]] = [(time.monotonic(), reconciles(scrape(base)))]
        start_writes = writes(scrape(base))

        def another_look() -> bool:
            count = reconciles(scrape(base))
            if count > seen[-1][1]:
                seen.append((time.monotonic(), count))
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
            return bool(gaps) and gaps[-1] >= 12

        wait_for(another_look, 60, interval=0.25, message=lambda: f"looks seen: {seen}")
        window = seen[-1][0] - seen[0][0]
        looks = seen[-1][1] - seen[0][1]
        # A look every second would have made `window` of them; other wake-ups (a
        # watch's relist) may add one or two to the planned ones.
        assert looks <= window / 4, f"{looks} reconciles in {window:.1f}s: {seen}"
        # Nothing written meanwhile but the Lease's renewals (and no status write per look).
        written = {
            k: v - start_writes.get(k, 0)
            for k, v in writes(scrape(base)).items()
            if v != start_writes.get(k, 0)
        }
        written.pop(("update", "leases"), None)
        written.pop(("create", "events"), None)  # an Event of the moment it was blocked
        # A status write is allowed only where the rollout says something new: another
        # object overdue joins the list (the canary Deployment, in foreground deletion
        # behind its pod, may become overdue a moment after the pod). Each is seen by
        # the watch as a change of status.cleanup.blockedBy; none comes per look.
        said_then = [e for e in rollouts.of(NAME) if seen[0][0] <= e.at <= time.monotonic()]
        news = [
            e
            for before, e in itertools.pairwise([said, *said_then])
            if blocked_by(e) != blocked_by(before)
        ]
        status_writes = sum(
            written.pop((verb, "canaryrollouts/status"), 0) for verb in ("update", "patch")
        )
        assert status_writes <= len(news), (
            f"{status_writes} status writes while blocked, {len(news)} of them saying "
            f"something new: {[blocked_by(e) for e in said_then]}"
        )
        assert written == {}, f"writes while blocked: {written}"
        later = [e for e in rollouts.of(NAME) if e.index > said.index]
        assert all(blocked(e) for e in later), [condition(e, "CleanupVerified") for e in later]

        # --- the lock is kept, and nothing forced the pod.
        held = lease(kube_cluster, namespace)["spec"]
        assert held["holderIdentity"] == holder, held
        assert canary_pods(kube_cluster, namespace) == [f"pod/{pod}"]
        going = kube_cluster.get_json("pod", pod, "-n", namespace)["metadata"]
        assert going.get("deletionTimestamp") and going["finalizers"] == [FINALIZER]

        # --- the way out, typed as the condition gives it: the finalizer removed.
        command = re.search(r"kubectl (patch pod \S+ -n \S+ --type=json -p '[^']+')", message)
        assert command is not None, message
        kube_cluster.kubectl(*shlex.split(command.group(1)))
        ended = rollouts.wait(NAME, verified_end, 60)
        assert ended.phase == "Aborted"
        assert condition(ended, "CleanupVerified")["reason"] == "Verified"
        assert "blockedBy" not in ended.object["status"]["cleanup"]
        assert rollouts.phases(NAME)[-2:] == ["CleaningUp", "Aborted"]

    assert canary_pods(kube_cluster, namespace) == []
    wait_for(
        lambda: not lease(kube_cluster, namespace)["spec"].get("holderIdentity"),
        30,
        message="the Lease released",
    )
    reasons = [e["reason"] for e in events_of(kube_cluster, namespace, NAME)]
    assert reasons.count("CleanupBlocked") == 1, reasons
    assert {"CleanupUnblocked", "CleanupFinished", "LockReleased"} <= set(reasons), reasons
    wait_for(lambda: not blocked_gauge(scrape(base), namespace), 30, message="the gauge cleared")
