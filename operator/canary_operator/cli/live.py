"""The live views: `kubectl canary status NAME -w` (a tree of the rollout: steps and
parallel items, the stable and canary ReplicaSets with images and ready pods, weight,
queue) and `kubectl canary list -w`.

On a terminal a frame is redrawn in place (cursor home, each line cleared, the rest of
the screen cleared), so the tree updates without scrolling; otherwise (a pipe, a log)
each changed frame is appended after a timestamp line. `-o json|yaml` prints the
rollout object at every change instead (one JSON document a line, or YAML documents
separated by `---`), as `kubectl get -w -o` does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

import yaml

from canary_operator.cli import client, listing
from canary_operator.cli.client import Session
from canary_operator.cli.steps import describe_step, step_kind
from canary_operator.kube.api import JsonObj, path
from canary_operator.rollout_view import effective_phase, settled

POLL_SECONDS = 2.0  # ReplicaSets (ready pods) are re-read this often while watching
ICONS = {
    "Succeeded": "✔",
    "Running": "▶",
    "Failed": "✖",
    "Cancelled": "⊘",
    "Pending": "◌",
}
PHASE_ICONS = {
    "Progressing": "▶",
    "Paused": "॥",
    "Queued": "…",
    "CleaningUp": "⟲",
    "Succeeded": "✔",
    "Failed": "✖",
    "Aborted": "⊘",
    "Superseded": "⊘",
    "Pending": "◌",
}


# ------------------------------------------------------------------ the tree


def workload_names(body: JsonObj) -> dict[str, str]:
    """Deployment name -> role (stable, canary, baseline) for this rollout."""
    from canary_operator.api.models import CanaryRolloutSpec
    from canary_operator.kube import objects

    spec_raw = body.get("spec") or {}
    names = {str((spec_raw.get("target") or {}).get("deployment", "")): "stable"}
    try:
        spec = CanaryRolloutSpec.model_validate(spec_raw)
    except ValueError:
        return names
    names[objects.canary_name(spec)] = "canary"
    if spec.baseline:
        names[objects.baseline_name(spec)] = "baseline"
    return names


def _owner(rs: JsonObj) -> str:
    for ref in rs["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Deployment":
            return str(ref.get("name"))
    return ""


def render_tree(body: JsonObj, replicasets: list[JsonObj] | None = None) -> str:
    meta, status = body["metadata"], body.get("status") or {}
    spec: JsonObj = body.get("spec") or {}
    phase = effective_phase(body)
    lines = [
        f"Name:        {meta['name']}  (namespace {meta['namespace']})",
        f"Phase:       {PHASE_ICONS.get(phase, '?')} {phase}  run {status.get('run', 0)}"
        + (f"  step {status['stepLabel']}" if status.get("stepLabel") else ""),
    ]
    if status.get("message"):
        lines.append(f"Message:     {status['message']}")
    weight = status.get("weight")
    bar = ""
    if weight is not None:
        filled = round(int(weight) / 5)
        bar = f"  [{'#' * filled}{'.' * (20 - filled)}]"
    lines.append(f"Weight:      {f'{weight}% to canary' if weight is not None else '-'}{bar}")
    lines.append(f"Queue:       {status.get('queueLabel') or '-'}")
    outcome = status.get("outcome")
    if outcome:
        lines.append(f"Outcome:     {outcome.get('result')}: {outcome.get('message', '')}")
    lines.append("")
    lines.append(f"⟳ canaryrollout/{meta['name']}")
    spec_steps: list[JsonObj] = spec.get("steps") or []
    recorded: list[JsonObj] = status.get("steps") or []
    count = max(len(spec_steps), len(recorded))
    workloads = _workload_lines(body, replicasets)
    cleanup = status.get("cleanup")
    sections: list[tuple[str, list[str]]] = []
    step_lines: list[str] = []
    for i in range(count):
        st = recorded[i] if i < len(recorded) else {}
        step = spec_steps[i] if i < len(spec_steps) else {}
        last = i == count - 1
        branch, cont = ("└── ", "    ") if last else ("├── ", "│   ")
        sphase = str(st.get("phase", "Pending"))
        name = step.get("name") or st.get("name") or step_kind(step)
        what = describe_step(step) if step else str(st.get("kind", ""))
        current = " ◀" if status.get("currentStep") == i and phase not in listing_terminal() else ""
        message = f"  {st['message']}" if st.get("message") else ""
        step_lines.append(
            f"{branch}{ICONS.get(sphase, '?')} {i + 1}. {name} ({what}) {sphase}{current}{message}"
        )
        children: list[JsonObj] = st.get("children") or []
        items: list[JsonObj] = step.get("parallel") or []
        for n in range(max(len(children), len(items))):
            child = children[n] if n < len(children) else {}
            item = items[n] if n < len(items) else {}
            clast = n == max(len(children), len(items)) - 1
            cname = child.get("name") or item.get("name") or f"item {n + 1}"
            ckind = child.get("kind") or step_kind(item)
            cphase = str(child.get("phase", "Pending"))
            cmsg = f"  {child['message']}" if child.get("message") else ""
            step_lines.append(
                f"{cont}{'└── ' if clast else '├── '}{ICONS.get(cphase, '?')} {cname} ({ckind})"
                f" {cphase}{cmsg}"
            )
    sections.append(("Steps", step_lines))
    if workloads:
        sections.append(("Workloads", workloads))
    if cleanup:
        text = f"stage {cleanup.get('stage', '-')}, attempts {cleanup.get('attempts', 0)}"
        if cleanup.get("lastError"):
            text += f", last error: {cleanup['lastError']}"
        if cleanup.get("finishedAt"):
            text += ", verified" if not cleanup.get("lastError") else ", finished"
        sections.append(("Cleanup", [f"└── {text}"]))
    for s, (title, content) in enumerate(sections):
        last = s == len(sections) - 1
        lines.append(f"{'└' if last else '├'}── {title}")
        pad = "    " if last else "│   "
        lines.extend(pad + line for line in content)
    return "\n".join(lines)


def listing_terminal() -> frozenset[str]:
    from canary_operator.rollout_view import TERMINAL

    return TERMINAL


def _workload_lines(body: JsonObj, replicasets: list[JsonObj] | None) -> list[str]:
    if replicasets is None:
        return []
    roles = workload_names(body)
    by_deployment: dict[str, list[JsonObj]] = {}
    for rs in replicasets:
        owner = _owner(rs)
        if owner in roles:
            by_deployment.setdefault(owner, []).append(rs)
    lines: list[str] = []
    shown = [(name, role) for name, role in roles.items() if by_deployment.get(name)]
    for d, (name, role) in enumerate(shown):
        last = d == len(shown) - 1
        lines.append(f"{'└── ' if last else '├── '}⧉ deployment/{name} ({role})")
        pad = "    " if last else "│   "
        sets = sorted(
            by_deployment[name],
            key=lambda rs: (
                -int(
                    (rs["metadata"].get("annotations") or {}).get(
                        "deployment.kubernetes.io/revision", "0"
                    )
                    or 0
                )
            ),
        )
        # Old ReplicaSets scaled to zero are history, not state: show only live ones
        # (and the newest, so a deployment never shows empty).
        live = [rs for i, rs in enumerate(sets) if i == 0 or int(rs["spec"].get("replicas") or 0)]
        for r, rs in enumerate(live):
            rlast = r == len(live) - 1
            images = ", ".join(
                c.get("image", "?") for c in rs["spec"]["template"]["spec"].get("containers") or []
            )
            want = int(rs["spec"].get("replicas") or 0)
            ready = int((rs.get("status") or {}).get("readyReplicas") or 0)
            revision = (rs["metadata"].get("annotations") or {}).get(
                "deployment.kubernetes.io/revision", "?"
            )
            lines.append(
                f"{pad}{'└── ' if rlast else '├── '}{rs['metadata']['name']}  {images}  "
                f"{ready}/{want} ready  rev {revision}"
            )
    return lines


# ---------------------------------------------------------------- the screen


class Screen:
    """Draws frames: in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO, in_place: bool, clock: Callable[[], str] | None = None):
        self.out = out
        self.in_place = in_place
        self.clock = clock or (lambda: time.strftime("%H:%M:%S"))
        self.last: str | None = None

    def draw(self, frame: str) -> None:
        if frame == self.last:
            return
        self.last = frame
        if self.in_place:
            body = "\n".join(line + "\x1b[K" for line in frame.split("\n"))
            self.out.write("\x1b[H" + body + "\n\x1b[J")
        else:
            self.out.write(f"--- {self.clock()}\n{frame}\n")
        self.out.flush()


