"""helm for the chart tests: built from its Go module by hack/helm.sh (cached in
~/.cache/canary-operator/helm-<version>/, so a warm machine reuses it), and the
comparison of rendered objects with the kustomize overlays."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness.cluster import REPO_ROOT

HELM_SCRIPT = REPO_ROOT / "hack" / "helm.sh"
CHART = REPO_ROOT / "charts" / "canary-operator"
# What Helm adds and kustomize does not: bookkeeping labels and the keep policy.
HELM_ONLY_LABELS = frozenset(
    {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"}
)
HELM_ONLY_ANNOTATIONS = frozenset({"helm.sh/resource-policy"})

ObjectKey = tuple[str, str, str]  # kind, namespace ("" if cluster-scoped), name


def helm_binary(timeout: float = 1800) -> Path:
    """The cached helm, built first if needed (a cold build takes a few minutes)."""
    result = subprocess.run(
        [str(HELM_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/helm.sh failed: {result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def normalized(doc: dict[str, Any]) -> dict[str, Any]:
    """The object without what only Helm adds (empty label/annotation maps dropped)."""
    meta = doc["metadata"]
    for field, drop in (("labels", HELM_ONLY_LABELS), ("annotations", HELM_ONLY_ANNOTATIONS)):
        kept = {k: v for k, v in (meta.pop(field, None) or {}).items() if k not in drop}
        if kept:
            meta[field] = kept
    return doc


def by_key(text: str) -> dict[ObjectKey, dict[str, Any]]:
    """Parsed, normalized objects of a multi-document YAML stream, by kind/namespace/name."""
    out: dict[ObjectKey, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        assert key not in out, f"rendered twice: {key}"
        out[key] = normalized(doc)
    return out


def template(
    helm: Path,
    *args: str,
    release: str = "canary-operator",
    namespace: str = "canary-operator-system",
) -> str:
    result = subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr}")
    return result.stdout
