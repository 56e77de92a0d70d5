"""Builds that only some tests need (helm, the operator's image, the real node's parts,
Traefik), started in the background when collection ends.

A cold machine spends longer on these builds than on all the tests that need none of
them, so running the two one after the other nearly doubles a cold ``make test``.
Instead the builds run in one background chain, under ``nice`` so the control plane of
the running tests keeps the CPU it needs, while the tests that need none of them run.
The tests that need one are ordered last, in build order, and each waits for its build
before its protocol starts, i.e. outside its ``timeout``: a build is tens of minutes
cold, a test's timeout is ten. The build scripts cache by version and take a file lock,
so a fixture that calls its script again afterwards gets the cached result at once.
Logs: ``$CANARY_BUILD_LOG_DIR`` (default: the temporary directory)/canary-build-NAME.log.

A test names its build with ``@pytest.mark.needs_build("helm")``; ``real_node`` and
``traefik_gateway`` fixtures imply theirs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.cluster import EXTERNAL_KUBECONFIG_ENV, REPO_ROOT
from tests.harness.realnode import unavailable_reason

MARKER = "needs_build"
# Longer than any cold build measured here under load (the real node's parts: 52 min).
WAIT_SECONDS = 120 * 60


def _needs_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root"


def _needs_local_real_node() -> str | None:
    if os.environ.get(EXTERNAL_KUBECONFIG_ENV, "").strip():
        return "the real node joins only the local control plane"
    return unavailable_reason()


@dataclass(frozen=True)
class LateBuild:
    name: str
    scripts: tuple[Path, ...]
    # Why the tests that need it will skip themselves here (None: they will run).
    unavailable: Callable[[], str | None] = lambda: None
    implied_by_fixture: str | None = None


# Build order is test order: each later group needs more of the chain.
BUILDS: tuple[LateBuild, ...] = (
    LateBuild("helm", (REPO_ROOT / "hack" / "helm.sh",)),
    LateBuild("image", (REPO_ROOT / "hack" / "image" / "build.sh",), _needs_root),
    LateBuild(
        "realnode",
        (
            REPO_ROOT / "hack" / "realnode" / "build.sh",
            REPO_ROOT / "hack" / "realnode" / "images" / "build.sh",
        ),
        _needs_local_real_node,
        implied_by_fixture="real_node",
    ),
    LateBuild(
        "traefik",
        (REPO_ROOT / "hack" / "realnode" / "traefik.sh",),
        _needs_local_real_node,
        implied_by_fixture="traefik_gateway",
    ),
)


def _rank() -> dict[str, int]:
    return {build.name: rank for rank, build in enumerate(BUILDS, start=1)}


def needed_by(item: pytest.Item) -> set[str]:
    names = {name for mark in item.iter_markers(MARKER) for name in mark.args}
    unknown = names - _rank().keys()
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: unknown build(s) {sorted(unknown)}")
    fixtures = set(getattr(item, "fixturenames", ()))
    names |= {b.name for b in BUILDS if b.implied_by_fixture in fixtures}
    return names


def order_key(item: pytest.Item) -> int:
    """0 for a test that needs no late build, else the rank of the last one it needs."""
    rank = _rank()
    return max((rank[name] for name in needed_by(item)), default=0)


def log_path(name: str) -> Path:
    directory = os.environ.get("CANARY_BUILD_LOG_DIR") or tempfile.gettempdir()
    return Path(directory) / f"canary-build-{name}.log"


@dataclass
class _Result:
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    seconds: float = 0.0


class BackgroundBuilds:
    """One thread running the selected builds' scripts one after another."""

    def __init__(self, builds: Iterable[LateBuild]) -> None:
        self.builds = list(builds)
        self.results = {b.name: _Result() for b in self.builds}
        self._proc: subprocess.Popen[bytes] | None = None
        # Guards _stopping and _proc: stop() must see every process the thread starts.
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="late-builds", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        env = {**os.environ, "PYTHON": sys.executable}
        failed: str | None = None
        for build in self.builds:
            result = self.results[build.name]
            started = time.monotonic()
            if failed is None:
                result.error = self._run_scripts(build, env)
                failed = result.error and build.name
            else:
                result.error = f"not built: the build of {failed} before it failed"
            result.seconds = time.monotonic() - started
            result.done.set()

    def _run_scripts(self, build: LateBuild, env: dict[str, str]) -> str | None:
        log = log_path(build.name)
        with log.open("wb") as out:
            for script in build.scripts:
                with self._lock:
                    if self._stopping:
                        return "stopped: the session ended first"
                    # Own process group, so stop() ends the go toolchain under the script.
                    proc = self._proc = subprocess.Popen(
                        ["nice", "-n", "10", str(script)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                code = proc.wait()
                if code != 0:
                    tail = log.read_text(errors="replace")[-3000:]
                    return f"{script.name} exited {code} (log: {log}):\n{tail}"
        return None

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except ProcessLookupError:
                pass  # ended by itself meanwhile
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._thread.join(60)


_builds: BackgroundBuilds | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests waiting for a late build run last (stable: the rest keep their order).
    items.sort(key=order_key)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the late builds the selected tests need and will not skip; trylast: after
    the control plane's build, which is on every cluster test's critical path."""
    global _builds
    if session.config.option.collectonly or _builds is not None:
        return
    wanted: set[str] = set()
    for item in session.items:
        wanted |= needed_by(item)
    chain = [b for b in BUILDS if b.name in wanted and b.unavailable() is None]
    if not chain:
        return
    _builds = BackgroundBuilds(chain)
    _builds.start()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            "building in the background for the tests that run last: "
            + ", ".join(f"{b.name} (log: {log_path(b.name)})" for b in chain)
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(name, ...): needs a late build ({', '.join(_rank())}); runs last"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    # tryfirst makes this the outermost wrapper: the wait happens before pytest-timeout
    # starts the test's timer.
    if _builds is not None:
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        for name in sorted(needed_by(item) & _builds.results.keys(), key=_rank().__getitem__):
            result = _builds.results[name]
            if not result.done.is_set() and reporter is not None:
                reporter.write_line(f"\nwaiting for the background build of {name} ...")
            result.done.wait(WAIT_SECONDS)  # still running after it: failed in setup
            if reporter is not None and result.error is None and result.seconds:
                reporter.write_line(f"background build of {name}: {result.seconds:.0f}s")
                result.seconds = 0.0  # said once
    return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A failed build fails the tests that need it, with its log, instead of each of
    # them building again inside its own timeout.
    if _builds is None:
        return
    for name in needed_by(item) & _builds.results.keys():
        result = _builds.results[name]
        if not result.done.is_set():
            raise RuntimeError(f"the background build of {name} ran over {WAIT_SECONDS}s")
        if result.error is not None:
            raise RuntimeError(f"the background build of {name} failed: {result.error}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _builds is not None:
        _builds.stop()
