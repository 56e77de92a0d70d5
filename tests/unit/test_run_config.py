"""`canary-operator run`: the cluster configuration is checked before kopf starts,
and `--kubeconfig`/`--context` choose what both API clients use."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from canary_operator.cli import connection
from canary_operator.cli.main import main
from canary_operator.kube.api import CONTEXT_ENV, KUBECONFIG_ENV, load_config


def kubeconfig(path: Path, current: str = "a") -> Path:
    def cluster(name: str, port: int) -> dict[str, Any]:
        return {"name": name, "cluster": {"server": f"https://127.0.0.1:{port}"}}

    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster("one", 6441), cluster("two", 6442)],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [
                    {"name": "a", "context": {"cluster": "one", "user": "u"}},
                    {"name": "b", "context": {"cluster": "two", "user": "u"}},
                ],
                "current-context": current,
            }
        )
    )
    return path


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the developer's machine: no ~/.kube/config, no KUBECONFIG, not a pod."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", KUBECONFIG_ENV, CONTEXT_ENV):
        # setenv first: monkeypatch then restores the variable's absence afterwards,
        # also when the code under test (use_config) sets it in os.environ.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(
        "kubernetes_asyncio.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
        str(tmp_path / "home" / ".kube" / "config"),
    )


def run_stderr(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["run", *args])
    return code, capsys.readouterr().err


def test_missing_kubeconfig_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = run_stderr(capsys, "--kubeconfig", str(tmp_path / "nope"))
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("canary-operator: kubeconfig ") and "no such file" in err


def test_invalid_kubeconfig(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("this: [is not a kubeconfig\n")
    code, err = run_stderr(capsys, "--kubeconfig", str(bad))
    assert code == 2 and err.count("\n") == 1
    assert "no usable Kubernetes configuration in " + str(bad) in err


def test_unknown_context(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config")
    code, err = run_stderr(capsys, "--kubeconfig", str(path), "--context", "zzz")
    assert code == 2 and err.count("\n") == 1
    assert "(context zzz)" in err


def test_no_configuration_at_all(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_stderr(capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no usable Kubernetes configuration in ~/.kube/config" in err


def test_bad_allow_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config")
    code, err = run_stderr(
        capsys, "--kubeconfig", str(path), "--allow-job-service-accounts", "a/b/c"
    )
    assert code == 2 and "--allow-job-service-accounts" in err


def test_context_selects_the_cluster(tmp_path: Path) -> None:
    path = str(kubeconfig(tmp_path / "config", current="a"))
    assert connection.check_config(path, None) == "https://127.0.0.1:6441"
    assert connection.check_config(path, "b") == "https://127.0.0.1:6442"


def test_the_choice_reaches_load_config_and_kopf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What `run` sets is what the kopf startup's `load_config()` (no arguments) and the
    kopf login handler use, even inside a pod (an explicit choice beats in-cluster)."""
    path = kubeconfig(tmp_path / "config", current="a")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "ignored"))
    registry = kopf.OperatorRegistry()
    connection.use_config(str(path), "b", registry=registry)
    assert len(registry._activities.get_all_handlers()) == 1  # the login handler

    async def hosts() -> tuple[str, Any]:
        api_client = await load_config()
        try:
            host = str(api_client.configuration.host)
        finally:
            await api_client.close()
        return host, await connection.connection_info()

    host, info = asyncio.run(hosts())
    assert os.environ[KUBECONFIG_ENV] == str(path)  # restored by the fixture afterwards
    assert host == "https://127.0.0.1:6442"
    assert info.server == "https://127.0.0.1:6442"
    assert (info.scheme, info.token) == ("Bearer", "t0ken")


def test_the_environment_is_clean_again() -> None:
    """No kubeconfig choice leaks from one test into the next (or into the operator
    processes that later tests start with this process's environment)."""
    assert KUBECONFIG_ENV not in os.environ and CONTEXT_ENV not in os.environ


@pytest.mark.parametrize("workers", ["0", "-3", "many"])
def test_workers_must_be_a_positive_number(
    capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--workers", workers])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err
