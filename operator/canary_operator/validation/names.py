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


def taken_problem(spec: CanaryRolloutSpec, kind: str, obj: JsonObj | None) -> str | None:
    """The name of a run's object, taken by one canary-operator did not make for this
    target (None: free, or one of this target's from an earlier run)."""
    if obj is None or made_for_target(obj, spec):
        return None
    name = obj["metadata"]["name"]
    return (
        f"{FIELD}: a run of {spec.target.deployment!r} names its {kind} {name!r}, and a "
        f"{kind} of that name exists that canary-operator did not make for this target "
        "(rename it, or the target)"
    )
