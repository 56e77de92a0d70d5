"""The real node's pure parts: the OCI archive writer, the guard rules the harness
checks for, the tolerance the traffic tests use, and the scrape targets and queries
of the analysis test."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from canary_operator.analysis.queries import render_query
from tests.harness.realnode import GUARD_RULES, GUARD_TABLE, NODE_NAME, binomial_tolerance
from tests.harness.realnode_metrics import (
    ERROR_RATE_QUERY,
    LATENCY_P99_QUERY,
    ROLE_LABEL,
    scrape_target_groups,
)

REPO = Path(__file__).resolve().parent.parent.parent
OCI = REPO / "hack" / "realnode" / "images" / "oci.py"


def _oci() -> ModuleType:
    spec = importlib.util.spec_from_file_location("realnode_oci", OCI)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layer(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_oci_archive_is_a_valid_layout_with_named_images(tmp_path: Path) -> None:
    _layer(tmp_path / "a.tar", {"bin/a": b"a"})
    _layer(tmp_path / "b.tar", {"app/b": b"b"})
    spec = {
        "layers": {"a": str(tmp_path / "a.tar"), "b": str(tmp_path / "b.tar")},
        "images": [
            {"name": "registry.local/x:one", "layers": ["a"], "config": {"Cmd": ["/bin/a"]}},
            {"name": "registry.local/x:two", "layers": ["a", "b"], "config": {"Env": ["V=2"]}},
        ],
    }
    out = tmp_path / "images.tar"
    _oci().build(spec, out)
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert names == ["registry.local/x:one", "registry.local/x:two"]
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "one",
        "two",
    ]

    def blob(digest: str) -> bytes:
        data = files[f"blobs/sha256/{digest.split(':')[1]}"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, (
            "blob does not match its digest"
        )
        return data

    second = json.loads(blob(index["manifests"][1]["digest"]))
    config = json.loads(blob(second["config"]["digest"]))
    assert config["config"] == {"Env": ["V=2"]}
    # diff_ids are the uncompressed layers' digests; the shared layer is stored once.
    diff = [
        "sha256:" + hashlib.sha256((tmp_path / f"{n}.tar").read_bytes()).hexdigest() for n in "ab"
    ]
    assert config["rootfs"]["diff_ids"] == diff
    for layer in second["layers"]:
        blob(layer["digest"])
    assert (
        len([f for f in files if f.startswith("blobs/")]) == 2 + 2 + 2
    )  # layers, configs, manifests


def test_oci_archive_is_reproducible(tmp_path: Path) -> None:
    _layer(tmp_path / "a.tar", {"bin/a": b"a"})
    spec = {
        "layers": {"a": str(tmp_path / "a.tar")},
        "images": [{"name": "r/x:1", "layers": ["a"], "config": {}}],
    }
    _oci().build(spec, tmp_path / "1.tar")
    _oci().build(spec, tmp_path / "2.tar")
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()


def test_guard_rules_of_the_scripts_are_the_ones_the_harness_checks() -> None:
    lib = REPO / "hack" / "realnode" / "lib.sh"
    rules = subprocess.run(
        ["bash", "-c", f". {lib} && realnode_guard_rules"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"table inet {GUARD_TABLE} " in rules
    for rule in GUARD_RULES:
        assert f'comment "{rule}"' in rules
    # Every drop is in a chain hooked after kube-proxy's DNAT (priority -100).
    assert rules.count("priority -10;") == 3
    assert "198.51.100.0/24" in rules and "10.96.0.0/16" in rules


@pytest.mark.parametrize(("p", "expected"), [(0.1, 0.0301), (0.5, 0.0503)])
def test_binomial_tolerance_at_2000_requests(p: float, expected: float) -> None:
    assert binomial_tolerance(p, 2000) == pytest.approx(expected, abs=5e-4)


def test_demo_app_compiles() -> None:
    src = REPO / "hack" / "realnode" / "images" / "demo_app.py"
    compile(src.read_text(), str(src), "exec")
    assert sys.version_info >= (3, 11)


def _pod(name: str, ip: str | None, **overrides: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}},
        "spec": {"nodeName": NODE_NAME},
        "status": {"phase": "Running", "podIP": ip},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        pod[section][field] = value
    return pod


def test_scrape_targets_are_the_real_nodes_running_pods_by_role() -> None:
    canary = _pod("web-canary-1", "198.51.100.7")
    canary["metadata"]["labels"][ROLE_LABEL] = "canary"
    pods = [
        _pod("web-b", "198.51.100.9"),
        canary,
        _pod("web-a", "198.51.100.8"),
        _pod("kwok", "10.244.0.5", spec__nodeName="kwok-node-0"),  # leads nowhere
        _pod("foreign", "10.244.0.6"),  # on the node's name but not in its pod range
        _pod("pending", None, status__phase="Pending"),
        _pod("going", "198.51.100.10", metadata__deletionTimestamp="2026-01-01T00:00:00Z"),
        _pod("done", "198.51.100.11", status__phase="Succeeded"),
    ]
    assert scrape_target_groups(pods) == [
        {
            "targets": ["198.51.100.8:8080"],
            "labels": {"namespace": "ns", "pod": "web-a", "role": "stable"},
        },
        {
            "targets": ["198.51.100.9:8080"],
            "labels": {"namespace": "ns", "pod": "web-b", "role": "stable"},
        },
        {
            "targets": ["198.51.100.7:8080"],
            "labels": {"namespace": "ns", "pod": "web-canary-1", "role": "canary"},
        },
    ]


def test_analysis_queries_use_only_the_operators_variables() -> None:
    for template in (ERROR_RATE_QUERY, LATENCY_P99_QUERY):
        query = render_query(template, {"namespace": "ns", "role": "canary"})
        assert '{namespace="ns",role="canary"' in query
        assert "{{" not in query
    # An empty 5xx sum counts as 0 errors, so a healthy canary measures 0, not no data.
    assert "or vector(0)" in ERROR_RATE_QUERY
