"""The `kubectl-canary` executable: a plain `list` goes the fast way (standard library
only: cli/lite.py), everything else (and any configuration the fast way does not
handle) to the full plugin in cli/kubectl_canary.py."""

from __future__ import annotations

import sys

ROLLOUTS = "/apis/canary-operator.dev/v1alpha1"


class _Args:
    def __init__(self) -> None:
        self.namespace: str | None = None
        self.kubeconfig: str | None = None
        self.context: str | None = None
        self.all_namespaces = False


def _fast_args(argv: list[str]) -> _Args | None:
    """`list` with only -n/--namespace, --kubeconfig, --context, -A (argparse is an
    import the fast path does without); anything else: None."""
    args, command = _Args(), None
    options = {"-n": "namespace", "--namespace": "namespace", "--kubeconfig": "kubeconfig"}
    options["--context"] = "context"
    i = 0
    while i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=")
        if name in options and word.startswith("--") and eq:
            setattr(args, options[name], value)
        elif word in options:
            if i + 1 >= len(argv):
                return None
            setattr(args, options[word], argv[i + 1])
            i += 1
        elif word in ("-A", "--all-namespaces"):
            args.all_namespaces = True
        elif word.startswith("-") or command is not None:
            return None
        else:
            command = word
        i += 1
    return args if command == "list" else None


def fast_list(argv: list[str]) -> int | None:
    """`list` without the heavy imports; None when the full plugin must answer."""
    args = _fast_args(argv)
    if args is None:
        return None
    from canary_operator.cli import listing, lite

    try:
        conn = lite.connect(args.kubeconfig, args.context, args.namespace)
    except (lite.Unsupported, OSError, ValueError, KeyError, TypeError):
        return None  # the full client explains (or handles) it
    namespace = None if args.all_namespaces else conn.namespace
    where = f"/namespaces/{namespace}" if namespace else ""
    try:
        listed = conn.get(f"{ROLLOUTS}{where}/canaryrollouts")
        items = (listed.get("items") if isinstance(listed, dict) else None) or []
    except lite.ApiError as exc:
        if exc.status == 403:
            message = f"permission denied: {exc}"
        elif exc.status == 401:
            message = f"unauthorized: the cluster refused the credentials ({exc})"
        elif exc.status == 404:
            message = "no canaryrollouts (is the CanaryRollout CRD installed?)"
        else:
            message = f"API error {exc.status}: {exc}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        print(f"error: cannot reach the Kubernetes API at {conn.server}: {detail}", file=sys.stderr)
        return 1
    print(listing.render(items, namespace))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) == 2 and args[0] == "completion" and args[1] in ("bash", "zsh"):
        from canary_operator.cli import completion

        print(completion.script(args[1]), end="")
        return 0
    result = fast_list(args)
    if result is not None:
        return result
    from canary_operator.cli.kubectl_canary import main as full

    return full(args)


if __name__ == "__main__":
    sys.exit(main())
