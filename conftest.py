"""Fixtures shared by tests/ and e2e/: a real Kubernetes API.

* ``kube_cluster`` (session): the cluster named by ``CANARY_TEST_KUBECONFIG``
  if set (kind on a laptop; Gateway API CRDs are installed if missing), else a
  local control plane started by ``hack/cluster/up.sh`` in a fresh temporary
  directory and always stopped at the end of the session. Lazy: only tests
  that ask for it (directly or through another fixture) start a cluster.
* ``namespace`` (function): a fresh namespace, deleted afterwards.

Tests using them are marked ``cluster`` (added automatically if missing), so
``pytest -m "not cluster"`` runs without any Kubernetes.
"""

from __future__ import annotations

import atexit
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.harness.cluster import (
    EXTERNAL_KUBECONFIG_ENV,
    Cluster,
    LocalCluster,
    build_binaries,
    cached_bin_dir,
    ensure_gateway_api_crds,
    external_cluster,
    unique_namespace_name,
)

# The session-scoped `prometheus` fixture (a real Prometheus server and an exporter),
# `real_node` (a real kubelet/containerd node joined to kube_cluster), and the builds
# only some tests need, made in the background while the others run.
pytest_plugins = [
    "tests.harness.prometheus_fixtures",
    "tests.harness.realnode_fixtures",
    "tests.harness.prebuild",
    "pytester",  # tests/unit/test_prebuild.py runs the plugin in a pytest of its own
]

CLUSTER_FIXTURE = "kube_cluster"

_build: dict[str, object] = {}


def _external_kubeconfig() -> Path | None:
    value = os.environ.get(EXTERNAL_KUBECONFIG_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: mark before `-m` deselection runs.
    for item in items:
        if CLUSTER_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control-plane binaries before any test runs, so a cold build
    (tens of minutes) does not count against a test's timeout. Only when a
    selected test needs a cluster and none is given."""
    config = session.config
    if config.option.collectonly or _external_kubeconfig() is not None:
        return
    if not any(CLUSTER_FIXTURE in getattr(i, "fixturenames", ()) for i in session.items):
        return
    log = Path(tempfile.gettempdir()) / "canary-operator-build.log"
    if cached_bin_dir() is None:
        _say(config, f"building the local control plane (first time: 10-40 min), log: {log}")
    try:
        _build["bin_dir"] = build_binaries(log)
    except Exception as exc:
        _build["error"] = exc


def _bin_dir() -> Path:
    if "error" in _build:
        raise RuntimeError(f"building the control plane failed: {_build['error']}")
    bin_dir = _build.get("bin_dir")
    if isinstance(bin_dir, Path):
        return bin_dir
    bin_dir = build_binaries()
    _build["bin_dir"] = bin_dir
    return bin_dir


def _raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so fixture finalizers (cluster teardown)
    run; the up.sh watchdog covers SIGKILL."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def handler(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A real Kubernetes API for the whole session (see the module docstring)."""
    external = _external_kubeconfig()
    if external is not None:
        cluster = external_cluster(external)
        if ensure_gateway_api_crds(cluster):
            _say(request.config, "kube_cluster: installed the Gateway API CRDs")
        yield cluster
        return

    state_dir = Path(tempfile.mkdtemp(prefix="canary-kube-"))
    local = LocalCluster(state_dir, _bin_dir())
    _raise_on_sigterm()
    atexit.register(local.stop)  # backstop if the finalizer never runs
    try:
        cluster = local.start()
        _say(
            request.config,
            f"kube_cluster: local control plane up in {local.startup_seconds:.1f}s ({state_dir})",
        )
        yield cluster
    finally:
        local.stop()
        atexit.unregister(local.stop)


@pytest.fixture(scope="session")
def cluster_bin_dir() -> Path:
    """The locally built control-plane binaries (builds them if needed); skips
    the test when an external cluster is used and nothing is built locally."""
    if _external_kubeconfig() is not None:
        cached = cached_bin_dir()
        if cached is None:
            pytest.skip("needs the local control-plane binaries (hack/cluster/build.sh)")
        return cached
    return _bin_dir()


@pytest.fixture
def namespace(kube_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace ``t-<test name>-<random>``, deleted after the test.

    The deletion is not waited for: the namespace controller needs ~10 s to
    empty a namespace, and names are unique, so tests never meet a leftover.
    """
    name = unique_namespace_name(request.node.name)
    kube_cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kube_cluster.kubectl(
            "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
        )
