"""Shell completion for the plugin.

- `kubectl canary <TAB>`: kubectl (1.26+) runs `kubectl_complete-canary` from PATH with
  the words after the plugin name, the last being the word under the cursor, and reads
  one candidate a line, optionally followed by `:<directive>` (Cobra's
  ShellCompDirective; 4 = no file completion). That protocol is kubectl's own:
  kubernetes/kubernetes, staging/src/k8s.io/kubectl/pkg/cmd/plugin/plugin_completion.go
  (pluginCompletion, getPluginCompletions). This package installs that executable.
- `kubectl-canary <TAB>` (the plugin run directly): `kubectl canary completion
  bash|zsh` prints a script that asks the same executable.

Rollout names, namespaces and targets come from the API through the fast, standard
library client (cli/lite.py), so a TAB costs one small request.
"""

from __future__ import annotations

import sys

NO_FILE_COMPLETION = 4  # cobra.ShellCompDirectiveNoFileComp

GLOBAL_FLAGS = ["-n", "--namespace", "--kubeconfig", "--context"]
# command -> (flags, what its first positional argument is); kept equal to
# kubectl_canary.build_parser() by tests/unit/test_live_view.py.
COMMANDS: dict[str, tuple[list[str], str | None]] = {
    "list": (["-A", "--all-namespaces", "-w", "--watch", "-o", "--output", "--plain"], None),
    "status": (["--events", "-w", "--watch", "-o", "--output", "--plain"], "rollout"),
    "watch": (["--timeout", "--plain"], "rollout"),
    "abort": ([], "rollout"),
    "pause": ([], "rollout"),
    "resume": ([], "rollout"),
    "promote": ([], "rollout"),
    "retry": (["--allow-older"], "rollout"),
    "logs": ([], "rollout"),
    "lock": (["--history"], "target"),
    "reset": (["--timeout", "--no-wait", "--http-route", "--service"], "target"),
    "undo": (["--to-revision", "--timeout", "--no-wait"], "target"),
    "completion": ([], "shell"),
    "wait": (["--timeout", "--abort-on-term", "--quiet"], "rollout"),
}
VALUES = {"-o": ["json", "yaml"], "--output": ["json", "yaml"]}
TAKES_VALUE = {"-n", "--namespace", "--kubeconfig", "--context", "-o", "--output"} | {
    "--events",
    "--timeout",
    "--history",
    "--http-route",
    "--service",
    "--to-revision",
}


def _api_names(words: list[str], what: str) -> list[str]:
    """Names from the cluster (best effort: nothing on any error)."""
    from canary_operator.cli import lite

    options: dict[str, str | None] = {"namespace": None, "kubeconfig": None, "context": None}
    for i, word in enumerate(words[:-1]):
        key = {"-n": "namespace", "--namespace": "namespace"}.get(word, word.lstrip("-"))
        if key in options:
            options[key] = words[i + 1]
    try:
        conn = lite.connect(options["kubeconfig"], options["context"], options["namespace"])
        if what == "namespace":
            listed = conn.get("/api/v1/namespaces")
        else:
            listed = conn.get(
                f"/apis/canary-operator.dev/v1alpha1/namespaces/{conn.namespace}/canaryrollouts"
            )
    except Exception:
        return []
    items = (listed.get("items") if isinstance(listed, dict) else None) or []
    if what == "target":
        names = set()
        for item in items:
            spec = item.get("spec") or {}
            names.add(spec.get("lockGroup"))  # a lock: a group's, or a target's
            names.add((spec.get("target") or {}).get("deployment"))
        return sorted(n for n in names if n)
    return sorted(str(i["metadata"]["name"]) for i in items)


def candidates(words: list[str]) -> list[str]:
    """Completions for the last word, given the words after the plugin's name."""
    if not words:
        words = [""]
    current, before = words[-1], words[:-1]
    if before and before[-1] in VALUES:
        return [v for v in VALUES[before[-1]] if v.startswith(current)]
    if before and before[-1] in ("-n", "--namespace"):
        return [n for n in _api_names(words, "namespace") if n.startswith(current)]
    if before and before[-1] in TAKES_VALUE:
        return []
    positional: list[str] = []
    skip = False
    for word in before:
        if skip:
            skip = False
        elif word in TAKES_VALUE:
            skip = True
        elif not word.startswith("-"):
            positional.append(word)
    if not positional:
        if current.startswith("-"):
            return [f for f in GLOBAL_FLAGS if f.startswith(current)]
        return [c for c in COMMANDS if c.startswith(current)]
    command = positional[0]
    flags, argument = COMMANDS.get(command, ([], None))
    if current.startswith("-"):
        return [f for f in [*flags, *GLOBAL_FLAGS] if f.startswith(current)]
    if len(positional) == 1 and argument is not None:
        if argument == "shell":
            return [s for s in ("bash", "zsh") if s.startswith(current)]
        return [n for n in _api_names(words, argument) if n.startswith(current)]
    return []


BASH = """# bash completion for kubectl-canary (kubectl canary completion bash)
_kubectl_canary() {
    local cur="${COMP_WORDS[COMP_CWORD]}"
    local IFS=$'\\n'
    local out
    out=$(kubectl_complete-canary "${COMP_WORDS[@]:1:$((COMP_CWORD-1))}" "$cur" 2>/dev/null)
    COMPREPLY=($(printf '%s\\n' "$out" | grep -v '^:'))
}
complete -o nosort -F _kubectl_canary kubectl-canary 2>/dev/null \\
    || complete -F _kubectl_canary kubectl-canary
"""

ZSH = """#compdef kubectl-canary
# zsh completion for kubectl-canary (kubectl canary completion zsh)
_kubectl_canary() {
    local -a completions
    local out
    out=$(kubectl_complete-canary "${(@)words[2,CURRENT-1]}" "${words[CURRENT]}" 2>/dev/null)
    completions=("${(@f)$(print -r -- "$out" | grep -v '^:')}")
    compadd -a completions
}
compdef _kubectl_canary kubectl-canary
"""


def script(shell: str) -> str:
    return BASH if shell == "bash" else ZSH


def main(argv: list[str] | None = None) -> int:
    """`kubectl_complete-canary WORD... CURRENT`: candidates, then the directive."""
    words = sys.argv[1:] if argv is None else list(argv)
    for candidate in candidates(words):
        print(candidate)
    print(f":{NO_FILE_COMPLETION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
