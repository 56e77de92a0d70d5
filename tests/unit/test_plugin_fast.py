"""`kubectl canary list`'s fast path (cli/plugin.py, cli/lite.py): one request, the
same table as the full plugin, and none of the heavy imports that made it take
seconds (bench/bench_plugin_list.py measures it against `kubectl get cro`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from canary_operator import rollout_view
from canary_operator.api.models import TERMINAL_PHASES
from canary_operator.cli import listing, plugin
from canary_operator.engine import annotations
from tests.harness.fake_http import FakeServer, Reply

ITEM = {
    "metadata": {
        "name": "web-seed",
        "namespace": "demo",
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    },
    "spec": {"target": {"deployment": "web"}},
    "status": {
        "phase": "Progressing",
        "observedGeneration": 1,
        "stepLabel": "3/6 setWeight",
        "weight": 10,
        "queueLabel": "holding",
    },
}


def test_the_light_view_spells_the_same_names_as_the_models() -> None:
    assert {p.value for p in TERMINAL_PHASES} == rollout_view.TERMINAL
    assert rollout_view.RESUME_ANNOTATION == annotations.RESUME_ANNOTATION
    assert rollout_view.RETRY_ANNOTATION == annotations.RETRY_ANNOTATION
    assert rollout_view.PROMOTE_ANNOTATION == annotations.PROMOTE_ANNOTATION


def kubeconfig(tmp_path: Path, server: str, namespace: str = "demo") -> Path:
    file = tmp_path / "kubeconfig"
    file.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t0k3n"}}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": namespace}}
                ],
                "current-context": "x",
            }
        )
    )
    return file


async def test_list_makes_one_request_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeServer(Reply(200, {"items": [ITEM]})) as server:
        config = kubeconfig(tmp_path, server.url)
        code = await asyncio.to_thread(plugin.fast_list, ["--kubeconfig", str(config), "list"])
    assert code == 0
    assert len(server.requests) == 1
    request = server.requests[0]
    assert request.path == "/apis/canary-operator.dev/v1alpha1/namespaces/demo/canaryrollouts"
    assert request.headers["Authorization"] == "Bearer t0k3n"
    out = capsys.readouterr().out
    assert out == listing.render([ITEM], "demo") + "\n"
    assert out.split("\n")[1].split()[:6] == [
        "web-seed",
        "web",
        "Progressing",
        "3/6",
        "setWeight",
        "10%",
    ]


async def test_all_namespaces_and_api_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeServer(Reply(403, {"message": "canaryrollouts is forbidden"})) as server:
        config = kubeconfig(tmp_path, server.url)
        code = await asyncio.to_thread(
            plugin.fast_list, ["list", "-A", "--kubeconfig", str(config)]
        )
    assert server.requests[0].path == "/apis/canary-operator.dev/v1alpha1/canaryrollouts"
    assert code == 1
    assert capsys.readouterr().err == "error: permission denied: canaryrollouts is forbidden\n"


@pytest.mark.parametrize(
    "argv",
    [["list", "-w"], ["list", "-o", "json"], ["status", "web"], ["list", "--help"], []],
)
def test_anything_but_a_plain_list_goes_to_the_full_plugin(argv: list[str]) -> None:
    assert plugin.fast_list(argv) is None


def test_an_auth_provider_goes_to_the_full_plugin(tmp_path: Path) -> None:
    config = kubeconfig(tmp_path, "https://127.0.0.1:1")
    doc = yaml.safe_load(config.read_text())
    doc["users"][0]["user"] = {"auth-provider": {"name": "oidc"}}
    config.write_text(yaml.safe_dump(doc))
    assert plugin.fast_list(["list", "--kubeconfig", str(config)]) is None


def test_the_fast_path_imports_no_heavy_module(tmp_path: Path) -> None:
    """What made `list` slow: importing the kubernetes client, aiohttp and pydantic."""
    config = kubeconfig(tmp_path, "http://127.0.0.1:9")  # nothing listens: exit 1, fast
    script = (
        "import sys\n"
        "from canary_operator.cli import plugin\n"
        f"code = plugin.fast_list(['list', '--kubeconfig', {str(config)!r}])\n"
        "heavy = sorted(m for m in ('kubernetes_asyncio', 'aiohttp', 'pydantic', 'kopf')"
        " if m in sys.modules)\n"
        "print(json.dumps([code, heavy]) if (json := __import__('json')) else '')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    code, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 1  # connection refused, said in one line
    assert "cannot reach the Kubernetes API" in out.stderr
    assert heavy == []


KUBECONFIGS = [
    # as kubectl writes it (items at the key's indent)
    """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: QUJD
    server: https://127.0.0.1:6443
  name: local
contexts:
- context:
    cluster: local
    namespace: demo
    user: admin
  name: local
current-context: local
kind: Config
preferences: {}
users:
- name: admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
""",
    # items indented under the key, quoted scalars, comments, booleans
    """# hand written
apiVersion: "v1"
kind: Config
current-context: 'dev'
clusters:
  - name: dev
    cluster:
      server: "https://[::1]:6443"
      insecure-skip-tls-verify: true
users:
  - name: me
    user:
      token: abc  # a comment
contexts:
  - name: dev
    context: {cluster: dev, user: me}
""",
]


@pytest.mark.parametrize("text", KUBECONFIGS[:1])
def test_the_kubeconfig_reader_agrees_with_yaml(text: str) -> None:
    from canary_operator.cli import lite

    assert lite.parse_kubeconfig(text) == yaml.safe_load(text)


def test_the_kubeconfig_reader_agrees_on_indented_lists_and_refuses_flow_style() -> None:
    from canary_operator.cli import lite

    block = KUBECONFIGS[1].replace(
        "    context: {cluster: dev, user: me}\n",
        "    context:\n      cluster: dev\n      user: me\n",
    )
    assert lite.parse_kubeconfig(block) == yaml.safe_load(block)
    with pytest.raises(lite.Unsupported):
        lite.parse_kubeconfig(KUBECONFIGS[1])  # flow mapping: handed to the full client


def test_age_matches_kubectl_units() -> None:
    t0 = listing.epoch("2026-01-01T00:00:00Z")
    assert t0 == 1767225600  # date -u -d 2026-01-01 +%s
    assert listing.epoch("2024-02-29T12:34:56Z") == 1709210096
    assert listing.age("2026-01-01T00:00:00Z", t0 + 42) == "42s"
    assert listing.age("2026-01-01T00:00:00Z", t0 + 300) == "5m"
    assert listing.age("2026-01-01T00:00:00Z", t0 + 3 * 3600) == "3h"
    assert listing.age("2026-01-01T00:00:00Z", t0 + 2 * 86400) == "2d"


def test_a_json_kubeconfig_is_read_too() -> None:
    from canary_operator.cli import lite

    text = '{"apiVersion": "v1", "clusters": [{"name": "c", "cluster": {"server": "https://a"}}]}'
    assert lite.parse_kubeconfig(text) == yaml.safe_load(text)