def add_watch_arguments(parser: Any, watch_help: str) -> None:
    parser.add_argument("-w", "--watch", action="store_true", help=watch_help)
    parser.add_argument(
        "-o", "--output", choices=["json", "yaml"], help="print the object(s) instead"
    )
    parser.add_argument(
        "--plain", action="store_true", help="with -w: append frames even on a terminal"
    )


def print_object(body: JsonObj, output: str, out: TextIO | None = None) -> None:
    """One object, as `kubectl get -o json|yaml` prints it."""
    _print_object(body, output, out or sys.stdout, pretty=True)


def _print_object(body: JsonObj, output: str, out: TextIO, pretty: bool = False) -> None:
    """While watching, JSON is one compact document a line (for `jq` and friends)."""
    if output == "json":
        out.write(json.dumps(body, indent=4 if pretty else None) + "\n")
    else:
        out.write("---\n" + yaml.safe_dump(body, sort_keys=False))
    out.flush()


async def _replicasets(session: Session, namespace: str) -> list[JsonObj] | None:
    try:
        items: list[JsonObj] = await session.kube.list(path("apps", "v1", "replicasets", namespace))
    except Exception:  # no permission to list ReplicaSets: show the rest
        return None
    return items


async def watch_status(session: Session, name: str, output: str | None, plain: bool) -> JsonObj:
    """Follow one rollout until its current run has ended; returns the last body."""
    out = sys.stdout
    screen = Screen(out, in_place=out.isatty() and not plain)
    if screen.in_place:
        out.write("\x1b[2J")
    state: dict[str, Any] = {"body": None, "rs": None}
    changed = asyncio.Event()

    async def follow_rollout() -> None:
        async for body in client.follow(session, name):
            state["body"] = body
            changed.set()
            if settled(body):
                return

    async def poll_replicasets() -> None:
        while True:
            body = state["body"]
            if body is not None:
                rs = await _replicasets(session, body["metadata"]["namespace"])
                if rs != state["rs"]:
                    state["rs"] = rs
                    changed.set()
            await asyncio.sleep(POLL_SECONDS)

    follower = asyncio.create_task(follow_rollout())
    poller = asyncio.create_task(poll_replicasets()) if output is None else None
    try:
        while True:
            waiter = asyncio.create_task(changed.wait())
            await asyncio.wait({follower, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            changed.clear()
            body = state["body"]
            if body is not None:
                if output:
                    _print_object(body, output, out)
                else:
                    screen.draw(render_tree(body, state["rs"]))
            if follower.done():
                follower.result()  # raise what ended it, if anything
                if poller is not None and body is not None:  # the final ReplicaSets
                    state["rs"] = await _replicasets(session, body["metadata"]["namespace"])
                    screen.draw(render_tree(body, state["rs"]))
                assert body is not None
                return dict(body)
    finally:
        for task in (follower, poller):
            if task is not None:
                task.cancel()


async def _watch_rollouts(session: Session, namespace: str | None) -> AsyncIterator[JsonObj]:
    """Watch events of the rollouts of a namespace (None: all), from a fresh list."""
    while True:
        listed = await client.call(
            session, session.kube.request("GET", client.rollout_path(namespace))
        )
        keys = []
        for item in listed.get("items", []):
            keys.append((item["metadata"]["namespace"], item["metadata"]["name"]))
            yield {"type": "ADDED", "object": item}
        yield {"type": "SYNCED", "keys": keys}
        version = listed["metadata"]["resourceVersion"]
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("timeoutSeconds", client.WATCH_SECONDS),
        ]
        raw = await session.kube.api_client.call_api(
            client.rollout_path(namespace),
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=client.WATCH_SECONDS + 15,
        )
        response = raw[0] if isinstance(raw, tuple) else raw
        async with response:
            if response.status >= 400:
                await asyncio.sleep(1)
                continue
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        break
                    yield event


async def watch_list(
    session: Session, namespace: str | None, output: str | None, plain: bool
) -> int:
    """The list, kept current until interrupted."""
    out = sys.stdout
    in_place = out.isatty() and not plain and output is None
    screen = Screen(out, in_place=in_place)
    if in_place:
        out.write("\x1b[2J")
    items: dict[tuple[str, str], JsonObj] = {}
    synced = False
    printed_header = False

    async def _changed(kind: str, body: JsonObj) -> None:
        nonlocal printed_header
        if output:
            _print_object(body, output, out)
        elif in_place:
            screen.draw(listing.render(list(items.values()), namespace))
        else:
            # As `kubectl get -w`: one row per change (the header once, before the first).
            if not printed_header:
                header = ["NAMESPACE", *listing.HEADER] if namespace is None else listing.HEADER
                out.write("   ".join(header) + "\n")
                printed_header = True
            row = listing.row(body, namespace is None)
            if kind == "DELETED":
                row[-1] += " (deleted)"
            out.write("   ".join(row) + "\n")
        out.flush()

    async for event in _watch_rollouts(session, namespace):
        kind = event["type"]
        if kind == "SYNCED":
            if synced:  # a re-list after a watch ended: only what it tells anew
                for key in set(items) - set(event["keys"]):
                    gone = items.pop(key)
                    await _changed("DELETED", gone)
                continue
            synced = True
        else:
            body = event["object"]
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            known = items.get(key)
            if kind == "DELETED":
                items.pop(key, None)
            else:
                same = known is not None and known["metadata"].get("resourceVersion") == body[
                    "metadata"
                ].get("resourceVersion")
                items[key] = body
                if same:
                    continue
            if synced:
                await _changed(kind, body)
                continue
        if not synced:
            continue
        # The first complete list.
        if output:
            for body in items.values():
                _print_object(body, output, out)
        elif in_place:
            screen.draw(listing.render(list(items.values()), namespace))
        else:
            out.write(listing.render(list(items.values()), namespace) + "\n")
            printed_header = bool(items)
        out.flush()
    return 0
