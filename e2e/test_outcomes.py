"""Outcomes people can trust (issue 10), end to end on the local cluster: promotion
that a later apply cannot silently undo, retries that never downgrade the target, and
cleanup steps that cannot hold a target hostage (with URLs that never leak).

Real control plane, the operator as a separate process, `kubectl` and `kubectl canary`
as users type them, a chat-like endpoint on loopback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from e2e import manifests as m
from e2e.conftest import (
    OperatorProcess,
    canary_objects,
    events_of,
    get_rollout,
    lease,
    stable_image,
    wait_phase,
)
from e2e.identity import PLUGIN, run_cli
from e2e.slow_http import SlowEndpoints
from tests.harness import argocd_diff
from tests.harness.cluster import Cluster, KubectlError, wait_for

pytestmark = pytest.mark.cluster

OLD, NEW = "registry.example.com/web:1.0", "registry.example.com/web:2.0"
V3, V4 = "registry.example.com/web:3.0", "registry.example.com/web:4.0"
CANARY = {"canary": {"replicas": 1}}
PROMOTE = {"promote": {}}
HOLD = {"name": "hold", "pause": {}}
IMAGE_FIELD = '.spec.template.spec.containers[name="app"].image'


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    raise AssertionError(f"no condition {type_} in {body.get('status')}")


def managers(obj: dict[str, Any]) -> set[str]:
    return {e["manager"] for e in obj["metadata"].get("managedFields") or []}


def owns_image(obj: dict[str, Any], manager: str, container: str = "app") -> bool:
    for entry in obj["metadata"].get("managedFields") or []:
        if entry["manager"] != manager:
            continue
        containers = (
            entry.get("fieldsV1", {})
            .get("f:spec", {})
            .get("f:template", {})
            .get("f:spec", {})
            .get("f:containers", {})
        )
        if "f:image" in containers.get(f'k:{{"name":"{container}"}}', {}):
            return True
    return False


def plugin(cluster: Cluster, ns: str, *args: str) -> str:
    result = run_cli(PLUGIN, cluster, "-n", ns, *args)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def cro_table(cluster: Cluster, ns: str) -> dict[str, dict[str, str]]:
    """`kubectl get cro` as a user reads it: by column (cells may be empty)."""
    lines = cluster.kubectl("get", "cro", "-n", ns).stdout.rstrip().splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    rows = {}
    for line in lines[1:]:
        cells = [
            line[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, start in enumerate(starts)
        ]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows


# ------------------------------------------------------------ must show 1: GitOps


def test_promotion_is_owned_by_the_operator_and_an_older_apply_meets_a_conflict(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    original = m.app(image=OLD)  # the manifest in Git / the pipeline
    kube_cluster.apply(original, namespace)  # client-side, as a new user does
    kube_cluster.apply(m.rollout("web-v2", [CANARY, PROMOTE], image=NEW), namespace)
    body = wait_phase(kube_cluster, namespace, "web-v2", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded", body["status"]
    target = kube_cluster.get_json("deployment", "web", "-n", namespace, "--show-managed-fields")
    assert stable_image(kube_cluster, namespace) == NEW
    # Promotion went through server-side apply by the operator's own manager, which
    # owns the image it changed and nothing it did not change.
    assert owns_image(target, "canary-operator"), target["metadata"]["managedFields"]
    entry = next(
        e
        for e in target["metadata"]["managedFields"]
        if e["manager"] == "canary-operator" and e["operation"] == "Apply"
    )
    owned_template = entry["fieldsV1"]["f:spec"]["f:template"]
    assert set(owned_template) == {"f:spec"} and set(owned_template["f:spec"]) == {"f:containers"}
    assert set(owned_template["f:spec"]["f:containers"]['k:{"name":"app"}']) <= {
        ".",
        "f:name",
        "f:image",
    }
    assert "f:ports" not in json.dumps(entry["fieldsV1"])
    # No write of the operator is attributed to the client library's default manager.
    rollout = kube_cluster.get_json("cro", "web-v2", "-n", namespace, "--show-managed-fields")
    for obj in (target, rollout):
        assert "OpenAPI-Generator" not in managers(obj), obj["metadata"]["managedFields"]
    assert "canary-operator" in managers(rollout)
    events = kube_cluster.get_json("events", "-n", namespace, "--show-managed-fields")["items"]
    assert events and all("OpenAPI-Generator" not in managers(e) for e in events)
    # The promotion record names the rollout, run and version.
    record = json.loads(target["metadata"]["annotations"]["canary-operator.dev/promotion"])
    assert (record["rollout"], record["run"], record["images"]) == ("web-v2", 1, {"app": NEW})

    # Must show 1: re-applying the original manifest (server-side) is refused with a
    # field-ownership conflict on the image, and the promoted image stays.
    reapply = kube_cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", input=original, check=False
    )
    assert reapply.returncode != 0, reapply.stdout
    assert "conflict" in reapply.stderr.lower(), reapply.stderr
    assert "canary-operator" in reapply.stderr and IMAGE_FIELD in reapply.stderr, reapply.stderr
    assert stable_image(kube_cluster, namespace) == NEW

    # Argo CD (its own diff rules, tests/harness/argocd_diff.py), Git still saying 1.0:
    live = kube_cluster.get_json("deployment", "web", "-n", namespace, "--show-managed-fields")
    git = next(d for d in yaml.safe_load_all(original) if d["kind"] == "Deployment")
    git["metadata"]["namespace"] = namespace
    assert argocd_diff.config_differences(git, live) == [".spec.template.spec.containers[0].image"]
    # managedFieldsManagers alone does not cover a container image: Argo CD compares
    # lists atomically and cannot remove a field inside one (argoproj/argo-cd#9696).
    live_n, git_n = argocd_diff.managed_fields_normalize(live, git, ["canary-operator"])
    assert argocd_diff.config_differences(git_n, live_n) != []
    # The documented recipe (docs/gitops.md): a jq path expression for the promoted
    # image, with RespectIgnoreDifferences=true so a sync keeps the live value.
    recipe = ['.spec.template.spec.containers[] | select(.name == "app").image']
    live_j, git_j = (argocd_diff.jq_normalize(o, recipe) for o in (live, git))
    assert argocd_diff.config_differences(git_j, live_j) == []
    # ...and it ignores only the image: a real change in Git still shows.
    changed = json.loads(json.dumps(git))
    changed["spec"]["replicas"] = 5
    assert argocd_diff.config_differences(argocd_diff.jq_normalize(changed, recipe), live_j) == [
        ".spec.replicas"
    ]


def test_a_client_side_apply_that_reverts_the_promotion_shows_as_drift(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Client-side `kubectl apply` sends a patch, not an apply: no conflict can arise
    (the limit docs/gitops.md states). The revert is not silent any more: the target's
    promotion record survives it, and status.live / the LIVE column say it drifted."""
    original = m.app(image=OLD)
    kube_cluster.apply(original, namespace)
    kube_cluster.apply(m.rollout("web-v2", [CANARY, PROMOTE], image=NEW), namespace)
    assert (
        wait_phase(kube_cluster, namespace, "web-v2", {"Succeeded", "Failed"})["status"]["phase"]
        == "Succeeded"
    )
    assert cro_table(kube_cluster, namespace)["web-v2"]["LIVE"] == "web:2.0"
    kube_cluster.apply(original, namespace)  # client-side: reverts the image
    assert stable_image(kube_cluster, namespace) == OLD

    def drifted() -> dict[str, Any] | None:
        live = get_rollout(kube_cluster, namespace, "web-v2")["status"].get("live") or {}
        return live if live.get("drifted") else None

    live = wait_for(drifted, 60, interval=0.3, message="status.live.drifted")
    assert live["drifted"] == f"app={OLD}" and live["version"] == f"app={NEW}"
    assert "DRIFTED" in plugin(kube_cluster, namespace, "status", "web-v2")


