"""Argo CD's diff normalization rules, ported to judge the GitOps recipes in
docs/gitops.md against Argo CD itself (its code is read, not copied):

- `ignoreDifferences[].managedFieldsManagers`: argoproj/argo-cd
  util/argo/managedfields/managed_fields.go, `Normalize`: the live and config objects
  are compared as structured-merge-diff *deduced* types (`typed.DeducedParseableType`),
  whose maps are separable but whose lists are atomic (structured-merge-diff
  typed/deduced schema `__untyped_deduced_`: list elementRelationship atomic); the
  fields of the `Modified` set that a trusted manager's managedFields entry also holds
  (`Set.Intersection`, exact members) are removed from both objects with
  `PathToNestedFields`, which keeps field names only and so cannot step into a list.
- `ignoreDifferences[].jqPathExpressions`: util/argo/normalizers/diff_normalizer.go,
  `jqNormalizerPatch`: `del(<expression>)` run on each object (gojq there, the jq
  program here: the same language for these expressions), then `removeEmptyObjects`.
- `jsonPointers`: the same file, a JSON patch `remove` per pointer, a missing path
  ignored.

`config_differences` is what Argo CD's diff reports for a resource whose config sets a
field to another value than the live object has (the legacy three-way diff puts every
such field in its patch; fields only the live object has are left alone unless the
last applied configuration had them).
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

JsonObj = dict[str, Any]
Path = tuple[str, ...]


def _deduced_modified(live: Any, config: Any, at: Path = ()) -> set[Path]:
    """Paths present in both with different values; maps descend, lists and scalars
    are atomic (the deduced type's rule)."""
    if isinstance(live, dict) and isinstance(config, dict):
        found: set[Path] = set()
        for key in live.keys() & config.keys():
            found |= _deduced_modified(live[key], config[key], (*at, key))
        return found
    return set() if live == config else {at}


def _members(fields: JsonObj, at: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The member paths of a FieldsV1 set, as element strings (f:name, k:{...})."""
    found: set[tuple[str, ...]] = set()
    for key, child in fields.items():
        if key == ".":
            found.add(at)
            continue
        path = (*at, key)
        if not child:
            found.add(path)
        else:
            found |= _members(child, path)
    return found


def _remove_nested(obj: JsonObj, fields: list[str]) -> None:
    """unstructured.RemoveNestedField: through maps only; anything else stops it."""
    node: Any = obj
    for name in fields[:-1]:
        node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return
    if isinstance(node, dict):
        node.pop(fields[-1], None)


def managed_fields_normalize(
    live: JsonObj, config: JsonObj, managers: list[str]
) -> tuple[JsonObj, JsonObj]:
    live, config = copy.deepcopy(live), copy.deepcopy(config)
    if not managers:
        return live, config
    modified = _deduced_modified(live, config)
    # A deduced path only ever names map fields: as FieldsV1 elements, f:<name>.
    modified_elements = {tuple(f"f:{p}" for p in path) for path in modified}
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") not in managers:
            continue
        for member in _members(entry.get("fieldsV1") or {}) & modified_elements:
            # PathToNestedFields keeps the field names (list keys would be dropped).
            names = [e[2:] for e in member if e.startswith("f:")]
            _remove_nested(config, names)
            _remove_nested(live, names)
    return live, config


def remove_empty_objects(obj: JsonObj) -> None:
    for key in list(obj):
        value = obj[key]
        if isinstance(value, dict):
            remove_empty_objects(value)
            if not value:
                del obj[key]
        elif isinstance(value, list):
            cleaned = []
            for item in value:
                if isinstance(item, dict):
                    remove_empty_objects(item)
                    if item:
                        cleaned.append(item)
                else:
                    cleaned.append(item)
            obj[key] = cleaned
            if not cleaned:
                del obj[key]


def jq_normalize(obj: JsonObj, expressions: list[str]) -> JsonObj:
    data = copy.deepcopy(obj)
    for expression in expressions:
        done = subprocess.run(
            ["jq", "-c", f"del({expression})"],
            input=json.dumps(data),
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        data = json.loads(done.stdout)
    remove_empty_objects(data)
    return data


def config_differences(config: Any, live: Any, at: str = "") -> list[str]:
    """Fields the config sets to a value the live object does not have."""
    if isinstance(config, dict) and isinstance(live, dict):
        found: list[str] = []
        for key, value in config.items():
            if key not in live:
                found.append(f"{at}.{key}")
            else:
                found += config_differences(value, live[key], f"{at}.{key}")
        return found
    if isinstance(config, list) and isinstance(live, list):
        if len(config) != len(live):
            return [at]
        found = []
        for n, (c, v) in enumerate(zip(config, live, strict=True)):
            found += config_differences(c, v, f"{at}[{n}]")
        return found
    return [] if config == live else [at]
