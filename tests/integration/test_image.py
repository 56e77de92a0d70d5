"""The OCI image `make image` builds (hack/image/build.sh): unpacked with umoci, its
entrypoint runs the operator from a read-only root filesystem as the non-root user
of its config, and the install manifests name a tag the image carries."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness.image import Image, build_image, run_in_image, runtime_config, unpack

REPO = Path(__file__).resolve().parents[2]
UID = 65532

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="building and unpacking the image needs root (as in CI)"
    ),
    pytest.mark.needs_build("image"),
]


@pytest.fixture(scope="module")
def image() -> Image:
    return build_image()


@pytest.fixture(scope="module")
def bundle(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = unpack(image, tmp_path_factory.mktemp("bundle") / "b")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_image_config_runs_the_operator_as_non_root(bundle: Path) -> None:
    process = runtime_config(bundle)["process"]
    assert process["user"]["uid"] == UID and process["user"]["gid"] == UID
    assert process["args"] == [
        "/usr/bin/python3",
        "-m",
        "canary_operator.cli.main",
        "run",
        "--leader-elect",
        "--http-port=8080",
        "--log-format=json",
    ]
    passwd = (bundle / "rootfs" / "etc" / "passwd").read_text()
    assert f"nonroot:x:{UID}:{UID}:" in passwd


def test_the_entrypoint_runs_from_a_read_only_root(bundle: Path) -> None:
    result = run_in_image(bundle, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: canary-operator" in result.stdout
    run_help = run_in_image(bundle, "run", "--help")
    assert run_help.returncode == 0, run_help.stderr
    for flag in ("--kubeconfig", "--context", "--allow-job-service-accounts"):
        assert flag in run_help.stdout
    waiter = run_in_image(bundle, "wait", "--help")
    assert waiter.returncode == 0 and "--timeout" in waiter.stdout, waiter.stderr


def test_the_operator_in_the_image_checks_its_config_before_starting(bundle: Path) -> None:
    """`run` itself (kopf, the clients, our code) loads and fails cleanly: no cluster
    configuration inside the image."""
    result = run_in_image(bundle, "run", "--kubeconfig", "/nonexistent")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == "canary-operator: kubeconfig /nonexistent: no such file"


def test_every_module_imports_in_the_image(bundle: Path) -> None:
    """All dependencies are in the image (they are installed without resolution)."""
    code = (
        "import importlib, pkgutil, canary_operator as p; "
        "names = [m.name for m in pkgutil.walk_packages(p.__path__, 'canary_operator.')]; "
        "[importlib.import_module(n) for n in names]; print(len(names))"
    )
    result = run_in_image(bundle, "-c", code, entrypoint=["/usr/bin/python3"])
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 30


def test_no_bytecode_is_missing(bundle: Path) -> None:
    """Read-only at run time: every module of the operator was compiled at build time."""
    site = bundle / "rootfs" / "opt" / "canary-operator" / "site" / "canary_operator"
    sources = {p.relative_to(site).with_suffix("") for p in site.rglob("*.py")}
    compiled = {
        (p.parent.parent / p.name.split(".")[0]).relative_to(site)
        for p in site.rglob("__pycache__/*.pyc")
    }
    assert sources and sources <= compiled


def test_the_tag_is_the_content_hash_and_the_manifests_use_the_version_tag(
    image: Image,
) -> None:
    index = json.loads((image.layout / "index.json").read_text())
    tags = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    version, digest_prefix = image.tag.split("-", 1)
    assert version == image.version
    assert tags[image.tag] == tags[version]
    assert tags[image.tag].removeprefix("sha256:").startswith(digest_prefix)
    assert image.archive.is_file()
    # kustomize base and chart values name the image `canary-operator:<version>`.
    base = yaml.safe_load((REPO / "manifests" / "base" / "kustomization.yaml").read_text())
    [override] = base["images"]
    assert (override["newName"], override["newTag"]) == ("canary-operator", version)
    values = yaml.safe_load((REPO / "charts" / "canary-operator" / "values.yaml").read_text())
    assert (values["image"]["repository"], values["image"]["tag"]) == ("canary-operator", version)
    print(
        f"image {image.tag}: {image.archive.stat().st_size // 2**20} MiB, "
        f"built (or found cached) in {image.build_seconds:.0f} s"
    )