# ------------------------------------------------ must show 2: no downgrade by retry


def test_an_older_rollout_retried_while_a_newer_one_runs_is_refused(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(image=OLD), namespace)
    # The older rollout (3.0) ran first and failed.
    kube_cluster.apply(
        m.rollout("web-a", [CANARY, m.job_test("broken", fail=True), PROMOTE], image=V3),
        namespace,
    )
    assert (
        wait_phase(kube_cluster, namespace, "web-a", {"Failed", "Succeeded"})["status"]["phase"]
        == "Failed"
    )
    # A newer one (4.0) is created and holds at a pause.
    kube_cluster.apply(m.rollout("web-b", [CANARY, HOLD, PROMOTE], image=V4), namespace)
    wait_for(
        lambda: (
            (get_rollout(kube_cluster, namespace, "web-b").get("status") or {}).get("phase")
            == "Paused"
        ),
        90,
        interval=0.3,
        message="web-b at its pause",
    )
    # The older one is retried while the newer one runs: it queues behind it.
    plugin(kube_cluster, namespace, "retry", "web-a")
    wait_for(
        lambda: (
            (get_rollout(kube_cluster, namespace, "web-a").get("status") or {}).get("run") == 2
            and get_rollout(kube_cluster, namespace, "web-a")["status"]["phase"] == "Queued"
        ),
        60,
        interval=0.3,
        message="web-a run 2 queued",
    )
    plugin(kube_cluster, namespace, "resume", "web-b")
    assert (
        wait_phase(kube_cluster, namespace, "web-b", {"Succeeded", "Failed"})["status"]["phase"]
        == "Succeeded"
    )
    a = wait_phase(kube_cluster, namespace, "web-a", {"Superseded", "Succeeded", "Failed"})
    status = a["status"]
    assert status["phase"] == "Superseded", status
    assert status["outcome"]["result"] == "OlderThanLive"
    message = status["outcome"]["message"]
    assert f"app={V4}" in message and "web-b run 1" in message and "--allow-older" in message
    assert condition(a, "Failed")["reason"] == "OlderThanLive"
    assert status.get("startedAt") is None and not status.get("steps"), "run 2 never started"
    # The target keeps the newer version, nothing of web-a's run 2 is left, lock free.
    assert stable_image(kube_cluster, namespace) == V4
    assert canary_objects(kube_cluster, namespace) == []
    assert not lease(kube_cluster, namespace)["spec"].get("holderIdentity")
    # Every view says what is live.
    table = cro_table(kube_cluster, namespace)
    assert table["web-a"]["LIVE"] == "web:4.0" and table["web-b"]["LIVE"] == "web:4.0"
    screen = plugin(kube_cluster, namespace, "status", "web-a")
    assert f"Live:        app={V4}  promoted by web-b run 1" in screen, screen
    assert "web:4.0" in plugin(kube_cluster, namespace, "list")
    # Asked explicitly, the older version does roll out.
    plugin(kube_cluster, namespace, "retry", "web-a", "--allow-older")
    wait_for(
        lambda: get_rollout(kube_cluster, namespace, "web-a")["status"].get("run") == 3,
        60,
        interval=0.3,
        message="web-a run 3",
    )
    body = wait_phase(kube_cluster, namespace, "web-a", {"Succeeded", "Failed", "Superseded"}, 180)
    # The failing test still fails run 3: what matters is that it ran (was not refused).
    assert body["status"]["outcome"]["result"] == "StepFailed", body["status"]
    assert body["status"]["steps"][0]["phase"] == "Succeeded"
    assert stable_image(kube_cluster, namespace) == V4


