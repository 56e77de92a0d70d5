"""Blue-green end to end (issue 25 item 2) with the replicas router's switch, on a real
API server with a real kube-controller-manager (kwok nodes): the preview really rolls
out, the active Service's selector really moves.

Which pods a Service reaches is read as the API server does: the pods its selector
matches (`kubectl get pods -l`). What happened before what is read from watches of the
Services and the rollouts, in the order the API server committed it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import (
    REPO,
    OperatorProcess,
    canary_objects,
    get_rollout,
    stable_image,
    wait_phase,
)
from e2e.watch import Seen, Watch, verified_end
from tests.harness.cluster import Cluster, KubectlError, wait_for

pytestmark = pytest.mark.cluster

OLD = "registry.example.com/web:1.0"
NEW = "registry.example.com/web:2.0"
NEWER = "registry.example.com/web:3.0"
N = 3
ORIGINAL_SELECTOR = "canary-operator.dev/original-selector"
PREVIEW_LABELS = {"canary-operator.dev/target": "web", "canary-operator.dev/role": "canary"}


def blue_green(name: str, image: str, **strategy: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "canary-operator.dev/v1alpha1",
            "kind": "CanaryRollout",
            "metadata": {"name": name},
            "spec": {
                "target": {"deployment": "web", "service": "web"},
                "images": [{"container": "app", "image": image}],
                "strategy": {"blueGreen": {"previewService": "web-preview", **strategy}},
            },
        }
    )


def selector_of(cluster: Cluster, namespace: str, service: str) -> dict[str, str]:
    body = cluster.get_json("service", service, "-n", namespace)
    return dict(body["spec"].get("selector") or {})


def images_reached(cluster: Cluster, namespace: str, service: str) -> list[str]:
    """The image of every running pod the Service's selector matches (sorted)."""
    selector = ",".join(f"{k}={v}" for k, v in selector_of(cluster, namespace, service).items())
    pods = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return sorted(
        p["spec"]["containers"][0]["image"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    )


def steps_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["kind"], s["phase"]) for s in body["status"].get("steps") or []]


def switched(event: Seen) -> bool:
    return event.type != "DELETED" and event.object["spec"].get("selector") == PREVIEW_LABELS


def revision(event: Seen) -> int:
    return int(event.object["metadata"]["resourceVersion"])


def last_before(events: list[Seen], rev: int) -> Seen:
    before = [e for e in events if revision(e) <= rev]
    assert before, f"nothing before revision {rev}"
    return before[-1]


def objects_of(cluster: Cluster, namespace: str, rollout: str) -> list[str]:
    """What the operator made for one rollout (its label) that still exists."""
    return cluster.kubectl(
        "get", "deployments,services,pods", "-n", namespace,
        "-l", f"canary-operator.dev/rollout={rollout}", "-o", "name",
    ).stdout.split()  # fmt: skip


def start_app(cluster: Cluster, namespace: str) -> None:
    cluster.apply(m.app("web", replicas=N, image=OLD), namespace)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s",
                    timeout=130)  # fmt: skip


