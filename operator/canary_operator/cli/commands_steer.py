"""`kubectl canary` commands that steer a rollout: abort, pause, resume, promote, retry."""

from __future__ import annotations

import argparse

from canary_operator.api.models import Phase
from canary_operator.cli import client
from canary_operator.cli.client import CliError, Session
from canary_operator.cli.status_view import recorded_phase
from canary_operator.cli.steps import raw_steps
from canary_operator.engine.annotations import ALLOW_OLDER_ANNOTATION
from canary_operator.kube.api import JsonObj
from canary_operator.rollout_view import (
    PROMOTE_ANNOTATION,
    RESUME_ANNOTATION,
    RETRY_ANNOTATION,
    TERMINAL,
)


def _indefinite_pause(body: JsonObj, index: int | None) -> bool:
    steps = raw_steps(body)
    if index is None or index >= len(steps):
        return False
    items = [steps[index], *(steps[index].get("parallel") or [])]
    return any("pause" in i and not (i["pause"] or {}).get("duration") for i in items)


async def _patch(session: Session, body: JsonObj, patch: JsonObj) -> JsonObj:
    meta = body["metadata"]
    result: JsonObj = await client.call(
        session,
        session.kube.merge_patch(client.rollout_path(meta["namespace"], meta["name"]), patch),
    )
    return result


async def _patch_read(
    session: Session, body: JsonObj, annotations: dict[str, str | None], spec: JsonObj
) -> JsonObj:
    """Annotations whose value was computed from `body` (a run number): written only if
    the rollout has not changed since it was read (409 otherwise)."""
    meta = {"annotations": annotations, "resourceVersion": body["metadata"]["resourceVersion"]}
    return await _patch(session, body, {"metadata": meta, "spec": spec})


async def cmd_abort(session: Session, args: argparse.Namespace) -> int:
    body = await client.get_rollout(session, args.name)
    if recorded_phase(body) in TERMINAL:
        print(
            f"canaryrollout/{args.name} already finished ({recorded_phase(body)}); nothing to abort"
        )
        return 0
    await _patch(session, body, {"spec": {"abort": True}})
    print(f"canaryrollout/{args.name} abort requested; its cleanup runs next")
    return 0


async def _unfinished(session: Session, name: str, verb: str) -> JsonObj:
    """The rollout, or a CliError when it has ended (nothing to `verb`)."""
    body = await client.get_rollout(session, name)
    if recorded_phase(body) in TERMINAL:
        raise CliError(
            f"canaryrollout/{name} is {recorded_phase(body)}; there is nothing to {verb}"
        )
    return body


async def cmd_pause(session: Session, args: argparse.Namespace) -> int:
    body = await _unfinished(session, args.name, "pause")
    await _patch(session, body, {"spec": {"paused": True}})
    print(f"canaryrollout/{args.name} paused (spec.paused=true)")
    return 0


async def cmd_resume(session: Session, args: argparse.Namespace) -> int:
    body = await _unfinished(session, args.name, "resume")
    current = (body.get("status") or {}).get("currentStep")
    patch: JsonObj = {"spec": {"paused": False}}
    done = ["spec.paused=false"]
    if _indefinite_pause(body, current):
        assert current is not None
        run = (body.get("status") or {}).get("run") or 1
        patch["metadata"] = {"annotations": {RESUME_ANNOTATION: f"{current + 1}@{run}"}}
        done.append(f"pause step {current + 1} released")
    await _patch(session, body, patch)
    print(f"canaryrollout/{args.name} resumed ({', '.join(done)})")
    return 0


async def cmd_promote(session: Session, args: argparse.Namespace) -> int:
    body = await client.get_rollout(session, args.name)
    phase = recorded_phase(body)
    if phase in TERMINAL or phase == Phase.CLEANING_UP:
        raise CliError(f"canaryrollout/{args.name} is {phase}; only a running rollout is promoted")
    run = (body.get("status") or {}).get("run") or 1
    await _patch_read(session, body, {PROMOTE_ANNOTATION: str(run)}, {"paused": False})
    print(f"canaryrollout/{args.name} run {run}: skipping the remaining steps to promotion")
    return 0


async def cmd_retry(session: Session, args: argparse.Namespace) -> int:
    body = await client.get_rollout(session, args.name)
    phase = recorded_phase(body)
    if phase not in TERMINAL:
        raise CliError(
            f"canaryrollout/{args.name} is {phase}; retry starts a new run of a finished one"
        )
    run = int((body.get("status") or {}).get("run") or 0) + 1
    # The resume annotation names a step, not a run: a stale one would let the new run
    # skip its pause steps.
    annotations = {RETRY_ANNOTATION: str(run), RESUME_ANNOTATION: None}
    # Only the run asked for may be older than what is live: the annotation names it.
    annotations[ALLOW_OLDER_ANNOTATION] = str(run) if args.allow_older else None
    await _patch_read(session, body, annotations, {"abort": False})
    older = " (allowed to roll out a version older than the live one)" if args.allow_older else ""
    print(
        f"canaryrollout/{args.name} retry requested: run {run} starts{older} "
        "(it queues for the lock)"
    )
    return 0