# ------------------------------------- must show 4: best-effort cleanup, redaction


TOKEN = "xoxb7Q2m9TkR4vW8zL1pN6sJ"


def test_a_best_effort_cleanup_webhook_that_fails_does_not_hold_the_target(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(image=OLD), namespace)
    with SlowEndpoints() as endpoints:
        url = endpoints.url(f"status/400/services/T0A1B2C3D/B0E4F5G6H/{TOKEN}?token={TOKEN}")
        notify = {
            "name": "notify",
            "required": False,
            "webhook": {
                "url": url,
                "retries": 0,
                "body": '{"text": "{{rollout}} run {{run}}: {{outcome}} ({{message}})"}',
            },
        }
        kube_cluster.apply(m.rollout("web-a", [CANARY, HOLD], cleanup=[notify]), namespace)
        wait_for(
            lambda: (
                (get_rollout(kube_cluster, namespace, "web-a").get("status") or {}).get("phase")
                == "Paused"
            ),
            90,
            interval=0.3,
            message="web-a paused",
        )
        kube_cluster.apply(m.rollout("web-b", [CANARY], image=V3), namespace)
        wait_for(
            lambda: (
                (get_rollout(kube_cluster, namespace, "web-b").get("status") or {}).get("phase")
                == "Queued"
            ),
            60,
            interval=0.3,
            message="web-b queued",
        )
        plugin(kube_cluster, namespace, "resume", "web-a")
        a = wait_phase(kube_cluster, namespace, "web-a", {"Succeeded", "Failed"})
        b = wait_phase(kube_cluster, namespace, "web-b", {"Succeeded", "Failed"}, 120)
        calls = endpoints.calls_to("status/400")
    # The run ends as it would have, cleanup verified; the failure is recorded.
    assert a["status"]["phase"] == "Succeeded"
    verified = condition(a, "CleanupVerified")
    assert verified["status"] == "True" and "notify" in verified["message"]
    failed = a["status"]["cleanup"]["failedSteps"]
    assert [(f["step"], f["name"]) for f in failed] == [(1, "notify")]
    assert "HTTP 400" in failed[0]["message"]
    warnings = [
        e for e in events_of(kube_cluster, namespace, "web-a") if e["reason"] == "CleanupStepFailed"
    ]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert warnings[0].get("count", 1) == 1 and "notify" in warnings[0]["message"]
    # The lock went on to the next rollout, which ran.
    assert b["status"]["phase"] == "Succeeded"
    assert not lease(kube_cluster, namespace)["spec"].get("holderIdentity")
    # The endpoint got the body template, rendered (valid JSON).
    assert len(calls) == 1
    sent = json.loads(calls[0].body)
    assert sent["text"].startswith("web-a run 1: Succeeded (")
    # The token is nowhere but in the spec the user wrote.
    statuses = json.dumps([get_rollout(kube_cluster, namespace, n)["status"] for n in ("web-a",)])
    assert "***" in json.dumps(failed)
    events = json.dumps(kube_cluster.get_json("events", "-n", namespace))
    for where, text in (("status", statuses), ("events", events), ("log", operator.log())):
        assert TOKEN not in text, f"token in the {where}"


