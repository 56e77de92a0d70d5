"""Every write of the operator names its field manager and carries its User-Agent
(kube/api.py): without them the API server attributes the fields to the client
library's default manager ("OpenAPI-Generator"), and server-side apply conflicts,
`kubectl get --show-managed-fields` and Argo CD's managedFieldsManagers cannot tell
the operator's fields from anyone else's."""

from __future__ import annotations

from typing import Any

import pytest

from canary_operator import __version__
from canary_operator.cli.client import CLI_FIELD_MANAGER
from canary_operator.kube.api import FIELD_MANAGER, Kube
from tests.harness.fake_api import RawResponse


class FakeApiClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self.user_agent = "OpenAPI-Generator/x/python"

    async def call_api(self, resource_path: str, method: str, **kw: Any) -> RawResponse:
        self.calls.append(
            (method, resource_path, dict(kw["query_params"]), dict(kw["header_params"]))
        )
        return RawResponse()


@pytest.mark.parametrize("manager", [FIELD_MANAGER, CLI_FIELD_MANAGER])
async def test_every_write_names_the_field_manager(manager: str) -> None:
    api = FakeApiClient()
    kube = Kube(api, manager)  # type: ignore[arg-type]
    assert api.user_agent == f"{manager}/{__version__}"
    await kube.create("/api/v1/namespaces/ns/events", {})
    await kube.replace("/apis/apps/v1/namespaces/ns/deployments/web", {})
    await kube.merge_patch("/apis/apps/v1/namespaces/ns/deployments/web", {})
    await kube.apply("/apis/apps/v1/namespaces/ns/deployments/web", {})
    await kube.apply("/apis/apps/v1/namespaces/ns/deployments/web", {}, force=False)
    methods = [c[0] for c in api.calls]
    assert methods == ["POST", "PUT", "PATCH", "PATCH", "PATCH"]
    for _method, _path, query, _headers in api.calls:
        assert query["fieldManager"] == manager
    assert api.calls[3][2].get("force") == "true" and "force" not in api.calls[4][2]
    assert api.calls[2][3]["Content-Type"] == "application/merge-patch+json"
    assert api.calls[3][3]["Content-Type"] == "application/apply-patch+yaml"
    # Reads carry no field manager.
    await kube.get("/apis/apps/v1/namespaces/ns/deployments/web")
    assert "fieldManager" not in api.calls[-1][2]
