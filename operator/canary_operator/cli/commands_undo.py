"""`kubectl canary undo TARGET [--to-revision N]`: put back a version the target ran
before its last promotion, from the rollback window kept on it
(engine/rollback_window.py).

Like `reset`, it creates a CanaryRollout (`undo-<target>-<random>`, labelled
canary-operator.dev/undo=true) that goes through the normal lifecycle: it queues for
the target's lock like any run, its one step promotes the kept template (as fast as
the Deployment's own rollout allows), and its cleanup is the usual one. Its annotation
canary-operator.dev/undo names the run whose promotion it undoes: the operator refuses
it (UndoOutdated, nothing changed) if the target was promoted again before it ran, and
never refuses it as older than the live version (engine/undo_run.py)."""

from __future__ import annotations

import argparse
import secrets
from datetime import UTC, datetime

from canary_operator.api import models
from canary_operator.cli import client
from canary_operator.cli.client import CliError, Session
from canary_operator.cli.made_rollouts import create_then_wait
from canary_operator.engine import rollback_window
from canary_operator.engine.annotations import UNDO_ANNOTATION
from canary_operator.kube import objects
from canary_operator.kube.api import JsonObj, path
from canary_operator.lock.keys import lock_keys
from canary_operator.lock.lease import lease_name
from canary_operator.rollout_view import RESET_LABEL, UNDO_LABEL, effective_phase

# Copied from the rollout that promoted what is undone (else the target's latest):
# the undo takes the same lock, routes the same way, and keeps the same window.
COPIED = ("lockGroup", "trafficRouting", "rollbackWindow")


def kept_template(template: JsonObj) -> JsonObj:
    """A kept pod template as spec.template takes it (metadata: labels and annotations)."""
    meta = template.get("metadata") or {}
    kept: JsonObj = {"spec": template.get("spec") or {}}
    picked = {k: meta[k] for k in ("labels", "annotations") if meta.get(k)}
    if picked:
        kept["metadata"] = picked
    return kept


def _model(rollouts: list[JsonObj], target: str, promoted_by: str) -> JsonObj | None:
    """The rollout whose run promoted what is live, else the target's latest (resets
    apart: they copy theirs)."""
    mine = [
        b
        for b in rollouts
        if (b.get("spec") or {}).get("target", {}).get("deployment") == target
        and not (b["metadata"].get("labels") or {}).get(RESET_LABEL)
    ]
    uid = promoted_by.split("/", 1)[0]
    promoting = [b for b in mine if b["metadata"].get("uid") == uid]
    mine.sort(key=lambda b: b["metadata"].get("creationTimestamp", ""))
    chosen = promoting or mine
    return chosen[-1] if chosen else None


def undo_rollout(
    namespace: str, target: JsonObj, rollouts: list[JsonObj], revision: int | None, now: datetime
) -> tuple[JsonObj, str]:
    """The undo rollout for `target` as read and what it puts back (e.g. "revision 3
    (web:1.0)"), or a CliError saying why there is none (nothing is created then)."""
    name = target["metadata"]["name"]
    annotations = target["metadata"].get("annotations") or {}
    promoted_by = annotations.get(objects.PROMOTED_BY)
    if not promoted_by:
        raise CliError(
            f"deployment {name} carries no promotion by canary-operator (annotation "
            f"{objects.PROMOTED_BY}): there is nothing to undo; nothing was changed"
        )
    kept = rollback_window.read(annotations.get(rollback_window.WINDOW_ANNOTATION))
    wanted = None if revision is None else str(revision)
    try:
        entry = rollback_window.choose(kept, wanted, now, name)
    except rollback_window.WindowError as exc:
        raise CliError(str(exc)) from exc
    model = _model(rollouts, name, promoted_by)
    spec: JsonObj = {
        "target": (model or {}).get("spec", {}).get("target") or {"deployment": name},
        "template": kept_template(entry["template"]),
        "steps": [{"name": "undo", "promote": {}}],
    }
    for key in COPIED:
        if model is not None and key in model["spec"]:
            spec[key] = model["spec"][key]
    body = {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "metadata": {
            "name": f"undo-{name[:40].rstrip('-.')}-{secrets.token_hex(3)}",
            "namespace": namespace,
            "labels": {UNDO_LABEL: "true"},
            "annotations": {UNDO_ANNOTATION: promoted_by},
        },
        "spec": spec,
    }
    return body, rollback_window.describe(entry)


async def cmd_undo(session: Session, args: argparse.Namespace) -> int:
    ns = session.namespace
    if args.to_revision is not None and args.to_revision < 1:
        raise CliError(f"--to-revision {args.to_revision}: a revision is a number from 1")
    target = await client.call(
        session, session.kube.get(path("apps", "v1", "deployments", ns, args.target))
    )
    if target is None:
        raise CliError(f'deployment "{args.target}" not found in namespace "{ns}"')
    rollouts = await client.list_rollouts(session, ns)
    body, back_to = undo_rollout(ns, target, rollouts, args.to_revision, datetime.now(UTC))
    name = body["metadata"]["name"]
    spec = models.CanaryRolloutSpec.model_validate(body["spec"])
    locks = ", ".join(lease_name(key) for key in lock_keys(spec))
    last = await create_then_wait(
        session,
        body,
        f"canaryrollout/{name} created: {args.target} back to {back_to} under lock {locks} "
        "(it queues for the lock like any run)",
        "undo",
        args,
    )
    if isinstance(last, int):
        return last
    outcome = (last.get("status") or {}).get("outcome") or {}
    phase = effective_phase(last)
    print(f"undo of {args.target}: {phase} ({outcome.get('result')}: {outcome.get('message')})")
    return 0 if phase == "Succeeded" else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="the target Deployment")
    p.add_argument(
        "--to-revision",
        type=int,
        default=None,
        help="the Deployment revision to go back to, among those kept (default: the "
        "version live before the last promotion)",
    )
    p.add_argument("--timeout", default="10m", help="how long to wait for the undo")
    p.add_argument("--no-wait", action="store_true", help="create the undo rollout and exit")
