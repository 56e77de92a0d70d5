"""POST /abort/{namespace}/{name}: who may abort (TokenReview, SubjectAccessReview),
what is changed (a conditional merge patch of spec.abort), and that nothing changes
otherwise — without a cluster (aiohttp test client, an in-memory API). The same
against a real API server: e2e/test_abort_endpoint_e2e.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.cli.client import AbortRequest, request_abort, rollout_path
from canary_operator.kube.api import Conflict, Kube
from canary_operator.web import Caller, KubeAccessReview, WebState, bearer_token, build_app

ALICE = Caller(username="system:serviceaccount:apps:deployer", uid="u-1", groups=("g",))


def rollout(phase: str, abort: bool = False, version: str = "7") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web-v001",
            "namespace": "apps",
            "generation": 1,
            "resourceVersion": version,
        },
        "spec": {"abort": True} if abort else {},
        "status": {"phase": phase, "observedGeneration": 1, "run": 1},
    }


class FakeAccess:
    """Tokens it knows, and the (user, namespace, name) triples it allows."""

    def __init__(self, allowed: set[tuple[str, str, str]], error: Exception | None = None):
        self.allowed = allowed
        self.error = error
        self.asked: list[tuple[str, str, str]] = []

    async def authenticate(self, token: str) -> Caller | None:
        if self.error is not None:
            raise self.error
        return ALICE if token == "good-token" else None

    async def may_abort(self, caller: Caller, namespace: str, name: str) -> bool:
        self.asked.append((caller.username, namespace, name))
        return (caller.username, namespace, name) in self.allowed


class Aborts:
    def __init__(self, result: AbortRequest) -> None:
        self.result = result
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, namespace: str, name: str) -> AbortRequest:
        self.calls.append((namespace, name))
        return self.result


def app(access: FakeAccess, aborts: Aborts) -> TestServer:
    return TestServer(build_app(WebState(access=access, abort=aborts)))


ALLOWED = {(ALICE.username, "apps", "web-v001")}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer "}],
    ids=["none", "basic", "empty"],
)
async def test_without_a_bearer_token_401_and_nothing_happens(headers: dict[str, str]) -> None:
    access, aborts = FakeAccess(ALLOWED), Aborts(AbortRequest(True, rollout("Paused")))
    async with TestClient(app(access, aborts)) as http:
        response = await http.post("/abort/apps/web-v001", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["aborted"] is False
    assert aborts.calls == [] and access.asked == []


async def test_a_token_the_api_server_rejects_is_401() -> None:
    access, aborts = FakeAccess(ALLOWED), Aborts(AbortRequest(True, rollout("Paused")))
    async with TestClient(app(access, aborts)) as http:
        response = await http.post(
            "/abort/apps/web-v001", headers={"Authorization": "Bearer forged"}
        )
        assert response.status == 401
    assert aborts.calls == [] and access.asked == []


async def test_a_caller_who_may_not_patch_the_rollout_is_403() -> None:
    access, aborts = FakeAccess(ALLOWED), Aborts(AbortRequest(True, rollout("Paused")))
    async with TestClient(app(access, aborts)) as http:
        response = await http.post(
            "/abort/apps/web-v002", headers={"Authorization": "Bearer good-token"}
        )
        assert response.status == 403
        body = await response.json()
    assert "may not patch canaryrollouts.canary-operator.dev 'web-v002'" in body["error"]
    assert access.asked == [(ALICE.username, "apps", "web-v002")]
    assert aborts.calls == []


async def test_an_allowed_caller_aborts_with_202() -> None:
    patched = rollout("Paused", True)
    patched["metadata"]["generation"] = 2  # the abort's generation, not acted on yet
    access, aborts = FakeAccess(ALLOWED), Aborts(AbortRequest(True, patched))
    async with TestClient(app(access, aborts)) as http:
        response = await http.post(
            "/abort/apps/web-v001", headers={"authorization": "bearer good-token"}
        )
        assert response.status == 202
        assert await response.json() == {
            "aborted": True,
            "phase": "Paused",
            "requestedBy": ALICE.username,
            "name": "web-v001",
            "namespace": "apps",
        }
    assert aborts.calls == [("apps", "web-v001")]


@pytest.mark.parametrize(
    ("result", "code", "phase"),
    [
        (AbortRequest(False, rollout("Failed")), 409, "Failed"),
        (AbortRequest(False, None), 404, "NotFound"),
    ],
)
async def test_nothing_to_abort(result: AbortRequest, code: int, phase: str) -> None:
    access, aborts = FakeAccess(ALLOWED), Aborts(result)
    async with TestClient(app(access, aborts)) as http:
        response = await http.post(
            "/abort/apps/web-v001", headers={"Authorization": "Bearer good-token"}
        )
        assert response.status == code
        body = await response.json()
    assert body["aborted"] is False and body["phase"] == phase


async def test_when_the_operator_cannot_review_tokens_it_is_503_not_the_callers_fault() -> None:
    denied = ApiException(status=403, reason="cannot create tokenreviews")
    access, aborts = FakeAccess(ALLOWED, error=denied), Aborts(AbortRequest(True, None))
    async with TestClient(app(access, aborts)) as http:
        response = await http.post(
            "/abort/apps/web-v001", headers={"Authorization": "Bearer good-token"}
        )
        assert response.status == 503
        assert "cannot create tokenreviews" in (await response.json())["error"]
    assert aborts.calls == []


async def test_not_started_is_503_and_get_is_not_allowed() -> None:
    async with TestClient(TestServer(build_app(WebState()))) as http:
        assert (await http.post("/abort/apps/web-v001")).status == 503
        assert (await http.get("/abort/apps/web-v001")).status == 405


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer  abc ", "abc"),
        ("Bearer", None),
        ("Token abc", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# ------------------------------------------------------- the API requests made


class FakeKube(Kube):
    """Records the reviews created; answers with the given statuses. A rollout store
    with resourceVersion preconditions on merge patches, like the API server."""

    def __init__(self, reviews: dict[str, dict[str, Any]] | None = None) -> None:
        self.reviews = reviews or {}
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.patches: list[dict[str, Any]] = []
        self.conflicts = 0

    async def create(self, resource_path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((resource_path, body))
        return {**body, "status": self.reviews[body["kind"]]}

    async def get(self, resource_path: str) -> dict[str, Any] | None:
        found = self.objects.get(resource_path)
        return copy.deepcopy(found) if found else None

    async def merge_patch(self, resource_path: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(patch)
        current = self.objects[resource_path]
        if self.conflicts:
            self.conflicts -= 1
            current["metadata"]["resourceVersion"] = str(
                int(current["metadata"]["resourceVersion"]) + 1
            )
            raise Conflict("changed")
        assert patch["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
        current["spec"].update(patch["spec"])
        current["metadata"]["generation"] += 1
        return copy.deepcopy(current)


async def test_token_review_and_subject_access_review_requests() -> None:
    kube = FakeKube(
        {
            "TokenReview": {
                "authenticated": True,
                "user": {
                    "username": ALICE.username,
                    "uid": "u-1",
                    "groups": ["system:serviceaccounts", "g"],
                    "extra": {"authentication.kubernetes.io/pod-name": ["p"]},
                },
            },
            "SubjectAccessReview": {"allowed": True},
        }
    )
    review = KubeAccessReview(kube)
    caller = await review.authenticate("the-token")
    assert caller is not None and caller.username == ALICE.username
    assert await review.may_abort(caller, "apps", "web-v001")
    (token_path, token_review), (sar_path, sar) = kube.created
    assert token_path == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert token_review["spec"] == {"token": "the-token"}
    assert sar_path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    assert sar["spec"] == {
        "user": ALICE.username,
        "uid": "u-1",
        "groups": ["system:serviceaccounts", "g"],
        "extra": {"authentication.kubernetes.io/pod-name": ["p"]},
        "resourceAttributes": {
            "namespace": "apps",
            "verb": "patch",
            "group": "canary-operator.dev",
            "resource": "canaryrollouts",
            "name": "web-v001",
        },
    }


async def test_an_unauthenticated_token_review_is_no_caller() -> None:
    kube = FakeKube({"TokenReview": {"authenticated": False, "error": "invalid bearer token"}})
    assert await KubeAccessReview(kube).authenticate("x") is None


async def test_request_abort_patches_conditionally_and_retries_a_lost_race() -> None:
    kube = FakeKube()
    path = rollout_path("apps", "web-v001")
    kube.objects[path] = rollout("Progressing")
    kube.conflicts = 1
    result = await request_abort(kube, "apps", "web-v001")
    assert result.aborted and result.body is not None
    assert result.body["spec"] == {"abort": True}
    assert [p["metadata"]["resourceVersion"] for p in kube.patches] == ["7", "8"]
    assert all(p["spec"] == {"abort": True} for p in kube.patches)


@pytest.mark.parametrize(
    ("body", "aborted"),
    [(rollout("Succeeded"), False), (rollout("Paused", abort=True), True), (None, False)],
    ids=["ended", "already-asked", "missing"],
)
async def test_request_abort_leaves_alone_what_needs_no_patch(
    body: dict[str, Any] | None, aborted: bool
) -> None:
    kube = FakeKube()
    if body is not None:
        kube.objects[rollout_path("apps", "web-v001")] = body
    result = await request_abort(kube, "apps", "web-v001")
    assert result.aborted is aborted
    assert kube.patches == []
