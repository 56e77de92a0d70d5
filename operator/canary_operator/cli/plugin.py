"""The `kubectl-canary` executable: a plain `list` goes the fast way (standard library
only: cli/lite.py), everything else (and any configuration the fast way does not
handle) to the full plugin in cli/kubectl_canary.py."""

from __future__ import annotations

import argparse
import sys

ROLLOUTS = "/apis/canary-operator.dev/v1alpha1"


def _fast_args(argv: list[str]) -> argparse.Namespace | None:
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("command")
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("-A", "--all-namespaces", action="store_true")
    try:
        args, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    return args if args.command == "list" and not unknown else None


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
        items = conn.get(f"{ROLLOUTS}{where}/canaryrollouts").get("items") or []
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
    result = fast_list(args)
    if result is not None:
        return result
    from canary_operator.cli.kubectl_canary import main as full

    return full(args)


if __name__ == "__main__":
    sys.exit(main())
