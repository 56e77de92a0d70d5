"""The operator and the waiter run from the image `make image` builds, against the
local cluster: the image's entrypoint, user and environment, a read-only root
filesystem and a writable /tmp, as the install manifests run it (the kwok nodes run
no containers, so the process is started here the way a runtime would)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import manifests as m
from e2e.conftest import wait_phase
from tests.harness.cluster import Cluster
from tests.harness.image import Image, build_image, image_command, unpack

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="running the image needs root (as in CI)"),
    pytest.mark.needs_build("image"),
]
UID = 65532


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image: Image = build_image()
    return unpack(image, tmp_path_factory.mktemp("image") / "bundle")


@pytest.fixture
def image_tmp(crd_installed: Cluster, tmp_path: Path) -> Path:
    """The container's /tmp (an emptyDir in the Deployment), holding a self-contained
    kubeconfig readable by the image's user only."""
    tmp = tmp_path / "container-tmp"
    tmp.mkdir()
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        crd_installed.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout
    )
    for path in (tmp, kubeconfig):
        os.chown(path, UID, UID)
    tmp.chmod(0o700)
    kubeconfig.chmod(0o600)
    return tmp


@pytest.fixture
def image_operator(
    bundle: Path, image_tmp: Path, namespace: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    command, env = image_command(
        bundle,
        ["run", "-n", namespace, "--http-port", "0", "--kubeconfig", "/tmp/kubeconfig"],
        tmp=image_tmp,
    )
    with (tmp_path / "operator.log").open("wb") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_operator_and_waiter_from_the_image(
    crd_installed: Cluster,
    namespace: str,
    bundle: Path,
    image_tmp: Path,
    image_operator: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    crd_installed.apply(m.app(), namespace)
    crd_installed.apply(
        m.rollout("web-v001", [{"canary": {"replicas": 1}}, m.job_test("smoke"), {"promote": {}}]),
        namespace,
    )
    command, env = image_command(
        bundle,
        ["wait", "web-v001", "-n", namespace, "--kubeconfig", "/tmp/kubeconfig", "--timeout", "2m"],
        tmp=image_tmp,
    )
    waiter = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    log = (tmp_path / "operator.log").read_text(errors="replace")
    assert waiter.returncode == 0, waiter.stdout + waiter.stderr + log[-5000:]
    assert "SPINNAKER_PROPERTY_PHASE=Succeeded" in waiter.stdout
    body = wait_phase(crd_installed, namespace, "web-v001", "Succeeded", timeout=10)
    assert body["status"]["outcome"]["result"] == "Succeeded"
    assert image_operator.poll() is None, log[-5000:]
