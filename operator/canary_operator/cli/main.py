"""`canary-operator`: run the operator, print the CRD, judge recorded analysis data."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _run(args: argparse.Namespace) -> int:
    from canary_operator.api.job_policy import ALLOW_ENV, AllowedServiceAccounts
    from canary_operator.cli.connection import ConfigError, check_config, use_config

    # Checked before kopf starts: a bad setting is one clear line and a non-zero exit,
    # not a traceback and a process that keeps retrying.
    try:
        AllowedServiceAccounts.parse(args.allow_job_service_accounts)
    except ValueError as exc:
        print(f"canary-operator: --allow-job-service-accounts: {exc}", file=sys.stderr)
        return 2
    try:
        check_config(args.kubeconfig, args.context)
    except ConfigError as exc:
        print(f"canary-operator: {exc}", file=sys.stderr)
        return 2
    if args.allow_job_service_accounts is not None:
        os.environ[ALLOW_ENV] = args.allow_job_service_accounts

    import kopf

    import canary_operator.handlers  # noqa: F401  (registers the kopf handlers)
    from canary_operator.web import RunOptions

    use_config(args.kubeconfig, args.context)

    log_format = kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format)
    if not args.verbose:  # one line per watch event is noise; our own logs tell the story
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces = args.namespace or []
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(
            options=RunOptions(
                http_port=args.http_port,
                http_host=args.http_host,
                leader_elect=args.leader_elect,
                leader_namespace=args.leader_election_namespace,
                leader_name=args.leader_election_id,
                workers=args.workers,
                namespaces=tuple(namespaces),
            )
        ),
    )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _wait(args: argparse.Namespace) -> int:
    from canary_operator.cli.wait import run

    return run(args)


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
    run.add_argument(
        "--http-port",
        type=int,
        default=8080,
        help="serve /healthz, /readyz, /metrics and /status/NS/NAME here (0: off)",
    )
    run.add_argument("--http-host", default="0.0.0.0", help="address to serve HTTP on")
    run.add_argument(
        "--leader-elect",
        action="store_true",
        help="run the controller only while holding the leader Lease (for several replicas)",
    )
    run.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the leader Lease (default: POD_NAMESPACE, else the pod's)",
    )
    run.add_argument(
        "--leader-election-id", default="canary-operator-leader", help="name of the leader Lease"
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=8,
        help="reconciles run at once (default 8; none waits on a user endpoint)",
    )
    run.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="json: one object a line"
    )
    run.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)",
    )
    run.add_argument("--context", help="kubeconfig context to use (default: its current-context)")
    run.add_argument(
        "--allow-job-service-accounts",
        metavar="LIST",
        default=None,
        help="ServiceAccounts that test/cleanup Jobs of a rollout may name, comma-separated: "
        "NAME (any watched namespace) or NAMESPACE/NAME; default: none, Jobs run as the "
        "namespace's default account (docs/security.md)",
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)

    from canary_operator.cli.wait import add_arguments

    wait = sub.add_parser(
        "wait",
        help="wait until a rollout's current spec has finished (Spinnaker Run Job); "
        "exit 0 Succeeded, 1 other end, 2 timeout/error",
    )
    add_arguments(wait)
    wait.set_defaults(func=_wait)

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
