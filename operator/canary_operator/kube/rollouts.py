"""The CanaryRollout object itself: where it lives and the operator's finalizer on it.

Shared by the reconcile (which adds and removes the finalizer) and the lock (whose
free-lock precondition is that very conditional write, see lock/run_lock.py).
"""

from __future__ import annotations

from canary_operator.api import models
from canary_operator.kube.api import JsonObj, Kube, ResourceKind, path

FINALIZER = "canary-operator.dev/cleanup"

ROLLOUTS = ResourceKind(models.GROUP, models.VERSION, models.PLURAL)


def rollout_path(namespace: str, name: str | None = None) -> str:
    return path(models.GROUP, models.VERSION, models.PLURAL, namespace, name)


def has_finalizer(body: JsonObj) -> bool:
    return FINALIZER in (body["metadata"].get("finalizers") or [])


async def add_finalizer(kube: Kube, body: JsonObj) -> None:
    """Add the finalizer, conditional on the version of `body` (Conflict if it is not
    current); `body` takes the answer's metadata."""
    meta = body["metadata"]
    patched = await kube.merge_patch(
        rollout_path(meta["namespace"], meta["name"]),
        {
            "metadata": {
                "finalizers": [*(meta.get("finalizers") or []), FINALIZER],
                "resourceVersion": meta["resourceVersion"],
            }
        },
    )
    body["metadata"] = patched["metadata"]


async def remove_finalizer(kube: Kube, body: JsonObj) -> JsonObj:
    """Drop the finalizer (unconditional: the status is terminal, nothing else may
    change it back); returns the answer."""
    meta = body["metadata"]
    finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    patched: JsonObj = await kube.merge_patch(
        rollout_path(meta["namespace"], meta["name"]), {"metadata": {"finalizers": finalizers}}
    )
    return patched
