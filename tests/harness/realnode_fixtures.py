"""The session-scoped ``real_node`` fixture: one real node joined to ``kube_cluster``.

Where a real node cannot run (not root, not Linux, a cluster named by
CANARY_TEST_KUBECONFIG, ...) every test that asks for it is skipped, and the
session says so loudly: a red line in the terminal and a warning in the summary,
so a skipped real-node suite is never mistaken for a passing one.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import EXTERNAL_KUBECONFIG_ENV, Cluster, wait_for
from tests.harness.realnode import OWNER_FILE, SCRIPTS, RealNode, unavailable_reason

_build_error: list[str] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the node's binaries and images before any test runs (a cold build takes
    about 20 min, more than a test's timeout), if a selected test needs the node."""
    if session.config.option.collectonly or unavailable_reason() is not None:
        return
    if not any("real_node" in getattr(i, "fixturenames", ()) for i in session.items):
        return
    if os.environ.get(EXTERNAL_KUBECONFIG_ENV, "").strip():
        return
    log = Path(tempfile.gettempdir()) / "canary-realnode-build.log"
    scripts = [SCRIPTS / "build.sh", SCRIPTS / "images" / "build.sh"]
    # The Gateway API data plane (e2e/test_realnode_gateway.py), only when selected.
    if any("traefik_gateway" in getattr(i, "fixturenames", ()) for i in session.items):
        scripts.append(SCRIPTS / "traefik.sh")
    with log.open("w") as out:
        for script in scripts:
            proc = subprocess.run([str(script)], stdout=out, stderr=out, check=False)
            if proc.returncode != 0:
                _build_error.append(f"{script} failed ({proc.returncode}); log: {log}")
                return


class RealNodeSkipped(UserWarning):
    """The real-node suite did not run."""


@pytest.fixture(scope="session")
def real_node(kube_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[RealNode]:
    reason = unavailable_reason()
    if reason is None and os.environ.get(EXTERNAL_KUBECONFIG_ENV, "").strip():
        reason = (
            f"{EXTERNAL_KUBECONFIG_ENV} names an external cluster; the real node joins only "
            "the local control plane (hack/cluster/up.sh)"
        )
    if reason is not None:
        message = f"REAL-NODE SUITE SKIPPED (no real pods, no real traffic tested): {reason}"
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(message, red=True, bold=True)
        warnings.warn(RealNodeSkipped(message), stacklevel=1)
        pytest.skip(message)
    if _build_error:
        raise RuntimeError(_build_error[0])
    # One real node per host: another session's node is waited for, not fought over.
    wait_for(
        lambda: not OWNER_FILE.exists(),
        1800,
        interval=2,
        message=lambda: (
            f"the real node of another session to stop ({OWNER_FILE}: "
            f"{OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else 'gone'})"
        ),
    )
    node = RealNode(
        kube_cluster.kubeconfig.parent,
        [kube_cluster.kubectl_path, f"--kubeconfig={kube_cluster.kubeconfig}"],
    )
    try:
        node.up()
        yield node
    finally:
        node.down()
