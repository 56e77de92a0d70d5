"""A watch of one resource kind in one namespace, recorded in the order the API
server committed the changes (``kubectl get -w --output-watch-events -o json``), so
tests can assert what happened before what without sampling with sleeps."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.harness.cluster import Cluster, wait_for

TERMINAL = {"Succeeded", "Failed", "Aborted", "Superseded"}
RUNNING = {"Progressing", "Paused", "CleaningUp"}


@dataclass(frozen=True)
class Seen:
    index: int  # position in commit order
    at: float  # monotonic time the test received it
    type: str
    object: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.object["metadata"]["name"])

    @property
    def phase(self) -> str:
        return str((self.object.get("status") or {}).get("phase") or "")


class Watch:
    def __init__(self, cluster: Cluster, namespace: str, resource: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.resource = resource
        self.events: list[Seen] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self._proc = subprocess.Popen(
            [
                self.cluster.kubectl_path,
                f"--kubeconfig={self.cluster.kubeconfig}",
                "get",
                self.resource,
                "-n",
                self.namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self._proc.stdout:
            buffer += line
            while True:
                stripped = buffer.lstrip()
                if not stripped:
                    buffer = ""
                    break
                try:
                    event, end = decoder.raw_decode(stripped)
                except json.JSONDecodeError:
                    buffer = stripped
                    break
                buffer = stripped[end:]
                with self._lock:
                    self.events.append(
                        Seen(len(self.events), time.monotonic(), event["type"], event["object"])
                    )

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.events)

    def of(self, name: str) -> list[Seen]:
        return [e for e in self.snapshot() if e.name == name]

    def first(self, name: str, predicate: Callable[[Seen], bool]) -> Seen | None:
        return next((e for e in self.of(name) if predicate(e)), None)

    def wait(self, name: str, predicate: Callable[[Seen], bool], timeout: float) -> Seen:
        def found() -> Seen | None:
            return self.first(name, predicate)

        def describe() -> str:
            seen = self.of(name)
            return f"{self.resource} {name}: last seen {seen[-1].object if seen else None}"

        return wait_for(found, timeout, interval=0.1, message=describe)

    def phases(self, name: str) -> list[str]:
        """The phases `name` went through, in commit order, without repeats."""
        out: list[str] = []
        for e in self.of(name):
            if e.phase and (not out or out[-1] != e.phase):
                out.append(e.phase)
        return out


def verified_end(event: Seen) -> bool:
    """A terminal phase reached after a verified cleanup."""
    status = event.object.get("status") or {}
    verified = any(
        c.get("type") == "CleanupVerified" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return event.phase in TERMINAL and verified


def assert_waited_for(watch: Watch, holder: str, waiter: str) -> None:
    """`waiter` started only after `holder` had ended with a verified cleanup, in the
    order the API server committed their changes."""
    ended = watch.first(holder, verified_end)
    assert ended is not None, f"{holder} never ended verified: {watch.phases(holder)}"
    started = watch.first(waiter, lambda e: e.phase in RUNNING)
    assert started is not None, f"{waiter} never started: {watch.phases(waiter)}"
    assert started.index > ended.index, (
        f"{waiter} started (event {started.index}) before {holder} ended "
        f"(event {ended.index}): {watch.phases(holder)} / {watch.phases(waiter)}"
    )
