"""Unit tests of the generated CustomResourceDefinition (`api/crd.py`).

A small validator of structural schemas (types, properties, unknown fields, patterns,
bounds; no CEL) checks real documents against the generated schema.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary_operator.api import crd
from canary_operator.api.models import CanaryRolloutSpec, Phase

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "canaryrollouts.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
FORBIDDEN = {"$ref", "$defs", "definitions", "anyOf", "allOf", "oneOf", "not"}
SPINNAKER_ANNOTATIONS = {
    "moniker.spinnaker.io/application": "web",
    "moniker.spinnaker.io/cluster": "deployment web",
    "artifact.spinnaker.io/name": "web",
    "artifact.spinnaker.io/type": "kubernetes/deployment",
    "artifact.spinnaker.io/location": "shop",
}
SPINNAKER_LABELS = {"app.kubernetes.io/name": "web", "app.kubernetes.io/managed-by": "spinnaker"}
JOB = {"spec": {"template": {"spec": {"containers": [{"name": "t", "image": "busybox"}]}}}}

COLUMNS = [
    "TARGET",
    "PHASE",
    "STEP",
    "WEIGHT",
    "QUEUE",
    "LIVE",
    "AGE",
]  # as `kubectl get` shows them

Schema = dict[str, Any]


@pytest.fixture(scope="module")
def version() -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd.crd()["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> Schema:
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def at(schema: Schema, path: str) -> Schema:
    """The node at a dotted path; `[]` steps into array items."""
    node = schema
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def validate(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Errors of `value` against a structural schema, unknown fields included."""
    kind = schema.get("type")
    if kind and (
        not isinstance(value, _TYPES[kind]) or (kind != "boolean" and isinstance(value, bool))
    ):
        return [f"{path}: expected {kind}, got {value!r}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e9):
            errors.append(f"{path}: length of {value!r} out of bounds")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not schema.get("minimum", -1e18) <= value <= schema.get("maximum", 1e18):
        errors.append(f"{path}: {value} out of bounds")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e9):
            errors.append(f"{path}: {len(value)} items out of bounds")
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        errors += [f"{path}: {k} required" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{path}.{key}")
            else:
                errors.append(f"{path}: unknown field {key!r}")
    return errors


def validate_doc(doc: dict[str, Any], root: Schema) -> list[str]:
    """The API server validates `metadata` itself; the schema covers the rest."""
    return validate({k: v for k, v in doc.items() if k != "metadata"}, root)


def rollout(**spec: Any) -> dict[str, Any]:
    body = {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": [{"canary": {}}],
        **spec,
    }
    return {
        "apiVersion": "canary-operator.dev/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": {"name": "web-v2", "annotations": SPINNAKER_ANNOTATIONS},
        "spec": body,
    }


# ------------------------------------------------------------------ freshness


def test_committed_crd_is_up_to_date() -> None:
    expected = crd.render()
    committed = COMMITTED.read_text(encoding="utf-8")
    diff = "".join(
        list(
            difflib.unified_diff(
                committed.splitlines(True), expected.splitlines(True), "committed", "generated"
            )
        )[:40]
    )
    assert committed == expected, (
        f"{COMMITTED.relative_to(ROOT)} is stale: run `make crds` "
        f"(.venv/bin/python -m canary_operator.api.crd crds/canaryrollouts.yaml)\n{diff}"
    )


def test_committed_crd_parses_to_the_generated_object() -> None:
    assert yaml.safe_load(COMMITTED.read_text(encoding="utf-8")) == crd.crd()


# ----------------------------------------------------------------- structure


def test_schema_is_structural(root: Schema) -> None:
    for path, node in nodes(root):
        assert not FORBIDDEN & set(node), f"{path or '<root>'}: {FORBIDDEN & set(node)}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object", path
        if "properties" in node:
            assert node["type"] == "object", path
            assert set(node.get("required", [])) <= set(node["properties"]), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), f"{path}: {key} must be a boolean"


@pytest.mark.parametrize(
    "path",
    [
        "spec.template.metadata",
        "spec.steps.[].test.job.metadata",
        "spec.steps.[].parallel.[].test.job.metadata",
        "spec.cleanup.[].job.metadata",
    ],
)
def test_template_metadata_accepts_any_string_map(root: Schema, path: str) -> None:
    meta = at(root, path)
    for field in ("labels", "annotations"):
        node = meta["properties"][field]
        assert node["type"] == "object" and node["additionalProperties"] == {"type": "string"}
        assert "properties" not in node and "maxProperties" not in node
        sample = {**SPINNAKER_ANNOTATIONS, **SPINNAKER_LABELS}
        assert validate(sample, node) == []


