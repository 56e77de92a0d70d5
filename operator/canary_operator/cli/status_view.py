"""The `kubectl canary status` screen: summary, steps with marks, queue, outcome,
analysis verdicts and Events, as text (cli/kubectl_canary.py reads and prints it)."""

from __future__ import annotations

from canary_operator.api.models import ROUTER_KINDS, ROUTER_REPLICAS
from canary_operator.cli.steps import describe_step, raw_steps, step_kind
from canary_operator.kube.api import JsonObj
from canary_operator.lock.keys import target_key
from canary_operator.rollout_view import TERMINAL, effective_phase

MARKS = {"Succeeded": "[x]", "Running": "[>]", "Failed": "[!]", "Cancelled": "[-]"}
PENDING_MARK = "[ ]"
LEGEND = "[x] done  [>] running  [ ] pending  [!] failed  [-] cancelled"


def recorded_phase(body: JsonObj) -> str:
    """The phase the operator last wrote (Pending before its first status write)."""
    return str((body.get("status") or {}).get("phase") or "Pending")


def render_status(
    body: JsonObj,
    events: list[JsonObj] | None = None,
    max_events: int = 10,
    events_unavailable: str | None = None,
) -> str:
    """The `status` screen: summary, steps with marks, queue, outcome, events.

    `events_unavailable`: why the Events could not be read (shown instead of them)."""
    meta, status = body["metadata"], body.get("status") or {}
    spec: JsonObj = body.get("spec") or {}
    lines: list[str] = []

    def field(label: str, value: object) -> None:
        lines.append(f"{label + ':':<13}{value}")

    field("Name", f"{meta['name']}  (namespace {meta['namespace']})")
    target = (spec.get("target") or {}).get("deployment", "?")
    routing = spec.get("trafficRouting") or {}
    # The raw spec (the plugin may be older or newer than the operator): the first
    # router set, else the default.
    router = next(
        (k for k in ROUTER_KINDS if k != ROUTER_REPLICAS and routing.get(k)), ROUTER_REPLICAS
    )
    # The target's own lock, and its group's: a run takes both (lock/keys.py).
    lock = ", ".join(k for k in (spec.get("lockGroup"), target_key(target)) if k)
    field("Target", f"deployment/{target}  router {router}  lock {lock}")
    phase = effective_phase(body)
    shown_phase = (
        phase if phase == recorded_phase(body) else f"{phase} (operator has not seen the spec)"
    )
    field("Phase", f"{shown_phase}  run {status.get('run', 0)}")
    if status.get("message"):
        field("Message", status["message"])
    if status.get("stepLabel"):
        field("Step", status["stepLabel"])
    field("Weight", f"{status['weight']}% to canary" if status.get("weight") is not None else "-")
    lines.append(_queue_line(status))
    field("Live", live_text(status))
    if spec.get("paused"):
        field("Paused", "yes (spec.paused); resume with: kubectl canary resume " + meta["name"])
    outcome = status.get("outcome")
    if outcome:
        failed = f", failed step {outcome['failedStep']}" if outcome.get("failedStep") else ""
        field("Outcome", f"{outcome['result']}{failed}: {outcome.get('message', '')}")
    lines.append("")
    lines.append(f"Steps  {LEGEND}")
    lines.extend(_step_lines(raw_steps(body), status))
    cleanup = status.get("cleanup")
    if cleanup:
        lines.append("")
        text = f"stage {cleanup.get('stage', '-')}, attempts {cleanup.get('attempts', 0)}"
        if cleanup.get("lastError"):
            text += f", last error: {cleanup['lastError']}"
        if cleanup.get("finishedAt"):
            text += f", finished {cleanup['finishedAt']}"
        field("Cleanup", text)
        for failed in cleanup.get("failedSteps") or []:
            field(
                "",
                f"best-effort step {failed['step']} {failed['name']} failed: {failed['message']}",
            )
    lines.extend(_analysis_lines(status))
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("")
        field(
            "Conditions",
            "  ".join(f"{c['type']}={c['status']} ({c.get('reason', '')})" for c in conditions),
        )
    if events_unavailable is not None:
        lines.append("")
        lines.append(f"Events:      unavailable ({events_unavailable})")
    elif events is not None:
        lines.append("")
        lines.append(f"Events (last {min(len(events), max_events)} of {len(events)}):")
        for event in events[-max_events:]:
            stamp = (event.get("lastTimestamp") or event.get("eventTime") or "")[11:19]
            times = int(event.get("count") or 1)  # an aggregated Event: seen that often
            lines.append(
                f"  {stamp:<8}  {event.get('type', ''):<7}  {event.get('reason', ''):<20}  "
                f"{event.get('message', '')}" + (f" (x{times})" if times > 1 else "")
            )
        if not events:
            lines.append("  <none>")
    return "\n".join(lines)


