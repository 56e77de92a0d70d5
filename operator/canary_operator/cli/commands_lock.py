"""`kubectl canary` commands about a target's lock: lock (who holds it, who waits) and
reset (the target's built-in cleanup, run under its lock)."""

from __future__ import annotations

import argparse
import json
import secrets
from dataclasses import replace

from pydantic import ValidationError

from canary_operator.api import models
from canary_operator.api.models import CanaryRolloutSpec, Phase
from canary_operator.cli import client
from canary_operator.cli.client import CliError, Session
from canary_operator.cli.made_rollouts import create_then_wait
from canary_operator.cli.status_view import recorded_phase
from canary_operator.index import candidate
from canary_operator.kube.api import JsonObj, path
from canary_operator.lock import queue
from canary_operator.lock.keys import lock_keys, target_key
from canary_operator.lock.lease import HISTORY_ANNOTATION, HOLDER_ANNOTATION, lease_name
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import uid_of
from canary_operator.rollout_view import RESET_LABEL, effective_phase


def _spec(body: JsonObj) -> CanaryRolloutSpec | None:
    try:
        return CanaryRolloutSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None


def _candidates(items: list[JsonObj], lock_key: str) -> list[tuple[Candidate, JsonObj]]:
    found = []
    for body in items:
        spec = _spec(body)
        if spec is None or lock_key not in lock_keys(spec):
            continue
        seen = candidate(body)
        if seen is not None:
            found.append((replace(seen, phase=Phase(recorded_phase(body))), body))
    return found


async def cmd_lock(session: Session, args: argparse.Namespace) -> int:
    ns = session.namespace
    rollouts = await client.list_rollouts(session, ns)
    # A lock group's key as given; a target Deployment's as its lock is named.
    groups = {(b.get("spec") or {}).get("lockGroup") for b in rollouts}
    key = args.target if args.target in groups else target_key(args.target)
    name = lease_name(key)
    lease = await client.call(
        session, session.kube.get(path("coordination.k8s.io", "v1", "leases", ns, name))
    )
    found = _candidates(rollouts, key)
    candidates = [c for c, _ in found]
    spec = (lease or {}).get("spec") or {}
    annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
    holder_identity = spec.get("holderIdentity")
    holder_uid = uid_of(holder_identity)
    by_uid = {c.uid: c for c in candidates}
    print(f"Lock:       {name}  (namespace {ns}, key {key})")
    if lease is None:
        print("Holder:     none (no rollout has taken this lock yet)")
    elif not holder_identity:
        print(f"Holder:     none (free; {spec.get('leaseTransitions', 0)} acquisitions so far)")
    else:
        holder = by_uid.get(holder_uid or "")
        who = annotations.get(HOLDER_ANNOTATION) or holder_identity
        phase = holder.phase.value if holder else "not found: may be taken over"
        print(f"Holder:     {who} ({phase})  token {spec.get('leaseTransitions', 0)}")
        acquired, renewed = spec.get("acquireTime", "-"), spec.get("renewTime", "-")
        print(f"            acquired {acquired}, renewed {renewed}")
    waiting = [
        (queue.view(c, candidates, holder_uid, lock_free=False), c)
        for c in queue.order(candidates, holder_uid)
    ]
    waiting.sort(key=lambda pair: pair[0].position)
    print(f"Waiting:    {len(waiting) or 'none'}")
    for view, c in waiting:
        note = f"  superseded by {view.superseded_by}" if view.superseded_by else ""
        owes = "  (owes a cleanup)" if c.owes_cleanup else ""
        print(
            f"  {view.position}. {c.name:<30} {c.phase.value:<12} {c.policy.value:<9} "
            f"applied {c.applied}{owes}{note}"
        )
    history = json.loads(annotations.get(HISTORY_ANNOTATION) or "[]")
    if history:
        print(f"History (last {min(len(history), args.history)}):")
        for entry in history[-args.history :]:
            released = entry.get("released") or "holding"
            print(
                f"  token {entry.get('token', '?'):>3}  {entry.get('holder', '?'):<30} "
                f"acquired {entry.get('acquired', '-')}  released {released}"
            )
    return 0


async def cmd_reset(session: Session, args: argparse.Namespace) -> int:
    ns = session.namespace
    target = await client.call(
        session, session.kube.get(path("apps", "v1", "deployments", ns, args.target))
    )
    if target is None:
        raise CliError(f'deployment "{args.target}" not found in namespace "{ns}"')
    previous = [
        b
        for b in await client.list_rollouts(session, ns)
        if (b.get("spec") or {}).get("target", {}).get("deployment") == args.target
        and not (b["metadata"].get("labels") or {}).get(RESET_LABEL)
    ]
    previous.sort(key=lambda b: b["metadata"].get("creationTimestamp", ""))
    template = previous[-1]["spec"] if previous else {"target": {"deployment": args.target}}
    spec: JsonObj = {
        "target": template["target"],
        "images": [
            {"container": c["name"], "image": c["image"]}
            for c in target["spec"]["template"]["spec"]["containers"]
        ],
        "steps": [{"name": "reset", "pause": {"duration": "0s"}}],
    }
    for key in ("lockGroup", "trafficRouting"):
        if key in template:
            spec[key] = template[key]
    if args.service:
        spec["target"] = {**spec["target"], "service": args.service}
    if args.http_route:
        spec["trafficRouting"] = {"gatewayAPI": {"httpRoute": args.http_route}}
        spec["target"] = {"service": args.target, **spec["target"]}
    locks = ", ".join(lease_name(key) for key in lock_keys(CanaryRolloutSpec.model_validate(spec)))
    name = f"reset-{args.target[:40].rstrip('-.')}-{secrets.token_hex(3)}"
    body = {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": ns, "labels": {RESET_LABEL: "true"}},
        "spec": spec,
    }
    last = await create_then_wait(
        session,
        body,
        f"canaryrollout/{name} created: built-in cleanup of {args.target} under lock {locks}",
        "reset",
        args,
    )
    if isinstance(last, int):
        return last
    status = last.get("status") or {}
    verified: JsonObj = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "CleanupVerified"), {}
    )
    recovered = (status.get("lock") or {}).get("recoveredFrom")
    print(
        f"reset of {args.target}: {effective_phase(last)}"
        + (f"; took the lock over from {recovered}" if recovered else "")
    )
    print(f"cleanup verified: {verified.get('status', 'Unknown')} ({verified.get('message', '')})")
    return 0 if effective_phase(last) == "Succeeded" else 1
