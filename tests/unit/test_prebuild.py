"""The background builds of tests/harness/prebuild.py, run by a real pytest in a
subprocess against stand-in build scripts: the tests that need a build run last,
wait for it outside their timeout, and fail with its log when it fails."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.harness.cluster import REPO_ROOT

# The conftest of the inner session: the plugin, with its chain replaced by two
# stand-in builds whose scripts the test writes.
INNER_CONFTEST = """
from pathlib import Path
import tests.harness.prebuild as prebuild

here = Path(__file__).parent
prebuild.BUILDS = (
    prebuild.LateBuild("first", (here / "first.sh",)),
    prebuild.LateBuild("second", (here / "second.sh",)),
)
pytest_plugins = ["tests.harness.prebuild"]
"""


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tests: str, *args: str
) -> pytest.RunResult:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=textwrap.dedent(tests))
    # The builds take longer than the inner tests' timeout: waiting must not count.
    pytester.makeini("[pytest]\ntimeout = 2\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), *sys.path]))
    monkeypatch.setenv("CANARY_BUILD_LOG_DIR", str(pytester.path))  # not the shared /tmp
    return pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", *args, timeout=120)


TESTS = """
    import pytest
    from pathlib import Path

    @pytest.mark.needs_build("second")
    def test_needs_second():
        assert (Path(__file__).parent / "second.out").read_text() == "built\\n"

    @pytest.mark.needs_build("first")
    def test_needs_first():
        assert (Path(__file__).parent / "first.out").exists()

    def test_needs_nothing():
        # Runs first, while the builds are still running.
        assert not (Path(__file__).parent / "second.out").exists()
"""


def test_tests_needing_a_build_run_last_and_wait_outside_their_timeout(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = pytester.path
    _script(here / "first.sh", f"sleep 3; echo built > {here}/first.out\n")
    _script(here / "second.sh", f"sleep 3; echo built > {here}/second.out\n")
    result = _run(pytester, monkeypatch, TESTS)
    result.assert_outcomes(passed=3)
    order = [line.split("::")[1].split()[0] for line in result.outlines if "PASSED" in line]
    assert order == ["test_needs_nothing", "test_needs_first", "test_needs_second"]
    result.stdout.fnmatch_lines(["*building in the background*first*second*"])


def test_a_failed_build_fails_the_tests_that_need_it_with_its_log(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = pytester.path
    _script(here / "first.sh", "echo 'cannot fetch module x'; exit 3\n")
    _script(here / "second.sh", f"echo built > {here}/second.out\n")
    result = _run(pytester, monkeypatch, TESTS)
    # The one needing nothing passes; the others error in setup, the second one
    # without being built at all (the chain stops at the first failure).
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*background build of first failed: first.sh exited 3*",
            "*cannot fetch module x*",
        ]
    )
    result.stdout.fnmatch_lines(["*background build of second failed: not built*first*"])
    assert not (here / "second.out").exists()


def test_the_session_ending_stops_a_build_still_running(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = pytester.path
    _script(here / "first.sh", f"echo $$ > {here}/first.pid; exec sleep 600\n")
    _script(here / "second.sh", "exit 0\n")
    tests = """
        import time
        from pathlib import Path

        import pytest

        @pytest.mark.needs_build("first")
        def test_needs_first():
            pass

        def test_fails_first():
            # Once the build is surely running (its script wrote its pid).
            pid_file = Path(__file__).parent / "first.pid"
            deadline = time.monotonic() + 30
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert False, pid_file.exists()
    """
    # -x: the failure ends the session while the build is still running.
    result = _run(pytester, monkeypatch, tests, "-x")
    result.assert_outcomes(failed=1)
    pid = int((here / "first.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
