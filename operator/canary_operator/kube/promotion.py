"""The server-side apply configuration of a promotion of the target: only the fields
it changes, so that a later applier of an older manifest meets a conflict on them
instead of reverting them unnoticed. Pure functions of the rollout and the target."""

from __future__ import annotations

import json

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.kube.objects import FIELD_MANAGER, JsonObj, new_pod_template


def _owned_template(target: JsonObj, manager: str) -> tuple[set[str], bool]:
    """From the target's managedFields: the containers whose image `manager` applied,
    and whether it applied anything else in the pod template (a full-template
    promotion), which a later images-only apply must keep applying (fields an applier
    stops applying are removed when nobody else owns them)."""
    images: set[str] = set()
    other = False
    for entry in target["metadata"].get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if entry.get("subresource"):
            continue
        template = ((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:template")
        if not template:
            continue
        other = other or any(k != "f:spec" for k in template)
        pod = template.get("f:spec") or {}
        other = other or any(k != "f:containers" for k in pod)
        for key, fields in (pod.get("f:containers") or {}).items():
            if not key.startswith("k:"):
                other = True
                continue
            try:
                images.add(str(json.loads(key[2:])["name"]))
            except (ValueError, KeyError, TypeError):
                other = True
            other = other or any(f not in (".", "f:name", "f:image") for f in fields)
    return images, other


def promotion(spec: CanaryRolloutSpec, target: JsonObj, annotations: dict[str, str]) -> JsonObj:
    """The server-side apply configuration of a promotion: only the fields it changes.

    With `spec.images`, the named containers' images (plus those of containers whose
    image an earlier promotion applied, which would otherwise be removed); with
    `spec.template`, the whole new template. The annotations carry the record. The
    target's resourceVersion makes the apply conditional (fencing)."""
    new = new_pod_template(spec, target)
    owned, whole = _owned_template(target, FIELD_MANAGER)
    if spec.template is not None or whole:
        template: JsonObj = new
    else:
        names = {o.container for o in spec.images or []} | owned
        template = {
            "spec": {
                "containers": [
                    {"name": c["name"], "image": c["image"]}
                    for c in new["spec"].get("containers", [])
                    if c["name"] in names
                ]
            }
        }
    meta = target["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "resourceVersion": meta["resourceVersion"],
            "annotations": annotations,
        },
        "spec": {"template": template},
    }
