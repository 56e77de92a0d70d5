"""The session-scoped ``real_node`` fixture: one real node joined to ``kube_cluster``.

Where a real node cannot run (not root, not Linux, a cluster named by
CANARY_TEST_KUBECONFIG, ...) every test that asks for it is skipped, and the
session says so loudly: a red line in the terminal and a warning in the summary,
so a skipped real-node suite is never mistaken for a passing one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.harness.cluster import EXTERNAL_KUBECONFIG_ENV, Cluster, wait_for
from tests.harness.realnode import OWNER_FILE, RealNode, unavailable_reason


class RealNodeSkipped(UserWarning):
    """The real-node suite did not run."""


def warn_real_node_skipped(request: pytest.FixtureRequest, reason: str) -> NoReturn:
    """Skip, in red in the terminal summary and as a warning: never a silent skip."""
    message = f"REAL-NODE SUITE SKIPPED (no real pods, no real traffic tested): {reason}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(message, red=True, bold=True)
    warnings.warn(RealNodeSkipped(message), stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_node(kube_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[RealNode]:
    reason = unavailable_reason()
    if reason is None and os.environ.get(EXTERNAL_KUBECONFIG_ENV, "").strip():
        reason = (
            f"{EXTERNAL_KUBECONFIG_ENV} names an external cluster; the real node joins only "
            "the local control plane (hack/cluster/up.sh)"
        )
    if reason is not None:
        warn_real_node_skipped(request, reason)
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
