"""The measured part of bench_scale.py, for one controller over its seeded history:

restart   the controller stopped, one rollout started meanwhile (canary-operator: a
          new CanaryRollout; Argo: its Rollout's image patched); started again: time
          to its ready endpoint, and to that waiting rollout's first step
          (canary-operator: status.steps[0].startedAt; Argo: status.currentPodHash
          moved to the new ReplicaSet), both seen by this benchmark; then API
          requests and CPU until it has been quiet for 5 s;
wave      the rest of the active wave at once (one rollout per target, each target
          with its history), and meanwhile (canary-operator only) a queue on one more
          target, whose lock handoffs are timed as bench_peer.py's are (the
          operator's CleanupFinished -> next Progressing Events); API requests and CPU
          per rollout until the controller is quiet again, over the wave's rollouts and
          the queue's (the waiting rollout's are in the restart's figure); the peak
          RSS (VmHWM) of the process over both.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench import peer_handoff
from bench.peer_argo import ArgoRollouts
from bench.peer_canary import CanaryOperator
from bench.peer_cluster import NEW, parallel, peak_rss_mib
from bench.peer_controller import Controller
from bench.peer_handoff import Handoff, _first_step_started, run_queue
from bench.peer_workloads import settle
from bench.scale_seed import WAVE_LABEL, kubectl_lists, ours_body

from e2e.watch import Seen, Watch
from tests.harness.cluster import wait_for

HANDOFF_TARGET = "handoff"


class _Watch(Watch):
    """bench_peer's watch, kept up over a namespace of thousands of rollouts under load:
    an event without a name (an ERROR event's Status: the watch expired) is skipped, and
    kubectl, which then ends, is started again (it lists again: a rollout's first
    matching event is still its first)."""

    closing = False

    def of(self, name: str) -> list[Seen]:
        return [e for e in self.snapshot() if (e.object.get("metadata") or {}).get("name") == name]

    def _read(self) -> None:
        while True:
            super()._read()
            if self.closing or self._proc is None:
                return
            args = self._proc.args
            self._proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )

    def __exit__(self, *exc: object) -> None:
        self.closing = True
        super().__exit__(*exc)


peer_handoff.Watch = _Watch  # type: ignore[misc]  # run_queue's watch


@dataclass
class Measured:
    ready_s: float  # spawn -> ready endpoint answers 200
    first_step_s: float  # spawn -> the waiting rollout's first step seen
    restart_requests: float  # until quiet after the restart (the waiting rollout's run too)
    restart_cpu: float
    wave: int  # rollouts in the wave proper (the queue's not included)
    wave_seconds: float  # the wave applied -> its last rollout done
    requests_per_rollout: float
    cpu_per_rollout: float
    cpu_total: float  # the process's CPU, restart to quiet after the wave
    rss_mib: float  # peak RSS of the process over all of it
    handoff: Handoff | None = None


def _wave_done(ctl: Controller, names: list[str], timeout: float) -> None:
    wanted = set(names)

    def remaining() -> set[str]:
        items = ctl.cluster.get_json(
            ctl.resource, "-n", ctl.namespace, "-l", f"{WAVE_LABEL}=1", timeout=300
        )["items"]
        now = time.monotonic()
        return wanted - {
            o["metadata"]["name"] for o in items if ctl.done(Seen(0, now, "LISTED", o))
        }

    wait_for(
        lambda: not remaining(),
        timeout=timeout,
        interval=1.0,
        message=lambda: f"{ctl.name}: {len(remaining())} of {len(wanted)} not done",
    )


def _labelled(body: dict[str, Any]) -> dict[str, Any]:
    body["metadata"]["labels"] = {WAVE_LABEL: "1"}
    return body


def _image_patch(ctl: ArgoRollouts, name: str) -> None:
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": NEW}]
    ctl.cluster.kubectl("patch", ctl.resource, name, "-n", ctl.namespace, "--type=json",
                        "-p", json.dumps(patch))  # fmt: skip


def measure(ctl: Controller, targets: list[str], wave: int, queued: int) -> Measured:
    ours = isinstance(ctl, CanaryOperator)
    first, rest = targets[0], targets[1:wave]
    if ours:
        assert isinstance(ctl, CanaryOperator)
        if queued > 1:
            ctl.create_version_one([HANDOFF_TARGET], replicas=1)
        waiting = f"{first}-w"
        kubectl_lists(ctl, ["create"], [_labelled(ours_body(ctl, waiting, first, NEW))])

        def stepped(seen: Seen) -> bool:
            return _first_step_started(seen)
    else:
        assert isinstance(ctl, ArgoRollouts)
        waiting = first
        old_hash = (ctl.cluster.get_json(ctl.resource, first, "-n", ctl.namespace)
                    .get("status", {}).get("currentPodHash"))  # fmt: skip
        _image_patch(ctl, first)

        def stepped(seen: Seen) -> bool:
            now = (seen.object.get("status") or {}).get("currentPodHash")
            return bool(now) and now != old_hash

    before = ctl.counters()
    with Watch(ctl.cluster, ctl.namespace, f"{ctl.resource}/{waiting}") as watch:
        spawned = time.monotonic()
        ctl.start()
        ready = time.monotonic() - spawned
        first_step = watch.wait(waiting, stepped, timeout=900).at - spawned
    try:
        assert ctl.proc is not None
        quiet = settle(ctl, quiet=5.0, timeout=900 + len(targets), at_last_change=True)
        pid = ctl.proc.pid
        names = [f"{t}-w" for t in rest] if ours else list(rest)
        handoff: list[Handoff] = []
        thread = None
        if ours and queued > 1:
            assert isinstance(ctl, CanaryOperator)
            op = ctl
            thread = threading.Thread(
                target=lambda: handoff.append(run_queue(op, HANDOFF_TARGET, queued)), daemon=True
            )
        start = ctl.counters()
        applied = time.monotonic()
        if thread is not None:
            thread.start()
        if isinstance(ctl, CanaryOperator):
            bodies = [
                _labelled(ours_body(ctl, n, t, NEW)) for n, t in zip(names, rest, strict=True)
            ]
            kubectl_lists(ctl, ["create"], bodies)
        else:
            assert isinstance(ctl, ArgoRollouts)
            argo = ctl
            parallel([lambda n=n: _image_patch(argo, n) for n in names], 8)
        _wave_done(ctl, [*names, waiting], timeout=900 + 6 * len(names))
        wave_seconds = time.monotonic() - applied
        if thread is not None:
            thread.join(timeout=1800)
        end = settle(ctl, quiet=5.0, timeout=900, at_last_change=True)
        rss = peak_rss_mib(pid)
    finally:
        ctl.stop()
    n = max(1, len(names) + (queued if handoff else 0))
    return Measured(
        ready_s=ready,
        first_step_s=first_step,
        restart_requests=quiet.requests - before.requests,
        restart_cpu=quiet.cpu,
        wave=len(names),
        wave_seconds=wave_seconds,
        requests_per_rollout=(end.requests - start.requests) / n,
        cpu_per_rollout=(end.cpu - start.cpu) / n,
        cpu_total=end.cpu,
        rss_mib=rss,
        handoff=handoff[0] if handoff else None,
    )
