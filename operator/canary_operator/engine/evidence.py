"""The evidence of failed test Jobs: their log tails, kept in the step status and said
in a Warning Event before cleanup deletes the Jobs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from canary_operator.api.models import (
    CanaryRolloutStatus,
    ChildStepStatus,
    ContainerLogTail,
    StepPhase,
)
from canary_operator.engine.context import Context
from canary_operator.engine.types import JobView


def step_statuses(status: CanaryRolloutStatus) -> Iterator[ChildStepStatus]:
    for st in status.steps or []:
        yield st
        yield from st.children or []


def jobs_wanting_logs(status: CanaryRolloutStatus, jobs: Mapping[str, JobView]) -> list[str]:
    """Test Jobs whose log tails are to be read before cleanup deletes them: the Job
    failed, or its step failed (timed out) with the Job still there, and the status
    does not hold its logs yet."""
    wanted = []
    for st in step_statuses(status):
        job = jobs.get(st.job or "")
        if job is None or job.cleanup or st.logs is not None:
            continue
        if job.failed or st.phase == StepPhase.FAILED:
            wanted.append(job.name)
    return wanted


LOG_EVENT_ROOM = 700  # of an Event's 1024 characters, for the log tail itself


def record_evidence(ctx: Context) -> None:
    """Keep the log tails of failed test Jobs in the step status, and say so in a
    Warning Event, before cleanup deletes the Jobs."""
    for st in step_statuses(ctx.status):
        if st.phase != StepPhase.FAILED or not st.job or st.logs is not None:
            continue
        tails = ctx.obs.job_logs.get(st.job)
        if tails is None:
            continue
        st.logs = [t.model_copy() for t in tails]
        ctx.event("TestLogs", evidence_message(st.name, st.job, st.logs), warning=True)


def evidence_message(step: str, job: str, tails: list[ContainerLogTail]) -> str:
    if not tails:
        return f"{step}: Job {job} failed; it left no pod logs"
    parts = []
    room = LOG_EVENT_ROOM // len(tails)
    for t in tails:
        where = f"{t.pod}/{t.container}"
        if t.error:
            parts.append(f"{where}: logs unavailable ({t.error})")
        else:
            text = t.tail.rstrip("\n")
            shown = text if len(text) <= room else "..." + text[-room:]
            parts.append(f"{where}:\n{shown}")
    return f"{step}: Job {job} failed; log tail of " + "\n".join(parts)
