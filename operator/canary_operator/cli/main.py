"""`canary-operator`: run the operator, print the CRD, judge recorded analysis data."""

from __future__ import annotations

import argparse
import logging
import sys


def _run(args: argparse.Namespace) -> int:
    import kopf

    import canary_operator.handlers  # noqa: F401  (registers the kopf handlers)

    kopf.configure(verbose=args.verbose)
    if not args.verbose:  # one line per watch event is noise; our own logs tell the story
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces = args.namespace or []
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=args.liveness,
    )
    return 0


def _crds(_: argparse.Namespace) -> int:
    from canary_operator.api.crd import render

    sys.stdout.write(render())
    return 0


def _judge(args: argparse.Namespace) -> int:
    from canary_operator.analysis.judge_cli import run

    return run(args.file, sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="canary-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable); default: all",
    )
    run.add_argument(
        "--liveness",
        default=None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)

    crds = sub.add_parser("crds", help="print the CustomResourceDefinition")
    crds.set_defaults(func=_crds)

    judge = sub.add_parser("judge", help="judge recorded canary/baseline data (JSON; - = stdin)")
    judge.add_argument("file")
    judge.set_defaults(func=_judge)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
