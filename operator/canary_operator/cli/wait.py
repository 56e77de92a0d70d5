"""`canary-operator wait NAME`: block until the rollout's current spec has finished.

Made for a Spinnaker Run Job (Manifest) stage, which reads `SPINNAKER_PROPERTY_*`
lines from the Job's log into the stage's outputs. Exit 0 on Succeeded, 1 on any
other end (Failed, Aborted, Superseded, or the spec replaced by a newer one), 2 on a
timeout or an error. Progress goes to stderr, the properties to stdout.

In a Job, the arguments may come from the environment instead (CANARY_ROLLOUT,
CANARY_NAMESPACE, CANARY_WAIT_TIMEOUT), which suits Spinnaker's preconfigured jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from pydantic import ValidationError

from canary_operator.api.models import CanaryRolloutSpec, parse_duration
from canary_operator.cli import client
from canary_operator.cli.client import CliError, Session
from canary_operator.kube.api import JsonObj
from canary_operator.rollout_view import effective_phase, outcome_properties, settled

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
PROPERTY_KEYS = ("PHASE", "REASON", "FAILED_STEP", "FAILED_STEP_NAME", "MESSAGE", "RUN")


def add_arguments(parser: argparse.ArgumentParser, connection: bool = True) -> None:
    """The waiter's arguments (`connection`: also -n, --kubeconfig, --context)."""
    parser.add_argument(
        "name",
        nargs="?",
        default=os.environ.get("CANARY_ROLLOUT"),
        help="CanaryRollout name; also 'canaryrollout/NAME' or 'canaryRollout NAME' "
        "(as Spinnaker names deployed manifests); default: $CANARY_ROLLOUT",
    )
    parser.add_argument(
        "--timeout",
        default=os.environ.get("CANARY_WAIT_TIMEOUT") or "30m",
        help="give up after this long (Go duration; default 30m)",
    )
    if connection:
        parser.add_argument(
            "-n",
            "--namespace",
            default=os.environ.get("CANARY_NAMESPACE") or None,
            help="namespace (default: $CANARY_NAMESPACE, the context's, or the pod's)",
        )
        parser.add_argument("--kubeconfig", help="path to a kubeconfig")
        parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr, only the properties"
    )


def rollout_name(text: str) -> str:
    """'web-v001', 'canaryrollout/web-v001' or 'canaryRollout web-v001' -> 'web-v001'."""
    text = text.strip()
    for sep in ("/", " "):
        kind, found, name = text.partition(sep)
        if found and kind.split(".")[0].lower() in ("canaryrollout", "canaryrollouts", "cro"):
            return name.strip()
    return text


def properties(body: JsonObj | None, **override: str) -> str:
    """The SPINNAKER_PROPERTY_* lines (always the same keys; empty when unknown)."""
    props = outcome_properties(body) if body is not None else {"PHASE": "Unknown"}
    props.update(override)
    return "".join(f"SPINNAKER_PROPERTY_{k}={props.get(k, '')}\n" for k in PROPERTY_KEYS)


def progress_line(body: JsonObj) -> str:
    """One line of what changed: phase, step, weight, queue, message."""
    status = body.get("status") or {}
    parts = [f"phase={effective_phase(body)}"]
    for key, label in (("stepLabel", "step"), ("weight", "weight"), ("queueLabel", "queue")):
        if status.get(key) is not None:
            parts.append(f"{label}={status[key]}")
    if status.get("message"):
        parts.append(f"message={status['message']!r}")
    return " ".join(parts)


def _fingerprint(body: JsonObj) -> str | None:
    try:
        return CanaryRolloutSpec.model_validate(body.get("spec") or {}).run_fingerprint()
    except ValidationError:
        return None


@dataclass
class Waited:
    """How a wait ended: the last body seen, and whether it settled or was replaced."""

    body: JsonObj | None
    done: bool
    replaced: bool = False


async def wait_settled(
    session: Session,
    name: str,
    namespace: str,
    timeout: float,  # noqa: ASYNC109 - the deadline also ends a watch in progress
    progress: TextIO | None,
    pin_spec: bool = False,
) -> Waited:
    """Follow the rollout until its current spec's run is over.

    `pin_spec`: the version first seen is the one waited for; if a different spec
    (another version, not a pause or abort) replaces it, stop and say so."""
    result = Waited(None, False)
    shown = ""
    pinned: str | None = None

    async def until_settled() -> None:
        nonlocal shown, pinned
        async for body in client.follow(session, name, namespace):
            result.body = body
            line = progress_line(body)
            if progress is not None and line != shown:
                print(f"{time.strftime('%H:%M:%S')} {name}: {line}", file=progress, flush=True)
                shown = line
            fingerprint = _fingerprint(body)
            if pinned is None:
                pinned = fingerprint
            elif pin_spec and fingerprint != pinned:
                result.replaced = True
                return
            if settled(body):
                result.done = True
                return

    with contextlib.suppress(TimeoutError):  # a timeout leaves result.done False
        await asyncio.wait_for(until_settled(), timeout)
    return result


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Entry point of `canary-operator wait` and `kubectl canary wait`."""
    if not args.name:
        print("error: name a CanaryRollout (argument or $CANARY_ROLLOUT)", file=sys.stderr)
        out.write(properties(None, REASON="Error", MESSAGE="no rollout named"))
        return EXIT_TIMEOUT
    name = rollout_name(args.name)
    try:
        timeout = parse_duration(args.timeout).total_seconds()
    except ValueError as exc:
        print(f"error: --timeout: {exc}", file=sys.stderr)
        out.write(properties(None, REASON="Error", MESSAGE=str(exc)))
        return EXIT_TIMEOUT

    async def main() -> int:
        try:
            session = client.track(
                await client.connect(args.kubeconfig, args.context, args.namespace)
            )
            progress = None if args.quiet else sys.stderr
            waited = await wait_settled(
                session, name, session.namespace, timeout, progress, pin_spec=True
            )
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            out.write(properties(None, REASON="Error", MESSAGE=str(exc)))
            return EXIT_TIMEOUT
        body = waited.body
        if waited.replaced:
            generation = (body or {}).get("metadata", {}).get("generation")
            message = f"the spec was replaced by a newer version (generation {generation})"
            print(f"error: {name}: {message}", file=sys.stderr)
            out.write(properties(body, PHASE="Superseded", REASON="SpecChanged", MESSAGE=message))
            return EXIT_FAILED
        if not waited.done:
            phase = effective_phase(body) if body else "Unknown"
            print(
                f"error: {name} did not finish within {args.timeout} (phase {phase})",
                file=sys.stderr,
            )
            out.write(
                properties(body, REASON="Timeout", MESSAGE=f"not finished within {args.timeout}")
            )
            return EXIT_TIMEOUT
        assert body is not None
        out.write(properties(body))
        return EXIT_SUCCEEDED if effective_phase(body) == "Succeeded" else EXIT_FAILED

    code = client.run(main)
    out.flush()
    return code
