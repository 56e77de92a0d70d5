"""Rollouts the plugin makes for the user (`reset`, `undo`): created, announced, then
waited for until they settle, as `kubectl canary wait` does."""

from __future__ import annotations

import argparse
import sys

from canary_operator.api import models
from canary_operator.cli import client, wait
from canary_operator.cli.client import Session
from canary_operator.kube.api import JsonObj


async def create_then_wait(
    session: Session, body: JsonObj, announce: str, what: str, args: argparse.Namespace
) -> JsonObj | int:
    """Create `body` and print `announce`; then, unless `args.no_wait`, wait up to
    `args.timeout` for it to settle. Returns its last state, or the exit code to end
    with now (0: not waiting; 2: `what` did not finish in time, said on stderr)."""
    ns, name = session.namespace, body["metadata"]["name"]
    await client.call(session, session.kube.create(client.rollout_path(ns), body))
    print(announce)
    if args.no_wait:
        return 0
    timeout = models.parse_duration(args.timeout).total_seconds()
    waited = await wait.wait_settled(session, name, ns, timeout, sys.stdout)
    if not waited.done or waited.body is None:
        print(
            f"error: the {what} did not finish within {args.timeout}; see: kubectl canary "
            f"status {name}",
            file=sys.stderr,
        )
        return 2
    return waited.body
