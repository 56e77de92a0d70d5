"""`kubectl canary undo` end to end (issue 25, item 3, for canaries).

A rollout promotes web 1.0 -> 2.0; the promotion keeps 1.0's pod template in the
rollback window on the target. `kubectl canary undo web` then creates an undo rollout,
which takes the target's lock and promotes 1.0's template back. To see a second
rollout of the same target wait behind it, the undo is held in its promote step: the
target gets `minReadySeconds: 3600` first, so on kwok its pods are ready but not
available and the promotion stays under way; a rollout of 3.0 applied then is Queued
behind the undo. Once `minReadySeconds` is lifted, the undo finishes (the plugin
exits 0), the target is read back on 1.0's template, the undo's outcome and Events
are there, and only then does the 3.0 rollout start. Nothing here waits by sleeping:
each wait polls for a state. Last, the 3.0 rollout is resumed and promotes as usual
over the undone target, keeping 1.0 in the window."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from e2e import manifests as m
from e2e.conftest import OperatorProcess, events_of, get_rollout, wait_phase
from e2e.identity import PLUGIN
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

OLD, NEW, NEXT = (f"registry.example.com/web:{v}" for v in ("1.0", "2.0", "3.0"))
CANARY = {"name": "start canary", "canary": {"replicas": 1}}
HOLD = {"name": "hold", "pause": {}}  # waits until resumed
PROMOTE: dict[str, Any] = {"promote": {}}
WINDOW = "canary-operator.dev/rollback-window"


def _target(cluster: Cluster, ns: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.get_json("deployment", "web", "-n", ns)
    return body


def _image(template: dict[str, Any]) -> str:
    return str(template["spec"]["containers"][0]["image"])


def _min_ready(cluster: Cluster, ns: str, seconds: int) -> None:
    patch = json.dumps(
        {"spec": {"minReadySeconds": seconds, "progressDeadlineSeconds": seconds + 600}}
    )
    cluster.kubectl("patch", "deployment", "web", "-n", ns, "--type=merge", "-p", patch)


def _undo_rollouts(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "cro", "-n", ns, "-l", "canary-operator.dev/undo=true"
    )["items"]
    return items


def test_undo_puts_the_previous_template_back_as_a_run_under_the_lock(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    kube_cluster.apply(m.app("web", image=OLD), ns)
    before = _target(kube_cluster, ns)["spec"]["template"]
    kube_cluster.apply(m.rollout("web-v2", [CANARY, PROMOTE], image=NEW), ns)
    wait_phase(kube_cluster, ns, "web-v2", "Succeeded", timeout=180)
    promoted = _target(kube_cluster, ns)
    assert _image(promoted["spec"]["template"]) == NEW
    [kept] = json.loads(promoted["metadata"]["annotations"][WINDOW])
    assert kept["template"] == before, "the promotion kept the template it replaced"

    _min_ready(kube_cluster, ns, 3600)  # the undo's promotion will stay under way
    undo = subprocess.Popen(
        [*PLUGIN, "-n", ns, "undo", "web", "--timeout", "5m"],
        env=kube_cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [created] = wait_for(
            lambda: _undo_rollouts(kube_cluster, ns), 60, interval=0.3, message="the undo rollout"
        )
        name = created["metadata"]["name"]

        def promoting() -> bool:
            status = get_rollout(kube_cluster, ns, name).get("status") or {}
            template = _target(kube_cluster, ns)["spec"]["template"]
            return status.get("phase") == "Progressing" and _image(template) == OLD

        wait_for(promoting, 120, interval=0.3, message=f"{name} promoting 1.0 back")

        # A rollout of the same target applied now waits behind the undo.
        kube_cluster.apply(m.rollout("web-v3", [CANARY, HOLD, PROMOTE], image=NEXT), ns)

        def queued_behind() -> dict[str, Any] | None:
            status: dict[str, Any] = get_rollout(kube_cluster, ns, "web-v3").get("status") or {}
            holder = (status.get("queue") or {}).get("holder")
            return status if status.get("phase") == "Queued" and holder == name else None

        waiting = wait_for(queued_behind, 60, interval=0.3, message="web-v3 queued behind")
        assert waiting is not None and waiting.get("startedAt") is None
        assert get_rollout(kube_cluster, ns, name)["status"]["phase"] == "Progressing"

        _min_ready(kube_cluster, ns, 0)  # the target's own rollout can finish now
        out, err = undo.communicate(timeout=300)
    finally:
        if undo.poll() is None:
            undo.kill()
            undo.communicate()
    assert undo.returncode == 0, out + err
    assert f"canaryrollout/{name} created: web back to revision 1 (web:1.0)" in out
    assert "undo of web: Succeeded" in out

    # The undo, recorded as a run of its own: outcome, steps, live version, Events.
    body = get_rollout(kube_cluster, ns, name)
    status = body["status"]
    assert status["outcome"]["result"] == "Succeeded", status["outcome"]
    assert status["steps"][0]["message"].startswith("undone: deployment web back on web:1.0")
    assert status["live"]["label"] == "web:1.0" and status["live"]["rollout"] == name
    reasons = [e["reason"] for e in events_of(kube_cluster, ns, name)]
    assert "UndoStarted" in reasons and "Undone" in reasons and "Succeeded" in reasons

    # Read back: the target runs 1.0's template (web-v3 holds at its pause step, which
    # never touches the template).
    def paused() -> dict[str, Any] | None:
        body = get_rollout(kube_cluster, ns, "web-v3")
        return body if (body.get("status") or {}).get("phase") == "Paused" else None

    next_run = wait_for(paused, 120, interval=0.3, message="web-v3 started after the undo")
    assert next_run is not None
    target = _target(kube_cluster, ns)
    assert target["spec"]["template"] == before
    annotations = target["metadata"]["annotations"]
    assert json.loads(annotations["canary-operator.dev/promotion"])["rollout"] == name
    # web-v3 started only once the undo had ended (its lock released).
    assert next_run["status"]["startedAt"] >= status["completedAt"]

    # A promotion after the undo goes as any other: web-v3 resumed promotes 3.0, and
    # keeps 1.0 (which it replaced) in the window.
    resumed = subprocess.run(
        [*PLUGIN, "-n", ns, "resume", "web-v3"],
        env=kube_cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    wait_phase(kube_cluster, ns, "web-v3", "Succeeded", timeout=180)
    target = _target(kube_cluster, ns)
    assert _image(target["spec"]["template"]) == NEXT
    [kept] = json.loads(target["metadata"]["annotations"][WINDOW])
    assert kept["template"] == before
