"""Which Leases a run takes: one per target, whatever else it names.

Two rollouts whose changes can touch the same objects must never run at once. The
target's own key is the start of every name and label derived from the target
(kube/objects.py `target_name_base`), so targets whose canary objects would collide
(`web.v1` and `web-v1`) share it. `spec.lockGroup` adds its key: a group serialises
several targets (e.g. shared networking) and never lets a rollout of the group's
targets skip its target's lock.

A run takes its keys all or none, in the order of their Lease names: every run that
takes two takes them in the same order, so no two runs each hold what the other waits
for (see lock/run_lock.py).
"""

from __future__ import annotations

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.kube.objects import target_name_base
from canary_operator.lock.lease import lease_name


def lock_keys(spec: CanaryRolloutSpec) -> tuple[str, ...]:
    """The run's lock keys, in the order they are taken."""
    keys = {target_key(spec.target.deployment)}
    if spec.lock_group:
        keys.add(spec.lock_group)
    return tuple(sorted(keys, key=lease_name))


def target_key(deployment: str) -> str:
    """The key of a target Deployment's own lock."""
    return target_name_base(deployment)
