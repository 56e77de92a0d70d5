"""pytest fixtures for a real Prometheus server (register with ``pytest_plugins``).

* ``prometheus`` (session): a :class:`~tests.harness.prometheus.PrometheusServer`
  scraping its own :class:`~tests.harness.prometheus.MetricsExporter` every second;
  use ``prometheus.address`` (API base URL) and ``prometheus.exporter``. Started on
  first use, always stopped at the end of the session. The exporter is shared: give
  each test its own metric names or labels.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator

import pytest

from tests.harness.prometheus import PrometheusServer, start_prometheus


def _stop(server: PrometheusServer) -> None:
    try:
        server.stop()
    finally:
        server.exporter.stop()


@pytest.fixture(scope="session")
def prometheus(request: pytest.FixtureRequest) -> Iterator[PrometheusServer]:
    """A running Prometheus scraping a test-controlled exporter (see the module doc)."""
    server = start_prometheus()
    atexit.register(_stop, server)  # backstop if the finalizer never runs
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"prometheus: {server.address} up in {server.startup_seconds:.1f}s, "
            f"scraping {server.exporter.url}"
        )
    try:
        yield server
    finally:
        _stop(server)
        atexit.unregister(_stop)
