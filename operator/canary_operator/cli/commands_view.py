"""`kubectl canary` commands that read: list, status, watch, logs."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from canary_operator.api import models
from canary_operator.checks.evidence import LIMIT_BYTES, job_log_tails
from canary_operator.cli import client, listing, live, wait
from canary_operator.cli.client import CliError, Session
from canary_operator.cli.status_view import render_status
from canary_operator.kube.api import JsonObj, path
from canary_operator.rollout_view import effective_phase, settled


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
