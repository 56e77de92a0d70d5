"""Ended history for bench_scale.py, made honestly and cheaply (not measured).

canary-operator: every target gets its Deployment and Service (0 replicas: no pods);
`sample` rollouts (one per target, the first targets) run for real, in waves, to
Succeeded. Every other ended rollout is created by the benchmark and its status is
written through the status subresource as an ended run: the real sample's first status,
with the rollout's own name, uid, target and image put in, `fingerprint` from the
product's `CanaryRolloutSpec.run_fingerprint()` of its own spec, `observedGeneration`
its generation, `versionSince` its creationTimestamp, `live` what the operator's
`record_live` shows for its target (the real run's promotion, or none for a target no
real run promoted), validated by the product's `CanaryRolloutStatus` model; the real
template's times are kept. The operator then makes one pass over them all (not
measured): what it still rewrites is printed (how far the seed was from its own form).

Argo Rollouts keeps one Rollout per target and its history as ReplicaSets (revisions;
revisionHistoryLimit 10 by default): the benchmark creates each Rollout (0 replicas)
and `revisions - 1` old ReplicaSets of it, at 0 replicas, owned by the Rollout, with
the labels and revision annotation Argo writes (rollouts-pod-template-hash; an
invented hash); Argo then creates each Rollout's current ReplicaSet itself (in a pass
with its client limits raised; the measured restart runs with its defaults).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.peer_argo import ArgoRollouts
from bench.peer_canary import CanaryOperator
from bench.peer_cluster import NEW, OLD, parallel
from bench.peer_controller import Controller
from bench.peer_workloads import IDLE_WAVE, settle

from canary_operator.api.models import CanaryRolloutSpec, CanaryRolloutStatus, dump_status
from tests.harness.cluster import wait_for

WAVE_LABEL = "bench-scale/wave"  # on the rollouts (Argo: Rollouts) of the active wave
CHUNK = 200
ARGO_BULK_ARGS = ("--qps", "400", "--burst", "800")


def image(slot: int) -> str:
    return f"{NEW}-h{slot:03d}"


def chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def kubectl_lists(ctl: Controller, verb: list[str], items: list[dict[str, Any]]) -> None:
    """`kubectl VERB -f -` of the items, 200 a List, 4 Lists at once."""

    def send(part: list[dict[str, Any]]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": part})
        ctl.cluster.kubectl(*verb, "-n", ctl.namespace, "-f", "-", input=body, timeout=900)

    parallel([lambda p=part: send(p) for part in chunks(items)], 4)


def ours_body(ctl: CanaryOperator, name: str, target: str, img: str) -> dict[str, Any]:
    """A rollout of `target` to `img` with one step, the promotion (no canary pods)."""
    body = ctl.rollout_body(name, steps=False)
    body["spec"]["target"] = {"deployment": target, "service": target}
    body["spec"]["images"] = [{"container": "app", "image": img}]
    return body


@dataclass
class Seeded:
    seconds: float  # all of the preparation
    real: int  # rollouts run for real
    written: int  # rollouts created with an ended status written by the benchmark
    first_pass_requests: float  # the operator's pass over them (not measured)
    revisions: int = 0  # Argo: ReplicaSets per Rollout after seeding


def seed_ours(
    ctl: CanaryOperator, targets: list[str], per_target: int, wave: int, sample: int
) -> Seeded:
    """`per_target` ended rollouts per target, except the first `wave` targets, which get
    one fewer (their next rollout is the active wave's): names TARGET-hNNN."""
    started = time.monotonic()
    ctl.create_version_one(targets, replicas=0)
    real = [(f"{t}-h000", t) for t in targets[:sample]]
    with ctl.running(ctl.bulk_args):
        for part in chunks(real, IDLE_WAVE):
            bodies = [ours_body(ctl, n, t, image(0)) for n, t in part]
            kubectl_lists(ctl, ["create"], bodies)
            ctl.wait_all_done([n for n, _ in part], timeout=600 + 6 * len(part))
    done = {o["metadata"]["name"]: o for o in ctl.list_objects()}
    template = done[real[0][0]]
    lives = {t: done[n]["status"].get("live") for n, t in real}
    rest = [
        (f"{t}-h{h:03d}", t, h)
        for i, t in enumerate(targets)
        for h in range(per_target - (1 if i < wave else 0))
        if not (h == 0 and i < sample)
    ]
    kubectl_lists(ctl, ["create"], [ours_body(ctl, n, t, image(h)) for n, t, h in rest])
    made = {o["metadata"]["name"]: o for o in ctl.list_objects()}
    statuses = []
    for name, target, slot in rest:
        obj = made[name]
        obj["status"] = ended_status(template, obj, target, image(slot), lives.get(target))
        statuses.append(obj)
    kubectl_lists(ctl, ["replace", "--subresource=status"], statuses)
    before = ctl.counters()
    with ctl.running(ctl.bulk_args):  # its own pass over the seeded rollouts
        after = settle(ctl, quiet=5.0, timeout=600 + len(rest) / 10)
    return Seeded(
        time.monotonic() - started, len(real), len(rest), after.requests - before.requests
    )


def ended_status(
    template: dict[str, Any], obj: dict[str, Any], target: str, img: str, live: Any
) -> dict[str, Any]:
    """The template's (a real run's) ended status, made this rollout's (see the module's
    docstring), through the product's own status model."""
    meta, tmeta = obj["metadata"], template["metadata"]
    text = json.dumps(template["status"])
    for old, new in (
        (tmeta["name"], meta["name"]),
        (tmeta["uid"], meta["uid"]),
        (template["spec"]["images"][0]["image"], img),
        (template["spec"]["target"]["deployment"], target),
    ):
        text = text.replace(old, new)
    status = json.loads(text)
    status["fingerprint"] = CanaryRolloutSpec.model_validate(obj["spec"]).run_fingerprint()
    status["observedGeneration"] = meta["generation"]
    status["versionSince"] = meta["creationTimestamp"]
    status["run"] = 1
    if live:
        status["live"] = {**copy.deepcopy(live), "thisRollout": False}
    else:
        status.pop("live", None)
    return dump_status(CanaryRolloutStatus.model_validate(status))


def seed_argo(ctl: ArgoRollouts, targets: list[str], revisions: int, wave: int) -> Seeded:
    """One Rollout per target (0 replicas, no steps) with `revisions - 1` old
    ReplicaSets made by the benchmark; Argo makes the current one."""
    started = time.monotonic()
    bodies = []
    for i, t in enumerate(targets):
        body = ctl.rollout_body(t, 0, OLD, steps=False)
        if i < wave:
            body["metadata"]["labels"] = {WAVE_LABEL: "1"}
        bodies.append(body)
    kubectl_lists(ctl, ["create"], bodies)
    uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in ctl.list_objects()}
    old = [old_replica_set(t, uids[t], r) for t in targets for r in range(1, revisions)]
    kubectl_lists(ctl, ["create"], old)
    before = ctl.counters()
    # Not measured: above its default client limits (--qps 40 --burst 80), which would
    # make its first pass over 1,000 Rollouts and 9,000 ReplicaSets take minutes.
    with ctl.running(ARGO_BULK_ARGS):
        healthy: dict[str, bool] = {}

        def settled() -> bool:
            for o in ctl.list_objects():
                if ctl._settled(o):
                    healthy[o["metadata"]["name"]] = True
            return len(healthy) >= len(targets)

        wait_for(settled, timeout=900 + len(targets), interval=3.0, message="Argo: Healthy")
        after = settle(ctl, quiet=5.0, timeout=600)
    count = len(ctl.cluster.get_json("replicasets", "-n", ctl.namespace, timeout=300)["items"])
    return Seeded(
        time.monotonic() - started,
        0,
        len(old),
        after.requests - before.requests,
        revisions=round(count / len(targets)),
    )


def old_replica_set(rollout: str, uid: str, revision: int) -> dict[str, Any]:
    pod_hash = f"seed{revision:06d}"
    labels = {"app": rollout, "rollouts-pod-template-hash": pod_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{rollout}-{pod_hash}",
            "labels": labels,
            "annotations": {"rollout.argoproj.io/revision": str(revision)},
            "ownerReferences": [
                {
                    "apiVersion": "argoproj.io/v1alpha1",
                    "kind": "Rollout",
                    "name": rollout,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": f"{OLD}-r{revision}"}]},
            },
        },
    }