def live_text(status: JsonObj) -> str:
    """What the target runs (status.live), and who promoted it."""
    live = status.get("live")
    if not live:
        return "- (no promotion by canary-operator recorded on the target)"
    who = "this rollout" if live.get("thisRollout") else live.get("rollout", "?")
    text = f"{live.get('version', '?')}  promoted by {who} run {live.get('run', '?')}"
    if live.get("promotedAt"):
        text += f" at {live['promotedAt']}"
    if live.get("drifted"):
        text += f"; DRIFTED: the target now runs {live['drifted']}"
    return text


def _queue_line(status: JsonObj) -> str:
    q = status.get("queue")
    label = "Queue:       "
    if not q:
        return label + ("-" if _terminal(status) else "not queued yet")
    lock = q.get("lock", "?")
    waiting = int(q.get("waiting") or 0)
    if int(q.get("position") or 0) == 0 and q.get("holder"):
        return f"{label}holding {lock} ({waiting} waiting)"
    holder = q.get("holder")
    held = f"held by {holder} ({q.get('holderPhase') or '?'})" if holder else "free"
    return f"{label}position {q.get('position')} of {waiting} for {lock}, {held}"


def _terminal(status: JsonObj) -> bool:
    return status.get("phase") in TERMINAL


def _step_lines(spec_steps: list[JsonObj], status: JsonObj) -> list[str]:
    recorded: list[JsonObj] = status.get("steps") or []
    lines = []
    for i in range(max(len(spec_steps), len(recorded))):
        st = recorded[i] if i < len(recorded) else {}
        step = spec_steps[i] if i < len(spec_steps) else {}
        name = step.get("name") or st.get("name") or step_kind(step)
        what = describe_step(step) if step else st.get("kind", "")
        phase = st.get("phase", "Pending")
        mark = MARKS.get(phase, PENDING_MARK)
        message = st.get("message") or ""
        lines.append(f"  {mark} {i + 1:>2}. {name:<22} {what:<22} {phase:<10} {message}".rstrip())
        children = st.get("children") or []
        items: list[JsonObj] = step.get("parallel") or []
        for n in range(max(len(children), len(items))):
            child = children[n] if n < len(children) else {}
            item = items[n] if n < len(items) else {}
            cname = child.get("name") or item.get("name") or f"item {n + 1}"
            ckind = child.get("kind") or step_kind(item)
            cphase = child.get("phase", "Pending")
            cmark = MARKS.get(cphase, PENDING_MARK)
            cmsg = child.get("message") or ""
            lines.append(f"        {cmark} {cname:<20} {ckind:<20} {cphase:<10} {cmsg}".rstrip())
    return lines


def _analysis_lines(status: JsonObj) -> list[str]:
    """Analysis verdicts of the steps (and parallel items) that ran an analysis."""
    found: list[tuple[str, JsonObj]] = []
    for i, step in enumerate(status.get("steps") or []):
        for holder in [step, *(step.get("children") or [])]:
            if isinstance(holder.get("analysis"), dict):
                found.append((f"step {i + 1} {holder.get('name', '')}", holder["analysis"]))
    if not found:
        return []
    lines = ["", "Analysis:"]
    for where, analysis in found:
        head = f"  {where}: {analysis.get('phase', '?')}"
        if analysis.get("score") is not None:
            head += f"  score {analysis['score']:g}"
        if analysis.get("classification"):
            head += f" ({analysis['classification']})"
        if analysis.get("message"):
            head += f"  {analysis['message']}"
        lines.append(head)
        lines.extend(f"      {_metric_verdict(m)}" for m in analysis.get("metrics") or [])
    return lines


def _metric_verdict(metric: JsonObj) -> str:
    """One metric: its verdict, then counts (thresholds) or ratio and CI (statistical)."""
    parts = [f"{metric.get('name', '?'):<20}", f"{metric.get('verdict', '?'):<12}"]
    counts = [
        f"{metric[k]} {label}"
        for k, label in (
            ("successful", "ok"),
            ("failed", "failed"),
            ("inconclusive", "inconclusive"),
            ("noData", "no data"),
        )
        if metric.get(k) is not None
    ]
    if counts:
        parts.append(", ".join(counts))
    if metric.get("lastValue") is not None:
        parts.append(f"last {metric['lastValue']:g}")
    if metric.get("ratio") is not None:
        parts.append(f"ratio {metric['ratio']:g}")
    if metric.get("lowerCI") is not None and metric.get("upperCI") is not None:
        parts.append(f"CI [{metric['lowerCI']:g}, {metric['upperCI']:g}]")
    if metric.get("message"):
        parts.append(str(metric["message"]))
    return "  ".join(parts)
