"""Reusable test harness: a real Kubernetes API for the test suites.

See :mod:`tests.harness.cluster`; the pytest fixtures built on it
(``kube_cluster``, ``namespace``) live in the repository's root ``conftest.py``.
"""

from tests.harness.cluster import (
    Cluster,
    KubectlError,
    WaitTimeout,
    unique_namespace_name,
    wait_for,
    wait_for_async,
)

__all__ = [
    "Cluster",
    "KubectlError",
    "WaitTimeout",
    "unique_namespace_name",
    "wait_for",
    "wait_for_async",
]