def test_a_required_cleanup_webhook_still_blocks_and_its_retries_are_one_event(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(m.app(image=OLD), namespace)
    with SlowEndpoints() as endpoints:
        # The URL comes from a Secret (urlFrom): the rollout holds no token at all.
        url = endpoints.url(f"status/400/hooks/{TOKEN}")
        kube_cluster.kubectl(
            "create", "secret", "generic", "chat-hook", "-n", namespace, f"--from-literal=url={url}"
        )
        secret_ref = {"secretKeyRef": {"name": "chat-hook", "key": "url"}}
        notify = {"name": "notify", "webhook": {"urlFrom": secret_ref, "retries": 0}}
        kube_cluster.apply(
            m.rollout(
                "web-a",
                [CANARY],
                cleanup=[notify],
                cleanupPolicy={"retryBackoffSeconds": 1, "maxBackoffSeconds": 2},
            ),
            namespace,
        )
        # B is applied once A holds the lock: applied in the same second, the two would
        # be ordered by which the operator queued first (A's checks read a Secret).
        wait_for(
            lambda: (
                (lease(kube_cluster, namespace).get("spec") or {}).get("holderIdentity")
                == f"{get_rollout(kube_cluster, namespace, 'web-a')['metadata']['uid']}/1"
            ),
            60,
            interval=0.3,
            message="web-a holds the lock",
            ignore=(KubectlError,),
        )
        kube_cluster.apply(m.rollout("web-b", [CANARY], image=V3), namespace)

        def blocked_event() -> dict[str, Any] | None:
            found = [
                e
                for e in events_of(kube_cluster, namespace, "web-a")
                if e["reason"] == "CleanupBlocked"
            ]
            assert len(found) <= 1, f"a new Event per retry: {found}"
            return found[0] if found and int(found[0].get("count") or 1) >= 3 else None

        event = wait_for(blocked_event, 90, interval=0.5, message="CleanupBlocked counted 3 times")
        assert event["lastTimestamp"] >= event["firstTimestamp"]
        a = get_rollout(kube_cluster, namespace, "web-a")
        assert a["status"]["phase"] == "CleaningUp"
        assert condition(a, "CleanupVerified")["reason"] == "CleanupBlocked"
        holder = f"{a['metadata']['uid']}/1"  # run 1 of web-a holds it
        assert lease(kube_cluster, namespace)["spec"]["holderIdentity"] == holder
        assert get_rollout(kube_cluster, namespace, "web-b")["status"]["phase"] == "Queued"
        assert len(endpoints.calls_to("status/400")) >= 3
        assert "HTTP 400" in a["status"]["cleanup"]["lastError"], "the Secret's URL was called"
        for text in (json.dumps(a), json.dumps(event), operator.log()):
            assert TOKEN not in text
        # A human ends it (the documented escape hatch); the next rollout then runs.
        kube_cluster.kubectl(
            "annotate", "cro", "web-a", "-n", namespace, "canary-operator.dev/force-release=true"
        )
        assert (
            wait_phase(kube_cluster, namespace, "web-b", {"Succeeded", "Failed"}, 120)["status"][
                "phase"
            ]
            == "Succeeded"
        )