def test_spinnaker_decorated_rollout_is_accepted(root: Schema) -> None:
    template = {
        "metadata": {"labels": SPINNAKER_LABELS, "annotations": SPINNAKER_ANNOTATIONS},
        "spec": {"containers": [{"name": "app", "image": "web:2"}]},
    }
    job = {"metadata": {"annotations": SPINNAKER_ANNOTATIONS}, **JOB}
    doc = rollout(
        images=None,
        template=template,
        steps=[{"canary": {}}, {"test": {"job": job}}],
        cleanup=[{"name": "notify", "job": job}],
    )
    del doc["spec"]["images"]
    assert validate_doc(doc, root) == []
    spec = CanaryRolloutSpec.model_validate(doc["spec"])
    assert spec.template is not None and spec.template.metadata is not None
    assert spec.template.metadata.annotations == SPINNAKER_ANNOTATIONS


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_schema_and_the_models(root: Schema, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "CanaryRollout"]
    assert docs, f"{path.name} has no CanaryRollout"
    for doc in docs:
        assert validate_doc(doc, root) == [], path.name
        CanaryRolloutSpec.model_validate(doc["spec"])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"steps": [{"setWeight": 101}]}, "out of bounds"),
        ({"steps": [{"pause": {"duration": "5 minutes"}}]}, "does not match"),
        ({"steps": [{"canary": {"replica": 2}}]}, "unknown field 'replica'"),
        ({"steps": []}, "items out of bounds"),
        ({"target": {"deployment": "Web_1"}}, "does not match"),
        ({"concurrency": {"policy": "Parallel"}}, "not in"),
        ({"progressDeadlineSeconds": "1h"}, "expected integer"),
    ],
)
def test_schema_refuses_invalid_input(root: Schema, change: dict[str, Any], error: str) -> None:
    errors = validate_doc(rollout(**change), root)
    assert any(error in e for e in errors), errors


# ---------------------------------------------------------------------- CEL


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("spec", "set the new version: spec.template or spec.images"),
        ("spec", "gatewayAPI, nginx and istio routing need spec.target.service"),
        ("spec", "the replicas router cannot send 100% to the canary"),
        ("spec.trafficRouting", "set at most one traffic router"),
        ("spec.steps.[]", "a step sets exactly one of"),
        ("spec.steps.[].parallel.[]", "a parallel item sets exactly one of"),
        ("spec.steps.[].test", "a test sets exactly one of job, webhook"),
        ("spec.steps.[].parallel.[].test", "a test sets exactly one of job, webhook"),
        ("spec.cleanup.[]", "a cleanup step sets one of job, webhook"),
    ],
)
def test_cel_rules_are_where_they_belong(root: Schema, path: str, message: str) -> None:
    rules = at(root, path).get("x-kubernetes-validations", [])
    assert any(r["message"].startswith(message) for r in rules), rules


CEL_MACROS = {"all", "exists", "exists_one", "filter", "map", "size"}


def resolves(node: Schema, chain: list[str]) -> bool:
    for name in chain:
        if name in CEL_MACROS:
            return True
        if name not in node.get("properties", {}):
            return False
        node = node["properties"][name]
    return True


def test_cel_rules_only_name_fields_that_exist(root: Schema) -> None:
    checked = 0
    for path, node in nodes(root):
        for rule in node.get("x-kubernetes-validations", []):
            text = rule["rule"]
            scopes = {"self": node}  # and the variables of macros over lists
            for field, var in re.findall(r"self\.(\w+)\.(?:all|exists|filter|map)\((\w+),", text):
                target = node["properties"][field]
                if "additionalProperties" in target:
                    continue  # a macro over a map binds its keys: plain strings
                scopes[var] = target["items"]
            for var, chain in re.findall(r"\b(\w+)((?:\.\w+)+)", text):
                if var in scopes:
                    assert resolves(scopes[var], chain.split(".")[1:]), f"{path}: {text}"
                    checked += 1
    assert checked > 20


# --------------------------------------------------------------- resource shape


def test_names_scope_and_status_subresource(version: dict[str, Any]) -> None:
    spec = crd.crd()["spec"]
    assert crd.crd()["metadata"]["name"] == "canaryrollouts.canary-operator.dev"
    assert (spec["group"], spec["scope"]) == ("canary-operator.dev", "Namespaced")
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "CanaryRollout",
        "canaryrollouts",
        "canaryrollout",
    )
    assert names["shortNames"] == ["cro"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any], root: Schema) -> None:
    columns = version["additionalPrinterColumns"]
    assert [c["name"].upper() for c in columns] == COLUMNS
    assert [(c["jsonPath"], c["type"]) for c in columns] == [
        (".spec.target.deployment", "string"),
        (".status.phase", "string"),
        (".status.stepLabel", "string"),
        (".status.weight", "integer"),
        (".status.queueLabel", "string"),
        (".status.live.label", "string"),
        (".metadata.creationTimestamp", "date"),
    ]
    for column in columns[:-1]:  # each column names a field of the schema, of its type
        node = at(root, column["jsonPath"].lstrip("."))
        assert node["type"] == column["type"], column


def test_status_phase_lists_every_phase(root: Schema) -> None:
    assert at(root, "status.phase")["enum"] == [p.value for p in Phase]
