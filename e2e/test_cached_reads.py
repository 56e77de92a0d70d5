"""Reads come from watch-fed caches: with warm caches, a reconcile of a running (or
waiting, or ended) rollout asks the API server nothing; only its writes, and the
documented fresh reads (fencing before a write to the target, except the first after
the lock was taken in the same reconcile, which the acquisition confirms; the takeover check,
cleanup verification, promotion, the target read before a run starts), go out.

Requests are counted by the operator's client (`canary_operator_api_requests_total`,
every request of the operator's own client, by verb and resource); kopf's watch of
the rollouts is the only traffic outside it. The counter is first shown to count
(the fencing reads and list+watch of the start), then shown not to move on reconciles.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from e2e import manifests as m
from e2e.conftest import OperatorProcess, get_rollout, serving_operator, wait_phase
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

CANARY = {"name": "start canary", "canary": {"replicas": 1}}
WEIGHT = {"setWeight": 50}
HOLD = {"name": "hold", "pause": {}}
PROMOTE = {"promote": {}}

SERIES = re.compile(r"^canary_operator_api_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)
RECONCILES = re.compile(
    r'^canary_operator_reconcile_duration_seconds_count\{result="ok"\} ([0-9.e+]+)$', re.M
)


def scrape(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        return str(response.read().decode())


def requests_by_code(text: str) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for labels, value in SERIES.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counts[(fields["verb"], fields["resource"], fields["code"])] += int(float(value))
    return counts


def requests_by_verb(text: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for (verb, resource, _), value in requests_by_code(text).items():
        counts[(verb, resource)] += value
    return counts


def reconciles(text: str) -> int:
    found = RECONCILES.search(text)
    return int(float(found.group(1))) if found else 0


def reads(counts: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    return Counter({k: v for k, v in counts.items() if k[0] in ("get", "list")})


def poke_and_wait(
    cluster: Cluster, base: str, namespace: str, kind: str, name: str, n: int
) -> None:
    """Change an annotation (an event the operator reconciles on) and wait until a
    reconcile has run after it."""
    before = reconciles(scrape(base))
    cluster.kubectl(
        "annotate", kind, name, f"e2e.canary-operator.dev/poke={n}", "--overwrite", "-n", namespace
    )
    wait_for(
        lambda: reconciles(scrape(base)) > before,
        30,
        message=f"a reconcile after poke {n} of {kind}/{name}",
    )


def test_warm_reconciles_of_a_running_and_a_waiting_rollout_read_nothing(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    kube_cluster.apply(m.app(), namespace)
    base = serving_operator(kube_cluster, namespace, operators, tmp_path / "op.log")
    # The weight step writes to the target after the run's start: a fenced write.
    kube_cluster.apply(m.rollout("web-v001", [CANARY, WEIGHT, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    kube_cluster.apply(m.rollout("web-v002", [CANARY, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v002", "Queued")

    start = requests_by_verb(scrape(base))
    # The counter counts: the caches listed and watched, and the run's write to the
    # target after its start was fenced by a fresh read of its Lease.
    assert start[("list", "deployments")] >= 1 and start[("watch", "deployments")] >= 1
    assert start[("get", "leases")] >= 1, start

    # Events the operator reconciles on: the rollouts themselves and their target.
    for n in range(4):
        poke_and_wait(kube_cluster, base, namespace, "cro", "web-v001", n)
        poke_and_wait(kube_cluster, base, namespace, "cro", "web-v002", n)
        poke_and_wait(kube_cluster, base, namespace, "deployment", "web", n)
    after = requests_by_verb(scrape(base))
    assert reads(after) == reads(start), f"reads during warm reconciles: {reads(after - start)}"
    # Nothing changed, so nothing was written either, apart from the holder's Lease
    # renewals, which run on their own schedule (every 5 s), not in reconciles.
    renewals = ("update", "leases")
    written = after - start
    written.pop(renewals, None)
    assert written == Counter(), f"requests during warm reconciles: {written}"
    # And the rollouts are still where they were.
    assert get_rollout(kube_cluster, namespace, "web-v001")["status"]["phase"] == "Paused"
    assert get_rollout(kube_cluster, namespace, "web-v002")["status"]["phase"] == "Queued"


def test_a_restart_with_ended_rollouts_only_lists_and_watches(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    ended = [f"ghost-{i}" for i in range(8)]
    first = serving_operator(kube_cluster, namespace, operators, tmp_path / "op1.log")
    for name in ended:  # targets that do not exist: each ends Failed at once
        kube_cluster.apply(
            m.rollout(name, [CANARY], target=f"nope-{name}", service=None), namespace
        )
    for name in ended:
        assert wait_phase(kube_cluster, namespace, name, "Failed", timeout=60)
    assert reconciles(scrape(first)) > 0
    operators.pop().stop()

    base = serving_operator(kube_cluster, namespace, operators, tmp_path / "op2.log")
    for n, name in enumerate(ended[:3]):
        poke_and_wait(kube_cluster, base, namespace, "cro", name, n)
    wait_for(
        lambda: reconciles(scrape(base)) >= len(ended),
        30,
        message="every ended rollout reconciled after the restart",
    )
    counts = requests_by_verb(scrape(base))
    informers = 6  # deployments, services, pods, jobs, leases, httproutes
    assert sum(v for (verb, _), v in counts.items() if verb == "list") <= informers, counts
    assert sum(v for (verb, _), v in counts.items() if verb == "get") == 0, counts
    writes = {k: v for k, v in counts.items() if k[0] not in ("get", "list", "watch")}
    assert writes == {}, f"writes for rollouts that had ended: {writes}"


def test_a_run_that_finds_its_lock_free_reads_its_target_once_and_not_itself(
    kube_cluster: Cluster, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    """The spec's checks read the target fresh; the Lease stood free at one version from
    before that read until the run took it, so the start plans from that read instead of
    reading the target again. The finalizer, written conditional on the version of the
    rollout read, shows that version current for taking the lock; the start reads the
    rollout once more, on purpose (another process acting on the same run may have
    started it: reconcile/decide.py)."""
    kube_cluster.apply(m.app(), namespace)
    base = serving_operator(kube_cluster, namespace, operators, tmp_path / "op.log")
    kube_cluster.apply(m.rollout("web-v001", [CANARY, HOLD, PROMOTE]), namespace)
    wait_phase(kube_cluster, namespace, "web-v001", "Paused")
    counts = requests_by_code(scrape(base))
    assert counts[("get", "deployments", "200")] == 1, counts  # the target, once
    assert counts[("get", "canaryrollouts", "200")] == 1, counts  # at the run's start
    assert counts[("patch", "canaryrollouts", "200")] == 1, counts  # the finalizer
    body = get_rollout(kube_cluster, namespace, "web-v001")
    assert "canary-operator.dev/cleanup" in body["metadata"]["finalizers"]
    assert body["status"]["lock"]["token"] == 1
