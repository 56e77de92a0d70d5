"""kube/slim.py: the Kubernetes client's packages are lazy, so the operator does not
carry ~1,300 generated modules it never uses; what it and kopf do use is the library's
own. Each check runs in a fresh interpreter (this one imported the library long ago)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

OPERATOR = str(Path(__file__).resolve().parents[2] / "operator")


def run(code: str) -> Any:
    """Run `code` in a fresh interpreter with the operator importable; it prints JSON."""
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {OPERATOR!r})\n{code}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


LOADED = """
import json, sys
def loaded(prefix):
    return sorted(m for m in sys.modules if m.startswith(prefix))
"""


def test_the_operator_and_kopf_load_only_what_they_use() -> None:
    got = run(
        LOADED
        + """
import canary_operator.handlers, canary_operator.controller, canary_operator.cli.main
import kopf
print(json.dumps({"models": loaded("kubernetes_asyncio.client.models."),
                  "apis": loaded("kubernetes_asyncio.client.api."),
                  "all": len(loaded("kubernetes_asyncio"))}))
"""
    )
    # kopf's isinstance checks need these two model classes; nothing needs an API class.
    assert set(got["models"]) <= {
        "kubernetes_asyncio.client.models.v1_object_meta",
        "kubernetes_asyncio.client.models.v1_owner_reference",
    }
    assert got["apis"] == []
    assert got["all"] < 40  # of ~1,300 when imported eagerly


def test_names_resolve_to_the_librarys_own_objects() -> None:
    got = run(
        LOADED
        + """
import canary_operator
import kubernetes_asyncio
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.models.v1_pod import V1Pod
from kubernetes_asyncio.client.api.core_v1_api import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
checks = {
    "api_client": client.ApiClient is ApiClient,
    "model": client.V1Pod is V1Pod and client.models.V1Pod is V1Pod,
    "api": client.CoreV1Api is CoreV1Api and client.api.CoreV1Api is CoreV1Api,
    "exception": client.ApiException is ApiException,
    "config": callable(config.load_kube_config) and kubernetes_asyncio.config is config,
    "watch": hasattr(watch, "Watch"),
    "version": kubernetes_asyncio.__version__ == client.__version__,
}
async def deserialize():  # the generated client finds classes by name in client.models
    async with ApiClient() as api:
        return type(api._ApiClient__deserialize({"metadata": {"name": "p"}}, "V1Pod"))
import asyncio
checks["deserialize"] = asyncio.run(deserialize()) is V1Pod
try:
    client.NoSuchThing
    checks["missing"] = False
except AttributeError:
    checks["missing"] = True
print(json.dumps(checks))
"""
    )
    assert got == dict.fromkeys(got, True) and len(got) == 9


def test_a_process_that_imported_the_library_keeps_it_as_it_is() -> None:
    got = run(
        LOADED
        + """
import kubernetes_asyncio.client
from canary_operator.kube import slim
print(json.dumps({"installed": slim.install(),
                  "lazy": type(sys.modules["kubernetes_asyncio.client"]).__name__,
                  "models": len(loaded("kubernetes_asyncio.client.models."))}))
"""
    )
    assert got["installed"] is False and got["lazy"] == "module"
    assert got["models"] > 500
