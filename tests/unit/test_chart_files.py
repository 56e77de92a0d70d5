"""The chart cannot read files outside itself, so it carries copies of the CRD, the
alert rules and the dashboard: they must be the very files manifests/ has."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART_FILES = REPO / "charts" / "canary-operator" / "files"


@pytest.mark.parametrize(
    "source",
    [
        "crds/canaryrollouts.yaml",
        "manifests/monitoring/rules/canary-operator.rules.yaml",
        "manifests/monitoring/dashboards/canary-operator.json",
    ],
)
def test_chart_copy_is_identical(source: str) -> None:
    original = REPO / source
    copy = CHART_FILES / original.name
    assert copy.read_bytes() == original.read_bytes(), (
        f"{copy.relative_to(REPO)} differs from {source}: run `make chart-files`"
    )


def test_chart_has_no_other_files() -> None:
    assert sorted(p.name for p in CHART_FILES.iterdir()) == [
        "canary-operator.json",
        "canary-operator.rules.yaml",
        "canaryrollouts.yaml",
    ]


def test_the_image_lock_pins_every_runtime_dependency() -> None:
    """hack/image/requirements.txt (installed with --no-deps) must name each dependency
    of pyproject.toml; a missing one only shows when the image runs."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {
        re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0]).lower()
        for dep in project["dependencies"]
    }
    lock = (REPO / "hack" / "image" / "requirements.txt").read_text().splitlines()
    pinned = {line.split("==")[0] for line in lock if "==" in line}
    assert declared <= pinned, sorted(declared - pinned)
