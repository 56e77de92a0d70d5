"""`kubectl canary`: look at and steer CanaryRollouts.

Installed as the executable `kubectl-canary`, so kubectl finds it as a plugin.
Every command talks to the API like kubectl does (--kubeconfig, --context,
-n/--namespace) and prints errors as one line with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

from canary_operator.api import models
from canary_operator.cli import client, commands_undo, live, wait
from canary_operator.cli.client import Session
from canary_operator.cli.commands_lock import cmd_lock, cmd_reset
from canary_operator.cli.commands_steer import (
    cmd_abort,
    cmd_pause,
    cmd_promote,
    cmd_resume,
    cmd_retry,
)
from canary_operator.cli.commands_view import cmd_list, cmd_logs, cmd_status, cmd_watch

Command = Callable[[Session, argparse.Namespace], Awaitable[int]]


# ------------------------------------------------------------------------ main


def _connection_args(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("-n", "--namespace", default=default, help="namespace (default: context's)")
    parser.add_argument("--kubeconfig", default=default, help="path to a kubeconfig")
    parser.add_argument("--context", default=default, help="kubeconfig context")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl canary", description=__doc__.split("\n")[0])
    _connection_args(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _connection_args(p, suppress=True)
        p.set_defaults(func=func)
        return p

    p = command("list", cmd_list, "list rollouts (phase, step, weight, queue)")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    live.add_watch_arguments(p, "keep the list current (redrawn in place on a terminal)")
    p = command("status", cmd_status, "steps, weight, queue, outcome and events of a rollout")
    p.add_argument("name")
    p.add_argument("--events", type=int, default=10, help="how many recent events to show")
    live.add_watch_arguments(
        p, "follow as a live tree (steps, ReplicaSets, weight, queue) until the run ends"
    )
    p = command("watch", cmd_watch, "follow a rollout until it ends (exit 0 only on Succeeded)")
    p.add_argument("name")
    p.add_argument("--timeout", default=None, help="give up after this long (exit 2)")
    p.add_argument("--plain", action="store_true", help="line by line even on a terminal")
    for name, func, help_ in (
        ("abort", cmd_abort, "stop a rollout (spec.abort); its cleanup runs"),
        ("pause", cmd_pause, "hold a rollout at its current step (spec.paused)"),
        ("resume", cmd_resume, "continue a paused rollout, or release its pause step"),
        ("promote", cmd_promote, "skip the remaining steps to promotion"),
    ):
        command(name, func, help_).add_argument("name")
    p = command("retry", cmd_retry, "start a new run of a finished rollout")
    p.add_argument("name")
    p.add_argument(
        "--allow-older",
        action="store_true",
        help="let this run roll out its version even if a newer one was promoted since "
        "(otherwise such a run ends Superseded, reason OlderThanLive)",
    )
    p = command("logs", cmd_logs, "log tails of a rollout's failed test Jobs (and kept Jobs)")
    p.add_argument("name")
    p.add_argument("step", nargs="?", help="only this step: its number (2, 3.1) or name")
    p = command("lock", cmd_lock, "who holds a target's lock, who waits, and its history")
    p.add_argument("target", help="lock key: the target Deployment or spec.lockGroup")
    p.add_argument("--history", type=int, default=10, help="history entries to show")
    p = command("reset", cmd_reset, "run a target's built-in cleanup under its lock")
    p.add_argument("target", help="the target Deployment")
    p.add_argument("--timeout", default="10m", help="how long to wait for the reset")
    p.add_argument("--no-wait", action="store_true", help="create the reset rollout and exit")
    p.add_argument(
        "--http-route",
        help="the target's HTTPRoute (gatewayAPI routing); default: as the target's last rollout",
    )
    p.add_argument("--service", help="the target's stable Service; default: as its last rollout")
    p = command("undo", commands_undo.cmd_undo, "put back the version a target ran before")
    commands_undo.add_arguments(p)
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=["bash", "zsh"])
    help_ = "wait for a rollout's current spec to end (the Spinnaker waiter)"
    p = sub.add_parser("wait", help=help_, description=help_)
    _connection_args(p, suppress=True)
    wait.add_arguments(p, connection=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "wait":
        return wait.run(args)
    if args.command == "completion":
        from canary_operator.cli import completion

        print(completion.script(args.shell), end="")
        return 0
    for option in ("timeout",):
        value = getattr(args, option, None)
        if value:
            try:
                models.parse_duration(value)
            except ValueError as exc:
                print(f"error: --{option}: {exc}", file=sys.stderr)
                return 2

    async def run() -> int:
        session = client.track(await client.connect(args.kubeconfig, args.context, args.namespace))
        result: int = await args.func(session, args)
        return result

    return client.run(run)


if __name__ == "__main__":
    sys.exit(main())
