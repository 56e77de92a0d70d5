"""End-to-end fixtures: the CRD installed once, and operator processes run the way
users run them (`canary-operator run`), each test with its own, watching its own
namespace so tests never share an operator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.identity import free_port
from tests.harness.cluster import Cluster, wait_for

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "crds" / "canaryrollouts.yaml"
EXAMPLES = REPO / "examples"
TERMINAL = {"Succeeded", "Failed", "Aborted", "Superseded"}


@pytest.fixture(scope="session")
def crd_installed(kube_cluster: Cluster) -> Cluster:
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    # `kubectl wait` fails at once ("accessor error") while a new CRD has no conditions
    # at all yet: ask again until it answers.
    wait_for(
        lambda: (
            kube_cluster.kubectl(
                "wait",
                "--for=condition=Established",
                "crd/canaryrollouts.canary-operator.dev",
                "--timeout=10s",
                check=False,
                timeout=20,
            ).returncode
            == 0
        ),
        60,
        interval=0.5,
        message="the CRD to be Established",
    )
    return kube_cluster


class OperatorProcess:
    """One `canary-operator run` process; its output goes to a log file."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.log_path = log_path
        self.env = {**cluster.env(), **(env or {})}
        # No HTTP server unless a test asks for one: several operators run at once.
        self.args = args if args is not None else ["--http-port", "0"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "canary_operator.cli.main",
                "run",
                "-n",
                self.namespace,
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
            start_new_session=True,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a node failure or OOM kill."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def operators(
    crd_installed: Cluster, namespace: str, tmp_path: Path
) -> Iterator[list[OperatorProcess]]:
    """A list to start operator processes into; all are stopped after the test."""
    started: list[OperatorProcess] = []
    yield started
    try:
        _delete_rollouts(crd_installed, namespace, [op for op in started if op.running()])
    finally:
        for op in started:
            op.stop()


def serving_operator(
    cluster: Cluster, namespace: str, operators: list[OperatorProcess], log_path: Path
) -> str:
    """An operator process with its HTTP server on a free loopback port, started into
    `operators` (stopped after the test); returns its base URL once /readyz answers 200."""
    port = free_port()
    op = OperatorProcess(
        cluster, namespace, log_path, args=["--http-port", str(port), "--http-host", "127.0.0.1"]
    ).start()
    operators.append(op)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
            return bool(response.status == 200)

    wait_for(ready, 60, ignore=(OSError,), message="the operator's /readyz")
    return base


def _delete_rollouts(cluster: Cluster, namespace: str, running: list[OperatorProcess]) -> None:
    """Let a live operator clean up what the test left; strip finalizers otherwise, so
    the namespace can go."""
    if running:
        cluster.kubectl("delete", "cro", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl(
            "wait",
            "--for=delete",
            "cro",
            "--all",
            "-n",
            namespace,
            "--timeout=30s",
            check=False,
            timeout=40,
        )
    for name in cluster.kubectl(
        "get", "cro", "-n", namespace, "-o", "name", check=False
    ).stdout.split():
        cluster.kubectl(
            "patch",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )


@pytest.fixture
def operator(
    operators: list[OperatorProcess],
    crd_installed: Cluster,
    namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(crd_installed, namespace, tmp_path / "operator.log").start()
    operators.append(op)
    yield op
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"--- operator log ({op.log_path}) ---\n{op.log()[-20000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


# ----------------------------------------------------------------------- helpers


def get_rollout(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get_json("canaryrollout", name, "-n", namespace)
    return result


def phase_of(cluster: Cluster, namespace: str, name: str) -> str:
    return str((get_rollout(cluster, namespace, name).get("status") or {}).get("phase", ""))


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phases: set[str] | str, timeout: float = 120
) -> dict[str, Any]:
    wanted = {phases} if isinstance(phases, str) else phases

    def reached() -> dict[str, Any] | None:
        body = get_rollout(cluster, namespace, name)
        return body if (body.get("status") or {}).get("phase") in wanted else None

    def describe() -> str:
        body = get_rollout(cluster, namespace, name)
        return f"{name} to reach {sorted(wanted)}; status now: {body.get('status')}"

    return wait_for(reached, timeout, interval=0.3, message=describe)


def events_of(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.get_json(
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=CanaryRollout,involvedObject.name={name}",
    )["items"]
    return sorted(items, key=lambda e: e.get("eventTime") or e.get("lastTimestamp") or "")


def canary_objects(cluster: Cluster, namespace: str) -> list[str]:
    """Every object the operator created for a canary that still exists."""
    out = cluster.kubectl(
        "get",
        "deployments,services,pods",
        "-n",
        namespace,
        "-l",
        "canary-operator.dev/role",
        "-o",
        "name",
    ).stdout.split()
    jobs = cluster.kubectl(
        "get",
        "jobs",
        "-n",
        namespace,
        "-l",
        "canary-operator.dev/purpose=test",
        "-o",
        "name",
    ).stdout.split()
    return out + jobs


def stable_image(cluster: Cluster, namespace: str, deployment: str = "web") -> str:
    body = cluster.get_json("deployment", deployment, "-n", namespace)
    return str(body["spec"]["template"]["spec"]["containers"][0]["image"])


def lease(cluster: Cluster, namespace: str, key: str = "web") -> dict[str, Any]:
    result: dict[str, Any] = cluster.get_json("lease", f"cro-lock-{key}", "-n", namespace)
    return result
