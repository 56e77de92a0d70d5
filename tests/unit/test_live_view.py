"""The live views (cli/live.py) and shell completion (cli/completion.py), without a
cluster: the tree's content, drawing in place vs appending, and completion candidates
against the parser they must mirror."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest

from canary_operator.cli import completion, kubectl_canary, live

BODY: dict[str, Any] = {
    "metadata": {"name": "web-seed", "namespace": "demo", "generation": 1},
    "spec": {
        "target": {"deployment": "web", "service": "web"},
        "images": [{"container": "app", "image": "web:2.0"}],
        "steps": [
            {"name": "start canary", "canary": {"replicas": 1}},
            {
                "name": "canary tests",
                "parallel": [
                    {"name": "smoke", "test": {"job": {"spec": {}}}},
                    {"name": "api", "test": {"webhook": {"url": "http://t/"}}},
                ],
            },
            {"setWeight": 10},
            {"promote": {}},
        ],
    },
    "status": {
        "phase": "Progressing",
        "run": 1,
        "observedGeneration": 1,
        "currentStep": 1,
        "stepLabel": "2/4 parallel",
        "weight": 25,
        "queueLabel": "holding",
        "steps": [
            {"name": "start canary", "kind": "canary", "phase": "Succeeded"},
            {
                "name": "canary tests",
                "kind": "parallel",
                "phase": "Running",
                "children": [
                    {"name": "smoke", "kind": "test", "phase": "Succeeded"},
                    {"name": "api", "kind": "test", "phase": "Running"},
                ],
            },
        ],
    },
}


def rs(name: str, owner: str, image: str, replicas: int, ready: int, rev: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "ownerReferences": [{"kind": "Deployment", "name": owner}],
            "annotations": {"deployment.kubernetes.io/revision": rev},
        },
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "app", "image": image}]}},
        },
        "status": {"readyReplicas": ready},
    }


REPLICASETS = [
    rs("web-7d9", "web", "web:1.0", 3, 3, "1"),
    rs("web-canary-5f8", "web-canary", "web:2.0", 1, 0, "1"),
    rs("other-1", "other", "other:1", 2, 2, "1"),
]


def test_the_tree_shows_steps_items_replicasets_weight_and_queue() -> None:
    tree = live.render_tree(BODY, REPLICASETS)
    lines = tree.split("\n")
    assert "Weight:      25% to canary  [#####...............]" in lines
    assert "Queue:       holding" in lines
    assert "├── ✔ 1. start canary (canary 1 pod) Succeeded" in "\n".join(lines)
    assert any("▶ 2. canary tests (parallel (2)) Running ◀" in line for line in lines)
    assert any(line.endswith("├── ✔ smoke (test) Succeeded") for line in lines)
    assert any(line.endswith("└── ▶ api (test) Running") for line in lines)
    assert any("◌ 4. promote (promote) Pending" in line for line in lines)
    assert any("⧉ deployment/web (stable)" in line for line in lines)
    assert any("web-7d9  web:1.0  3/3 ready  rev 1" in line for line in lines)
    assert any("⧉ deployment/web-canary (canary)" in line for line in lines)
    assert any("web-canary-5f8  web:2.0  0/1 ready" in line for line in lines)
    assert "other-1" not in tree  # another Deployment's ReplicaSet


def test_old_replicasets_scaled_to_zero_are_left_out() -> None:
    sets = [rs("web-new", "web", "web:2.0", 3, 3, "2"), rs("web-old", "web", "web:1.0", 0, 0, "1")]
    tree = live.render_tree(BODY, sets)
    assert "web-new" in tree and "web-old" not in tree


def test_a_terminal_gets_the_frame_redrawn_in_place_a_pipe_gets_it_appended() -> None:
    out = io.StringIO()
    screen = live.Screen(out, in_place=True)
    screen.draw("a\nb")
    screen.draw("a\nb")  # unchanged: nothing written
    screen.draw("c")
    assert out.getvalue() == "\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J\x1b[Hc\x1b[K\n\x1b[J"
    out = io.StringIO()
    screen = live.Screen(out, in_place=False, clock=lambda: "12:00:00")
    screen.draw("a")
    screen.draw("a")
    screen.draw("b")
    assert out.getvalue() == "--- 12:00:00\na\n--- 12:00:00\nb\n"


def test_watch_output_is_one_json_document_a_line_and_yaml_documents() -> None:
    out = io.StringIO()
    live._print_object({"a": 1}, "json", out)
    live._print_object({"a": 2}, "json", out)
    assert out.getvalue() == '{"a": 1}\n{"a": 2}\n'
    out = io.StringIO()
    live._print_object({"a": 1}, "yaml", out)
    assert out.getvalue() == "---\na: 1\n"


# ----------------------------------------------------------------- completion


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = kubectl_canary.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_completion_knows_every_command_and_its_flags() -> None:
    subs = _subparsers()
    assert set(completion.COMMANDS) == set(subs)
    for name, sub in subs.items():
        flags = {
            o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")
        } - set(completion.GLOBAL_FLAGS)
        assert set(completion.COMMANDS[name][0]) == flags, name


def test_completion_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        completion, "_api_names", lambda words, what: {"rollout": ["web-a", "web-b", "api"]}[what]
    )
    assert completion.candidates(["st"]) == ["status"]
    assert completion.candidates([""])[:2] == ["list", "status"]
    assert completion.candidates(["status", "web"]) == ["web-a", "web-b"]
    assert completion.candidates(["-n", "demo", "status", ""]) == ["web-a", "web-b", "api"]
    assert completion.candidates(["status", "-o", ""]) == ["json", "yaml"]
    assert completion.candidates(["list", "--w"]) == ["--watch"]
    assert completion.candidates(["completion", ""]) == ["bash", "zsh"]
    assert completion.candidates(["status", "web-a", ""]) == []


def test_the_completion_executable_ends_with_the_no_file_directive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert completion.main(["compl"]) == 0
    assert capsys.readouterr().out == "completion\n:4\n"


def test_the_scripts_call_the_completion_executable() -> None:
    for shell in ("bash", "zsh"):
        assert "kubectl_complete-canary" in completion.script(shell)


def test_the_bash_script_completes_through_the_executable() -> None:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    bash = shutil.which("bash")
    assert bash is not None
    venv_bin = str(Path(sys.executable).parent)
    run = (
        'eval "$(kubectl-canary completion bash)"; COMP_WORDS=(kubectl-canary st); '
        'COMP_CWORD=1; _kubectl_canary; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(
        [bash, "-c", run],
        env={"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["status"]
