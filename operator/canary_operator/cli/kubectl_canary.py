"""`kubectl canary`: look at and steer CanaryRollouts.

Installed as the executable `kubectl-canary`, so kubectl finds it as a plugin.
Every command talks to the API like kubectl does (--kubeconfig, --context,
-n/--namespace) and prints errors as one line with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from pydantic import ValidationError

from canary_operator.api import models
from canary_operator.api.models import CanaryRolloutSpec, Phase
from canary_operator.checks.evidence import LIMIT_BYTES, job_log_tails
from canary_operator.cli import client, listing, live, wait
from canary_operator.cli.client import CliError, Session
from canary_operator.cli.status_view import recorded_phase, render_status
from canary_operator.cli.steps import raw_steps
from canary_operator.engine.annotations import ALLOW_OLDER_ANNOTATION
from canary_operator.index import candidate
from canary_operator.kube.api import JsonObj, path
from canary_operator.lock import queue
from canary_operator.lock.keys import lock_keys, target_key
from canary_operator.lock.lease import HISTORY_ANNOTATION, HOLDER_ANNOTATION, lease_name
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import uid_of
from canary_operator.rollout_view import (
    PROMOTE_ANNOTATION,
    RESET_LABEL,
    RESUME_ANNOTATION,
    RETRY_ANNOTATION,
    TERMINAL,
    effective_phase,
    settled,
)

Command = Callable[[Session, argparse.Namespace], Awaitable[int]]


# --------------------------------------------------------------------- helpers


def _spec(body: JsonObj) -> CanaryRolloutSpec | None:
    try:
        return CanaryRolloutSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None


def _indefinite_pause(body: JsonObj, index: int | None) -> bool:
    steps = raw_steps(body)
    if index is None or index >= len(steps):
        return False
    items = [steps[index], *(steps[index].get("parallel") or [])]
    return any("pause" in i and not (i["pause"] or {}).get("duration") for i in items)


class EventsUnavailable(Exception):
    """The rollout could be read but its Events could not (typically: no `list events`)."""


async def _events(session: Session, namespace: str, name: str, uid: str) -> list[JsonObj]:
    selector = f"involvedObject.kind={models.KIND},involvedObject.name={name}"
    try:
        result = await client.call(
            session,
            session.kube.request(
                "GET", path("", "v1", "events", namespace), query={"fieldSelector": selector}
            ),
        )
    except CliError as exc:
        # Many users may read rollouts but not Events (a Role granting only the
        # canaryrollouts): the status already read is still worth showing.
        raise EventsUnavailable(str(exc)) from exc
    items = [e for e in result.get("items", []) if e["involvedObject"].get("uid") in (uid, None)]
    return sorted(items, key=lambda e: int(e["metadata"].get("resourceVersion") or 0))


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


# -------------------------------------------------------------------- commands


async def cmd_list(session: Session, args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else session.namespace
    if args.watch:
        return await live.watch_list(session, namespace, args.output, args.plain)
    items = await client.list_rollouts(session, namespace)
    if args.output:
        live.print_object({"apiVersion": "v1", "kind": "List", "items": items}, args.output)
        return 0
    print(listing.render(items, namespace))
    return 0


async def cmd_status(session: Session, args: argparse.Namespace) -> int:
    if args.watch:
        last = await live.watch_status(session, args.name, args.output, args.plain)
        return 0 if effective_phase(last) == "Succeeded" else 1
    body = await client.get_rollout(session, args.name)
    if args.output:
        live.print_object(body, args.output)
        return 0
    meta = body["metadata"]
    try:
        events = await _events(session, meta["namespace"], meta["name"], meta["uid"])
    except EventsUnavailable as exc:
        print(render_status(body, None, args.events, events_unavailable=str(exc)))
        return 0
    print(render_status(body, events, args.events))
    return 0


# ----------------------------------------------------------------------- logs

EVIDENCE_LABEL = "canary-operator.dev/purpose=evidence"  # failed test Jobs kept


def _step_entries(status: JsonObj) -> list[tuple[str, JsonObj]]:
    """(number, step status) of every step and parallel item: "2", "3.1", ..."""
    entries = []
    for n, step in enumerate(status.get("steps") or [], start=1):
        entries.append((str(n), step))
        for m, child in enumerate(step.get("children") or [], start=1):
            entries.append((f"{n}.{m}", child))
    return entries


def _selected(number: str, step: JsonObj, wanted: str | None) -> bool:
    if wanted is None:
        return True
    return wanted in (number, step.get("name")) or number.startswith(wanted + ".")


def render_logs(body: JsonObj, wanted: str | None = None) -> list[str]:
    """The log tails kept in the status of the failed test Jobs (of one step, or all)."""
    status = body.get("status") or {}
    entries = [(n, s) for n, s in _step_entries(status) if _selected(n, s, wanted)]
    if wanted is not None and not entries:
        raise CliError(f"rollout {body['metadata']['name']} has no step {wanted!r}")
    lines: list[str] = []
    for number, step in entries:
        tails = step.get("logs")
        if tails is None:
            continue
        lines.append(
            f"step {number} ({step.get('name')}) {step.get('phase')}: {step.get('message') or ''}"
        )
        if not tails:
            lines.append("  (the Job left no pods)")
        for tail in tails:
            where = f"pod {tail.get('pod')}, container {tail.get('container')}"
            if tail.get("error"):
                lines.append(f"--- {where}: logs unavailable: {tail['error']}")
                continue
            cut = ", earlier lines cut" if tail.get("truncated") else ""
            lines.append(f"--- {where} (log tail{cut}) ---")
            lines.extend((tail.get("tail") or "").rstrip("\n").split("\n"))
    if not lines:
        run = status.get("run", 0)
        which = f"step {wanted}" if wanted else f"run {run}"
        lines.append(f"no log tails recorded: no test Job of {which} failed")
    return lines


async def cmd_logs(session: Session, args: argparse.Namespace) -> int:
    body = await client.get_rollout(session, args.name)
    for line in render_logs(body, args.step):
        print(line)
    meta = body["metadata"]
    ns = meta["namespace"]
    jobs = await client.call(
        session,
        session.kube.list(path("batch", "v1", "jobs", ns), EVIDENCE_LABEL),
    )
    mine = [
        j
        for j in jobs
        if any(o.get("uid") == meta["uid"] for o in j["metadata"].get("ownerReferences") or [])
    ]
    steps = {s.get("job"): n for n, s in _step_entries(body.get("status") or {})}
    for job in sorted(mine, key=lambda j: str(j["metadata"]["name"])):
        name = job["metadata"]["name"]
        number = steps.get(name)
        if args.step is not None and number is not None and not _selected(number, {}, args.step):
            continue
        print(f"kept Job {name}" + (f" (step {number})" if number else "") + ", its logs now:")
        for tail in await client.call(session, job_log_tails(session.kube, ns, name, LIMIT_BYTES)):
            where = f"pod {tail.pod}, container {tail.container}"
            if tail.error:
                print(f"--- {where}: logs unavailable: {tail.error}")
                continue
            print(f"--- {where} ---")
            print(tail.tail.rstrip("\n"))
    return 0


def _step_states(body: JsonObj) -> dict[str, str]:
    states: dict[str, str] = {}
    for i, st in enumerate((body.get("status") or {}).get("steps") or []):
        states[f"step {i + 1} {st.get('name', '')}"] = str(st.get("phase", "Pending"))
        for child in st.get("children") or []:
            states[f"step {i + 1}.{child.get('name', '')}"] = str(child.get("phase", "Pending"))
    return states


async def cmd_watch(session: Session, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty() and not args.plain
    shown = ""
    steps: dict[str, str] = {}
    last: JsonObj | None = None

    async def follow() -> None:
        nonlocal shown, steps, last
        async for body in client.follow(session, args.name):
            last = body
            if tty:
                print("\x1b[H\x1b[2J" + render_status(body), flush=True)
            else:
                line = wait.progress_line(body)
                if line != shown:
                    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
                    shown = line
                now = _step_states(body)
                for key, phase in now.items():
                    if steps.get(key, "Pending") != phase:
                        print(f"{time.strftime('%H:%M:%S')}   {key}: {phase}", flush=True)
                steps = now
            if settled(body):
                return

    timeout = models.parse_duration(args.timeout).total_seconds() if args.timeout else None
    try:
        await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        print(f"error: {args.name} did not finish within {args.timeout}", file=sys.stderr)
        return 2
    assert last is not None
    phase = effective_phase(last)
    outcome = (last.get("status") or {}).get("outcome") or {}
    result, message = outcome.get("result", ""), outcome.get("message", "")
    print(f"{args.name} finished: {phase} ({result}: {message})")
    return 0 if phase == "Succeeded" else 1


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
    await client.call(session, session.kube.create(client.rollout_path(ns), body))
    print(f"canaryrollout/{name} created: built-in cleanup of {args.target} under lock {locks}")
    if args.no_wait:
        return 0
    timeout = models.parse_duration(args.timeout).total_seconds()
    waited = await wait.wait_settled(session, name, ns, timeout, sys.stdout)
    last = waited.body
    if not waited.done or last is None:
        print(
            f"error: the reset did not finish within {args.timeout}; see: kubectl canary "
            f"status {name}",
            file=sys.stderr,
        )
        return 2
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


# ------------------------------------------------------------------------ main


def _connection_args(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("-n", "--namespace", default=default, help="namespace (default: context's)")
    parser.add_argument("--kubeconfig", default=default, help="path to a kubeconfig")
    parser.add_argument("--context", default=default, help="kubeconfig context")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl canary", description=__doc__.split("\n")[0])
    _connection_args(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _connection_args(p, suppress=True)
        p.set_defaults(func=func)
        return p

    p = command("list", cmd_list, "list rollouts (phase, step, weight, queue)")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    live.add_watch_arguments(p, "keep the list current (redrawn in place on a terminal)")
    p = command("status", cmd_status, "steps, weight, queue, outcome and events of a rollout")
    p.add_argument("name")
    p.add_argument("--events", type=int, default=10, help="how many recent events to show")
    live.add_watch_arguments(
        p, "follow as a live tree (steps, ReplicaSets, weight, queue) until the run ends"
    )
    p = command("watch", cmd_watch, "follow a rollout until it ends (exit 0 only on Succeeded)")
    p.add_argument("name")
    p.add_argument("--timeout", default=None, help="give up after this long (exit 2)")
    p.add_argument("--plain", action="store_true", help="line by line even on a terminal")
    for name, func, help_ in (
        ("abort", cmd_abort, "stop a rollout (spec.abort); its cleanup runs"),
        ("pause", cmd_pause, "hold a rollout at its current step (spec.paused)"),
        ("resume", cmd_resume, "continue a paused rollout, or release its pause step"),
        ("promote", cmd_promote, "skip the remaining steps to promotion"),
    ):
        command(name, func, help_).add_argument("name")
    p = command("retry", cmd_retry, "start a new run of a finished rollout")
    p.add_argument("name")
    p.add_argument(
        "--allow-older",
        action="store_true",
        help="let this run roll out its version even if a newer one was promoted since "
        "(otherwise such a run ends Superseded, reason OlderThanLive)",
    )
    p = command("logs", cmd_logs, "log tails of a rollout's failed test Jobs (and kept Jobs)")
    p.add_argument("name")
    p.add_argument("step", nargs="?", help="only this step: its number (2, 3.1) or name")
    p = command("lock", cmd_lock, "who holds a target's lock, who waits, and its history")
    p.add_argument("target", help="lock key: the target Deployment or spec.lockGroup")
    p.add_argument("--history", type=int, default=10, help="history entries to show")
    p = command("reset", cmd_reset, "run a target's built-in cleanup under its lock")
    p.add_argument("target", help="the target Deployment")
    p.add_argument("--timeout", default="10m", help="how long to wait for the reset")
    p.add_argument("--no-wait", action="store_true", help="create the reset rollout and exit")
    p.add_argument(
        "--http-route",
        help="the target's HTTPRoute (gatewayAPI routing); default: as the target's last rollout",
    )
    p.add_argument("--service", help="the target's stable Service; default: as its last rollout")
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=["bash", "zsh"])
    help_ = "wait for a rollout's current spec to end (the Spinnaker waiter)"
    p = sub.add_parser("wait", help=help_, description=help_)
    _connection_args(p, suppress=True)
    wait.add_arguments(p, connection=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "wait":
        return wait.run(args)
    if args.command == "completion":
        from canary_operator.cli import completion

        print(completion.script(args.shell), end="")
        return 0
    for option in ("timeout",):
        value = getattr(args, option, None)
        if value:
            try:
                models.parse_duration(value)
            except ValueError as exc:
                print(f"error: --{option}: {exc}", file=sys.stderr)
                return 2

    async def run() -> int:
        session = client.track(await client.connect(args.kubeconfig, args.context, args.namespace))
        result: int = await args.func(session, args)
        return result

    return client.run(run)


if __name__ == "__main__":
    sys.exit(main())
