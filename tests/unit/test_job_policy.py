"""The ServiceAccount policy for the Jobs a rollout creates (api/job_policy.py)."""

from __future__ import annotations

from typing import Any

import pytest

from canary_operator.api.job_policy import (
    ALLOW_ENV,
    AllowedServiceAccounts,
    job_service_account_problems,
)
from canary_operator.api.models import CanaryRolloutSpec


def job(account: str | None = None, *, deprecated: str | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [{"name": "t", "image": "busybox"}]}
    if account is not None:
        pod["serviceAccountName"] = account
    if deprecated is not None:
        pod["serviceAccount"] = deprecated
    return {"spec": {"template": {"spec": pod}}}


def spec(
    steps: list[dict[str, Any]], cleanup: list[dict[str, Any]] | None = None
) -> CanaryRolloutSpec:
    body: dict[str, Any] = {
        "target": {"deployment": "web"},
        "images": [{"container": "app", "image": "web:2"}],
        "steps": steps,
    }
    if cleanup is not None:
        body["cleanup"] = cleanup
    return CanaryRolloutSpec.model_validate(body)


NONE = AllowedServiceAccounts()


def test_jobs_without_an_account_or_with_default_are_fine() -> None:
    rollout = spec(
        [{"canary": {}}, {"test": {"job": job()}}, {"test": {"job": job("default")}}],
        cleanup=[{"job": job()}],
    )
    assert job_service_account_problems(rollout, "shop", NONE) == []


@pytest.mark.parametrize(
    ("rollout", "where"),
    [
        (spec([{"test": {"job": job("deployer")}}]), "spec.steps[0].test.job"),
        (
            spec(
                [{"canary": {}}, {"parallel": [{"pause": {}}, {"test": {"job": job("deployer")}}]}]
            ),
            "spec.steps[1].parallel[1].test.job",
        ),
        (spec([{"canary": {}}], cleanup=[{"job": job("deployer")}]), "spec.cleanup[0].job"),
        (spec([{"test": {"job": job(deprecated="deployer")}}]), "spec.steps[0].test.job"),
    ],
)
def test_a_job_naming_another_account_is_refused_by_default(
    rollout: CanaryRolloutSpec, where: str
) -> None:
    problems = job_service_account_problems(rollout, "shop", NONE)
    assert len(problems) == 1
    assert problems[0].startswith(f"{where}: the Job may not run as ServiceAccount 'deployer'")
    assert "--allow-job-service-accounts=shop/deployer" in problems[0]


def test_the_deprecated_alias_cannot_hide_a_second_account() -> None:
    rollout = spec([{"test": {"job": job("tester", deprecated="deployer")}}])
    allowed = AllowedServiceAccounts.parse("tester")
    problems = job_service_account_problems(rollout, "shop", allowed)
    assert len(problems) == 1 and "'deployer'" in problems[0]


def test_allowed_by_name_in_any_namespace_or_by_namespace_and_name() -> None:
    rollout = spec([{"test": {"job": job("tester")}}, {"test": {"job": job("smoke")}}])
    allowed = AllowedServiceAccounts.parse(" tester , shop/smoke,")
    assert job_service_account_problems(rollout, "shop", allowed) == []
    elsewhere = job_service_account_problems(rollout, "billing", allowed)
    assert len(elsewhere) == 1 and "'smoke'" in elsewhere[0]
    assert "'default', 'shop/smoke', 'tester'" in elsewhere[0]


def test_every_offending_job_is_reported() -> None:
    rollout = spec(
        [{"test": {"job": job("a")}}, {"test": {"job": job()}}],
        cleanup=[{"job": job("b")}, {"webhook": {"url": "http://x"}}],
    )
    problems = job_service_account_problems(rollout, "shop", NONE)
    assert [p.split(":")[0] for p in problems] == ["spec.steps[0].test.job", "spec.cleanup[0].job"]


@pytest.mark.parametrize("bad", ["a/b/c", "/x", "ns/", "a,/b"])
def test_malformed_entries_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="not a ServiceAccount"):
        AllowedServiceAccounts.parse(bad)


def test_from_env() -> None:
    assert AllowedServiceAccounts.from_env({}) == NONE
    allowed = AllowedServiceAccounts.from_env({ALLOW_ENV: "ci/tester"})
    assert allowed.allows("ci", "tester")
    assert not allowed.allows("prod", "tester")
    assert allowed.allows("prod", "default")
