"""The names a run gives its objects must be free for it: the canary and baseline
Deployments and the canary Service are named from the target (`<target>-canary`), so a
Deployment or Service of that name that canary-operator did not make for this target
(a user's `web-canary`, or the target `web-canary` itself) would be taken over and then
deleted by cleanup. Targets whose names collide the other way (`web.v1`, `web-v1`)
share a lock (lock/keys.py), so they never run at once."""

from __future__ import annotations

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj

FIELD = "spec.target.deployment"


def made_for_target(obj: JsonObj, spec: CanaryRolloutSpec) -> bool:
    """Whether canary-operator made `obj` for this target (any rollout, any run)."""
    labels = obj["metadata"].get("labels") or {}
    mine = objects.selector_labels(spec)[objects.TARGET_LABEL]
    return labels.get(objects.TARGET_LABEL) == mine and objects.ROLE_LABEL in labels


def target_problem(spec: CanaryRolloutSpec, target: JsonObj) -> str | None:
    """A target that is itself an object canary-operator made for another target."""
    labels = target["metadata"].get("labels") or {}
    if objects.ROLE_LABEL in labels and objects.TARGET_LABEL in labels:
        return (
            f"{FIELD}: Deployment {spec.target.deployment!r} is the "
            f"{labels[objects.ROLE_LABEL]} canary-operator made for target "
            f"{labels[objects.TARGET_LABEL]!r}, not a target of its own"
        )
    return None


def sharing_the_lock(obj: JsonObj, spec: CanaryRolloutSpec) -> bool:
    """Whether canary-operator made `obj` for a target whose lock this target shares
    (`web.v1` for `web-v1`): its run holds that lock now, or left it behind."""
    labels = obj["metadata"].get("labels") or {}
    made_for = labels.get(objects.TARGET_LABEL)
    return (
        objects.ROLE_LABEL in labels
        and made_for is not None
        # The key of a target's own lock (lock/keys.py).
        and objects.target_name_base(made_for) == objects.target_name_base(spec.target.deployment)
    )


def taken_problem(
    spec: CanaryRolloutSpec, kind: str, obj: JsonObj | None, lock_held: bool
) -> str | None:
    """The name of a run's object, taken by one canary-operator did not make for this
    target (None: free, or one of this target's from an earlier run). One made for a
    target sharing this lock is a verdict only once the lock is held: until then that
    target's run may still be going on, and this run waits for the lock behind it."""
    if obj is None or made_for_target(obj, spec):
        return None
    if not lock_held and sharing_the_lock(obj, spec):
        return None
    name = obj["metadata"]["name"]
    return (
        f"{FIELD}: a run of {spec.target.deployment!r} names its {kind} {name!r}, and a "
        f"{kind} of that name exists that canary-operator did not make for this target "
        "(rename it, or the target)"
    )
