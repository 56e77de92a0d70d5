"""The live view in a real terminal: `kubectl canary status -w` runs in a tmux pane
(a pseudo-terminal, so the plugin redraws in place) while the seed example rolls out
on the local cluster; the pane's captures show the tree updating. And `kubectl canary
list` measured against `kubectl get cro` (bench/bench_plugin_list.py has the figures)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import OperatorProcess, wait_phase
from e2e.identity import PLUGIN
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TMUX = shutil.which("tmux")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    if TMUX is None:
        pytest.fail("tmux is not installed (Debian package tmux; `make deps`)")
    socket = tmp_path / "tmux.sock"
    base = [TMUX, "-S", str(socket)]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, timeout=30)


def test_status_watch_redraws_the_tree_in_a_terminal(
    kube_cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    tmux: list[str],
    tmp_path: Path,
) -> None:
    kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "seed-pipeline.yaml"))
    command = [
        *PLUGIN,
        "--kubeconfig",
        str(kube_cluster.kubeconfig),
        "-n",
        namespace,
        "status",
        "web-seed",
        "-w",
    ]
    # The pane outlives the plugin (a shell prints its exit status below the last frame,
    # then waits on the terminal until the fixture kills the server). tmux's own
    # remain-on-exit would not do: marking a pane dead scrolls its screen up a line
    # (server_destroy_pane), and the last frame would lose its first line. The plugin
    # starts on a key press, once everything it writes to the pane is also logged.
    keep_pane = [
        "sh",
        "-c",
        'read -r _; "$@"; echo "[plugin exit $?]"; read -r _',
        "sh",
        *command,
    ]
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "160", "-y", "60", "-s", "live", "--", *keep_pane],
        check=True,
        timeout=30,
    )
    written = tmp_path / "pane.out"
    subprocess.run([*tmux, "pipe-pane", "-t", "live", f"cat >> {written}"], check=True, timeout=30)
    subprocess.run([*tmux, "send-keys", "-t", "live", "Enter"], check=True, timeout=30)
    frames: list[str] = []

    def capture() -> str:
        out = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "live"], capture_output=True, text=True, timeout=30
        ).stdout
        if out.strip() and (not frames or frames[-1] != out):
            frames.append(out)
        return out

    def finished() -> bool:
        return "[plugin exit " in capture()

    wait_for(finished, timeout=240, interval=0.3, message=lambda: f"final frame:\n{capture()}")
    wait_phase(kube_cluster, namespace, "web-seed", "Succeeded")
    # The plugin ends by itself once the run has ended, successfully.
    assert "[plugin exit 0]" in frames[-1], frames[-1]
    assert "Phase:       ✔ Succeeded" in frames[-1], frames[-1]
    # Redrawn in place: every capture of the screen is one frame, never two stacked.
    assert all(frame.count("Name:") == 1 for frame in frames), frames[-1]

    # The tree moved through the run. Every frame the plugin drew is in the pane's
    # output (each starts with cursor-home); the screen, sampled every 0.3 s, may have
    # skipped a state the rollout passed through in less.
    def output() -> str:
        return written.read_text(encoding="utf-8", errors="replace")

    wait_for(lambda: "[plugin exit " in output(), timeout=30, interval=0.1, message="pane log")
    drawn = [
        re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\r", "", frame) for frame in output().split("\x1b[H")[1:]
    ]
    assert len(drawn) >= 6, f"only {len(drawn)} frames drawn"
    assert all(frame.count("Name:") == 1 for frame in drawn)
    joined = "\n".join(drawn)
    assert any("▶ Progressing" in f for f in drawn), joined[-3000:]
    assert any("▶ 2. canary tests (parallel (3)) Running" in f for f in drawn), joined[-3000:]
    assert any("▶ smoke (test) Running" in f or "◌ smoke (test)" in f for f in drawn)
    # The replicas router reaches 25 % for setWeight 10 (1 canary pod beside 3 stable).
    assert any("Weight:      25% to canary  [#####" in f for f in drawn), joined[-3000:]
    assert any("Weight:      50% to canary  [##########" in f for f in drawn), joined[-3000:]
    assert any("⧉ deployment/web-canary (canary)" in f for f in drawn), joined[-3000:]
    assert any("registry.example.com/web:2.0" in f and "web-canary" in f for f in drawn)
    final = frames[-1]
    assert "⧉ deployment/web (stable)" in final
    assert "web-canary" not in final.split("Workloads", 1)[-1].split("Cleanup", 1)[0]
    assert final.count("✔") >= 7  # the phase and all six steps
    print(f"{len(drawn)} frames drawn, {len(frames)} seen on the screen; last:\n{final}")


def _median_seconds(cmd: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_list_costs_about_what_kubectl_get_costs(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """A generous bound (3x) against noise from other work on the machine; the bench
    states the measured ratio. Measured alternately, so both see the same load."""
    kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "seed-pipeline.yaml"))
    env = kube_cluster.env()
    plugin = [str(Path(sys.executable).parent / "kubectl-canary"), "list", "-n", namespace]
    kubectl = [kube_cluster.kubectl_path, "get", "cro", "-n", namespace]
    listed = subprocess.run(plugin, env=env, capture_output=True, text=True, check=True)
    assert listed.stdout.split("\n")[0].split() == [
        "NAME",
        "TARGET",
        "PHASE",
        "STEP",
        "WEIGHT",
        "QUEUE",
        "LIVE",
        "AGE",
    ]
    assert listed.stdout.split("\n")[1].split()[:2] == ["web-seed", "web"]
    ratios = []
    for _ in range(3):
        ratios.append(_median_seconds(plugin, env, 3) / _median_seconds(kubectl, env, 3))
    ratio = statistics.median(ratios)
    print(f"kubectl canary list / kubectl get cro: {ratio:.2f} (rounds: {ratios})")
    assert ratio < 3.0


def test_list_watch_and_status_watch_json_when_piped(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Not a terminal: `list -w` prints the table, then one row per change (as
    `kubectl get -w`); `status -w -o json` one rollout document a line until the end."""
    import json
    import threading

    base = [*PLUGIN, "--kubeconfig", str(kube_cluster.kubeconfig), "-n", namespace]
    lister = subprocess.Popen(
        [*base, "list", "-w"], stdout=subprocess.PIPE, text=True, env=kube_cluster.env()
    )
    lines: list[str] = []

    def read() -> None:
        assert lister.stdout is not None
        for line in lister.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("No canaryrollouts" in x for x in lines), timeout=60)
        kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "seed-pipeline.yaml"))
        statuses = subprocess.run(
            [*base, "status", "web-seed", "-w", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=300,
            env=kube_cluster.env(),
        )
        assert statuses.returncode == 0, statuses.stderr
        docs = [json.loads(x) for x in statuses.stdout.splitlines()]
        phases = [(d.get("status") or {}).get("phase") for d in docs]
        assert phases[-1] == "Succeeded"
        assert "Progressing" in phases and "CleaningUp" in phases
        assert all(d["metadata"]["name"] == "web-seed" for d in docs)
        wait_for(
            lambda: any(x.split()[:3] == ["web-seed", "web", "Succeeded"] for x in lines),
            timeout=60,
            message=lambda: "\n".join(lines[-20:]),
        )
        rows = [x for x in lines if x.startswith("web-seed")]
        assert len(rows) >= 5  # one per change: queued, steps, cleanup, the end
        assert sum(1 for x in lines if x.startswith("NAME")) == 1  # the header, once
    finally:
        lister.terminate()
        lister.wait(timeout=30)


def test_kubectl_completes_the_plugin_through_kubectl_complete_canary(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """kubectl's own plugin completion (`kubectl __complete canary ...`, what the
    shell asks on TAB) runs `kubectl_complete-canary` from PATH."""
    kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "seed-pipeline.yaml"))
    env = kube_cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"

    def complete(*words: str) -> list[str]:
        out = subprocess.run(
            [kube_cluster.kubectl_path, "__complete", "canary", *words],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split("\n")
        return [line for line in out if line]

    assert complete("st") == ["status", ":4"]
    assert complete("-n", namespace, "status", "web") == ["web-seed", ":4"]
    assert complete("-n", namespace[:-2]) == [namespace, ":4"]
    assert complete("status", "web-seed", "-o", "") == ["json", "yaml", ":4"]
