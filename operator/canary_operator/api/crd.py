"""Generates the CustomResourceDefinition from the pydantic models.

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: `$ref`s are
inlined, `Optional[X]` collapses to `X`, open objects (PodSpec, JobSpec) keep unknown
fields, and CEL rules declared on the models become `x-kubernetes-validations`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from canary_operator.api import models

_DROP = {"title", "default", "x-preserve"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _structural(target, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a structural schema cannot express anyOf {node['anyOf']!r}")
        merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **options[0]}
        for key in ("description",):  # the outer field's text wins over the type's
            if key in node:
                merged[key] = node[key]
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    if node.get("x-preserve"):
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
        if "description" in node:
            out["description"] = node["description"]
        return out
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        elif key == "additionalProperties" and value is False:
            continue  # unknown fields are refused by the API server's strict validation
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema's numeric form -> OpenAPI v3.0's boolean form
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = _structural(value, defs)
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    return schema


def crd() -> dict[str, Any]:
    spec_schema = schema_for(models.CanaryRolloutSpec)
    status_schema = schema_for(models.CanaryRolloutStatus)
    columns = [
        ("Target", ".spec.target.deployment", "string"),
        ("Phase", ".status.phase", "string"),
        ("Step", ".status.stepLabel", "string"),
        ("Weight", ".status.weight", "integer"),
        ("Queue", ".status.queueLabel", "string"),
        ("Live", ".status.live.label", "string"),
        ("Age", ".metadata.creationTimestamp", "date"),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": models.SHORT_NAMES,
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "jsonPath": p, "type": t} for n, p, t in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A canary rollout of one Deployment, with a cleanup "
                            "that always runs and a per-target lock.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = (
        "# Generated from operator/canary_operator/api/models.py by `make crds`. Do not edit.\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def main() -> None:
    import sys

    path = sys.argv[1] if len(sys.argv) > 1 else "crds/canaryrollouts.yaml"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render())


if __name__ == "__main__":
    main()