def test_the_operator_runs_this_checkout(kube_cluster: Cluster) -> None:
    """The operator processes import the package of this repository (the environment,
    PYTHONPATH included, goes through to them: conftest.OperatorProcess)."""
    out = subprocess.run(
        [sys.executable, "-c", "import canary_operator; print(canary_operator.__file__)"],
        env=kube_cluster.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(str(REPO / "operator")), out


def test_blue_green_switches_promotes_and_a_second_one_waits_then_switches_back(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster = kube_cluster
    start_app(cluster, namespace)
    with (
        Watch(cluster, namespace, "services") as services,
        Watch(cluster, namespace, "canaryrollouts") as rollouts,
    ):
        # 1. A blue-green held before its switch (no auto promotion).
        cluster.apply(
            blue_green(
                "bg-1",
                NEW,
                autoPromotionEnabled=False,
                afterSwitch=[{"name": "hold", "pause": {}}, m.job_test("after-ok")],
                scaleDownDelaySeconds=3,
            ),
            namespace,
        )
        held = wait_phase(cluster, namespace, "bg-1", "Paused", timeout=120)
        assert steps_of(held)[:2] == [("preview", "Succeeded"), ("pause", "Running")]
        # The preview at full size; the active Service reaches only the stable's pods,
        # the preview Service only the preview's.
        preview = cluster.get_json("deployment", "web-canary", "-n", namespace)
        assert preview["status"].get("readyReplicas") == N
        assert images_reached(cluster, namespace, "web") == [OLD] * N
        assert images_reached(cluster, namespace, "web-preview") == [NEW] * N
        assert selector_of(cluster, namespace, "web-preview") == PREVIEW_LABELS

        # 2. A second blue-green of the same target waits for the first's lock. (Held
        # before its own switch once it runs, so that the first's end can be read.)
        cluster.apply(
            blue_green(
                "bg-2",
                NEWER,
                beforeSwitch=[{"name": "hold", "pause": {}}],
                afterSwitch=[m.job_test("after", fail=True)],
            ),
            namespace,
        )
        wait_phase(cluster, namespace, "bg-2", "Queued", timeout=60)

        # 3. Resumed: the switch, the steps after it, the promotion, the preview gone.
        run = held["status"]["run"]
        cluster.kubectl("annotate", "cro", "bg-1", "-n", namespace,
                        f"canary-operator.dev/resume=2@{run}", "--overwrite")  # fmt: skip
        first_switch = services.wait("web", switched, timeout=120)
        assert (first_switch.object["metadata"].get("annotations") or {}).get(ORIGINAL_SELECTOR)
        # Held after the switch: all the active Service's traffic on the new version,
        # the target untouched (the previous version up for a switch back).
        paused = wait_phase(cluster, namespace, "bg-1", "Paused", timeout=60)
        assert steps_of(paused)[2:4] == [("switch", "Succeeded"), ("pause", "Running")]
        assert selector_of(cluster, namespace, "web") == PREVIEW_LABELS
        assert images_reached(cluster, namespace, "web") == [NEW] * N
        assert stable_image(cluster, namespace) == OLD
        target = cluster.get_json("deployment", "web", "-n", namespace)
        assert target["status"].get("readyReplicas") == N
        cluster.kubectl("annotate", "cro", "bg-1", "-n", namespace,
                        f"canary-operator.dev/resume=4@{run}", "--overwrite")  # fmt: skip
        done = wait_phase(cluster, namespace, "bg-1", {"Succeeded", "Failed"}, timeout=180)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        kinds = [k for k, _ in steps_of(done)]
        assert kinds == ["preview", "pause", "switch", "pause", "test", "promote"]
        assert stable_image(cluster, namespace) == NEW
        # The Service as the first's verified cleanup left it (one etcd: the
        # resourceVersions of both kinds are its revisions).
        ended = rollouts.wait("bg-1", verified_end, timeout=30)
        active = last_before(services.of("web"), revision(ended))
        assert active.object["spec"]["selector"] == {"app": "web"}
        assert ORIGINAL_SELECTOR not in (active.object["metadata"].get("annotations") or {})
        assert objects_of(cluster, namespace, "bg-1") == []

        # 4. The second starts only once the first's cleanup is verified; held before
        # its switch, the Service reaches the promoted target's pods only.
        started = rollouts.wait("bg-2", lambda e: e.phase in ("Progressing", "Paused"), 60)
        assert started.index > ended.index
        wait_phase(cluster, namespace, "bg-2", "Paused", timeout=120)
        assert selector_of(cluster, namespace, "web") == {"app": "web"}
        wait_for(
            lambda: images_reached(cluster, namespace, "web") == [NEW] * N,
            60,
            message="the active Service to reach only the promoted target's pods",
        )
        assert images_reached(cluster, namespace, "web-preview") == [NEWER] * N

        # 5. Its step after the switch fails: traffic back on the target (still 2.0),
        # nothing of its preview left.
        run2 = get_rollout(cluster, namespace, "bg-2")["status"]["run"]
        cluster.kubectl("annotate", "cro", "bg-2", "-n", namespace,
                        f"canary-operator.dev/resume=2@{run2}", "--overwrite")  # fmt: skip
        failed = wait_phase(cluster, namespace, "bg-2", {"Failed", "Succeeded"}, timeout=180)
        assert failed["status"]["phase"] == "Failed", failed["status"]
        assert failed["status"]["outcome"]["result"] == "StepFailed"
        assert failed["status"]["outcome"]["failedStep"] == 4  # the step after the switch
        second = [e for e in services.of("web") if revision(e) > revision(started)]
        on = next(i for i, e in enumerate(second) if switched(e))
        back = second[on + 1 :]
        assert any(e.object["spec"].get("selector") == {"app": "web"} for e in back)
        assert stable_image(cluster, namespace) == NEW
        assert selector_of(cluster, namespace, "web") == {"app": "web"}
        assert images_reached(cluster, namespace, "web") == [NEW] * N
        assert canary_objects(cluster, namespace) == []
        conditions = {c["type"]: c["status"] for c in failed["status"]["conditions"]}
        assert conditions.get("CleanupVerified") == "True"


BAD = [
    ({"steps": [{"promote": {}}]}, "spec.steps"),
    ({"target": {"deployment": "web"}}, "spec.target.service"),
    ({"trafficRouting": {"gatewayAPI": {"httpRoute": "web"}}}, "spec.strategy.blueGreen"),
    ({"bg": {"beforeSwitch": [{"setWeight": 10}]}}, "spec.strategy.blueGreen.beforeSwitch"),
    ({"bg": {"afterSwitch": [{"promote": {}}]}}, "spec.strategy.blueGreen.afterSwitch"),
    ({"bg": {"scaleDownDelaySeconds": -1}}, "spec.strategy.blueGreen.scaleDownDelaySeconds"),
    ({"bg": {"beforeSwitch": [{"name": "switch", "pause": {}}]}}, "spec.strategy.blueGreen"),
    (
        {
            "bg": {
                "beforeSwitch": [{"name": "a", "pause": {}}],
                "afterSwitch": [{"name": "a", "pause": {}}],
            }
        },
        "spec.strategy.blueGreen.afterSwitch",
    ),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f"{n}-{f}" for n, (_, f) in enumerate(BAD)])
def test_a_wrong_blue_green_is_refused_at_apply_naming_the_field(
    crd_installed: Cluster, namespace: str, change: dict[str, Any], field: str
) -> None:
    spec: dict[str, Any] = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": NEW}],
        "strategy": {"blueGreen": change.pop("bg", {})},
        **change,
    }
    body = {
        "apiVersion": "canary-operator.dev/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(KubectlError) as err:
        crd_installed.apply(yaml.safe_dump(body), namespace)
    assert field in str(err.value), str(err.value)
    assert crd_installed.kubectl("get", "cro", "-n", namespace, "-o", "name").stdout.strip() == ""
