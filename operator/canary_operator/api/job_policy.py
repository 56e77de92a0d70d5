"""Which ServiceAccounts the Jobs a rollout asks for may run under.

Whoever may create a CanaryRollout has the operator create test and cleanup Jobs. If
those Jobs could name any ServiceAccount of the namespace, `create canaryrollouts`
would be as strong as impersonating every account there (escalation through the
operator). So a Job's pod template may name a ServiceAccount only if the operator's
configuration allows it (`canary-operator run --allow-job-service-accounts`); without
one it runs as the namespace's `default` account, as a Job created by the user would.

Pure functions only: the reconciler calls `job_service_account_problems` in its
pre-run validation and, if it returns anything, fails the rollout before it creates
any object.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from canary_operator.api.models import CanaryRolloutSpec, JobTemplate

# The environment variable `canary-operator run --allow-job-service-accounts` sets.
ALLOW_ENV = "CANARY_OPERATOR_ALLOW_JOB_SERVICE_ACCOUNTS"
DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True)
class AllowedServiceAccounts:
    """Accounts Jobs may name: `name` (in any watched namespace) or `namespace/name`."""

    entries: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> AllowedServiceAccounts:
        """A comma-separated list; blanks are ignored. Raises ValueError on a bad entry."""
        entries: set[str] = set()
        for raw in (text or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            parts = entry.split("/")
            if len(parts) > 2 or not all(parts):
                raise ValueError(f"not a ServiceAccount name or namespace/name: {entry!r}")
            entries.add(entry)
        return cls(frozenset(entries))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AllowedServiceAccounts:
        env = os.environ if environ is None else environ
        return cls.parse(env.get(ALLOW_ENV))

    def allows(self, namespace: str, account: str) -> bool:
        return (
            account == DEFAULT_ACCOUNT
            or account in self.entries
            or f"{namespace}/{account}" in self.entries
        )


def _jobs(spec: CanaryRolloutSpec) -> Iterator[tuple[str, JobTemplate]]:
    """Every Job the rollout may create, with the field path that names it."""
    for i, step in enumerate(spec.steps):
        if step.test is not None and step.test.job is not None:
            yield f"spec.steps[{i}].test.job", step.test.job
        for n, item in enumerate(step.parallel or []):
            if item.test is not None and item.test.job is not None:
                yield f"spec.steps[{i}].parallel[{n}].test.job", item.test.job
    for i, cleanup in enumerate(spec.cleanup or []):
        if cleanup.job is not None:
            yield f"spec.cleanup[{i}].job", cleanup.job


def _pod_spec(job: JobTemplate) -> dict[str, Any]:
    template = (job.spec.model_extra or {}).get("template")
    pod = template.get("spec") if isinstance(template, dict) else None
    return pod if isinstance(pod, dict) else {}


def _named_accounts(pod: dict[str, Any]) -> list[str]:
    # `serviceAccount` is the deprecated alias the API server still honours.
    names = [pod.get("serviceAccountName"), pod.get("serviceAccount")]
    return sorted({n for n in names if isinstance(n, str) and n})


def job_service_account_problems(
    spec: CanaryRolloutSpec, namespace: str, allowed: AllowedServiceAccounts
) -> list[str]:
    """One message per Job whose pod names a ServiceAccount the operator may not use.

    Empty when every Job runs as the namespace's `default` account or as an allowed
    one. The messages name the field and say how to allow the account."""
    problems: list[str] = []
    for where, job in _jobs(spec):
        for account in _named_accounts(_pod_spec(job)):
            if not allowed.allows(namespace, account):
                problems.append(
                    f"{where}: the Job may not run as ServiceAccount {account!r}: the operator "
                    f"allows only {_describe(allowed)} (an operator admin can add it with "
                    f"--allow-job-service-accounts={namespace}/{account})"
                )
    return problems


def _describe(allowed: AllowedServiceAccounts) -> str:
    names = sorted(allowed.entries)
    return "'default'" + (", " + ", ".join(repr(n) for n in names) if names else "")
