"""`canary-operator wait NAME`: block until the rollout's current spec has finished.

Made for a Spinnaker Run Job (Manifest) stage: clouddriver reads the Job's log
(`kubectl logs job/NAME -c CONTAINER`, stdout and stderr together) with its
PropertyParser (clouddriver-kubernetes .../provider/view/PropertyParser.java) into
the stage's outputs. That parser keeps a `SPINNAKER_PROPERTY_K=V` line only when
splitting it on `=` (empty parts dropped, parts trimmed) gives exactly two parts, so
an empty value or one containing `=` would silently vanish. The waiter therefore
prints a property line only for values that survive, and always the whole outcome
as one `SPINNAKER_CONFIG_JSON={...}` line, which the parser reads with Jackson,
intact. Exit 0 on Succeeded, 1 on any other end (Failed, Aborted, Superseded, or the
spec replaced by a newer one), 2 on a timeout or an error. Progress goes to stderr.

Besides how the run ended, the outputs say what it deployed: the version of the spec
the waiter waited for (its images, per container, and its fingerprint), and after a
success what the target runs (status.live).

In a Job, the arguments may come from the environment instead (CANARY_ROLLOUT,
CANARY_NAMESPACE, CANARY_WAIT_TIMEOUT, CANARY_ABORT_ON_TERM), which suits Spinnaker's
preconfigured jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from canary_operator.api.models import CanaryRolloutSpec, parse_duration
from canary_operator.cli import client
from canary_operator.cli.client import CliError, Session
from canary_operator.engine.versions import image_label, version_text
from canary_operator.kube.api import Conflict, JsonObj
from canary_operator.rollout_view import effective_phase, outcome_properties, settled

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_TERMINATED = 128 + signal.SIGTERM
PROPERTY_KEYS = ("PHASE", "REASON", "FAILED_STEP", "FAILED_STEP_NAME", "MESSAGE", "RUN")
# After those: what the run deploys (VERSION, VERSION_LABEL, FINGERPRINT, then one
# IMAGE_<CONTAINER> per container), then what the target runs after a success: these
# keys, from these fields of status.live.
LIVE_KEYS = {
    "LIVE_VERSION": "version",
    "LIVE_LABEL": "label",
    "LIVE_ROLLOUT": "rollout",
    "LIVE_RUN": "run",
}
IMAGE_KEY_PREFIX = "IMAGE_"
# A Kubernetes container name (an RFC 1123 label): lower-case letters, digits and
# `-`, so the key the parser lower-cases from a property line is the JSON line's key.
# A container not so named gets no key of its own (it is still in VERSION).
CONTAINER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
PROPERTY_PREFIX = "SPINNAKER_PROPERTY_"
CONFIG_JSON_PREFIX = "SPINNAKER_CONFIG_JSON="
# Guava's CharMatcher.whitespace() (Unicode White_Space): what the parser's
# trimResults() strips from each part.
GUAVA_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
# Below Orca's default task timeout for a Run Job (WaitOnJobCompletion: 120 min),
# so that without stageTimeoutMs the waiter still reports its own timeout first.
DEFAULT_TIMEOUT = "110m"


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
        default=os.environ.get("CANARY_WAIT_TIMEOUT") or DEFAULT_TIMEOUT,
        help=f"give up after this long (Go duration; default {DEFAULT_TIMEOUT}, below "
        "Orca's 120 min for a Run Job stage without stageTimeoutMs)",
    )
    parser.add_argument(
        "--abort-on-term",
        action="store_true",
        default=os.environ.get("CANARY_ABORT_ON_TERM", "").lower() in ("1", "true", "yes"),
        help="on SIGTERM (the Job deleted, e.g. a cancelled pipeline) set spec.abort=true "
        "on a rollout that has not ended, then exit; needs patch on canaryrollouts "
        "($CANARY_ABORT_ON_TERM)",
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


def survives_property_parser(value: str) -> bool:
    """Whether clouddriver's PropertyParser keeps `SPINNAKER_PROPERTY_K=value` as is:
    one line (the log is split on newlines), exactly two parts when split on `=`
    without empty ones, and nothing trimmed."""
    return (
        value != ""
        and "=" not in value
        and "\n" not in value
        and "\r" not in value
        and value == value.strip(GUAVA_WHITESPACE)
    )


def deployed_images(spec: JsonObj) -> dict[str, str]:
    """container -> image that a rollout's spec deploys: its template's containers
    when it has one (the template wins, as in promotion), else `spec.images` (a later
    entry for the same container wins, as in promotion). Read from the raw spec, so
    that a spec the operator refuses still says what it asked for."""
    template = spec.get("template")
    if isinstance(template, dict):
        entries = (template.get("spec") or {}).get("containers") or []
        pairs = [(e.get("name"), e.get("image")) for e in entries if isinstance(e, dict)]
    else:
        entries = spec.get("images") or []
        pairs = [(e.get("container"), e.get("image")) for e in entries if isinstance(e, dict)]
    return {str(name): str(image) for name, image in pairs if name and image}


def version_properties(spec: JsonObj | None, live: JsonObj | None) -> dict[str, str]:
    """The version a spec deploys (`VERSION` in the form of status.live.version,
    `VERSION_LABEL` in that of status.live.label, the spec's `FINGERPRINT` as in
    status.fingerprint, `IMAGE_<CONTAINER>` per container), then `live`
    (status.live) as `LIVE_*`; "" for what is not known."""
    images = deployed_images(spec or {})
    fingerprint = _fingerprint(spec) if spec is not None else None
    values = {
        "VERSION": version_text(images),
        "VERSION_LABEL": image_label(images),
        "FINGERPRINT": fingerprint or "",
    }
    for container, image in sorted(images.items()):
        if CONTAINER_NAME.fullmatch(container):
            values[IMAGE_KEY_PREFIX + container.upper()] = image
    for key, name in LIVE_KEYS.items():
        values[key] = str((live or {}).get(name) or "")
    return values


def _json_line(document: dict[str, str]) -> str:
    # ASCII only, one line; the magic string of the property rule must not appear
    # in it (the parser would also read the line as a property), so its underscore
    # is written as a JSON escape, which decodes to the same text.
    text = json.dumps(document, ensure_ascii=True, separators=(",", ":"))
    return CONFIG_JSON_PREFIX + text.replace(PROPERTY_PREFIX, "SPINNAKER\\u005fPROPERTY_") + "\n"


def properties(
    body: JsonObj | None,
    rollout: str = "",
    namespace: str = "",
    deployed: JsonObj | None = None,
    /,
    **override: str,
) -> str:
    """What the waiter prints on stdout for Spinnaker: a `SPINNAKER_PROPERTY_K=V`
    line for every value the parser keeps intact, then the whole outcome (every key,
    empty strings when unknown) as one `SPINNAKER_CONFIG_JSON=` line. Both give the
    same lower-case keys (`phase`, `failed_step`, ...) in the stage's outputs.

    `deployed`: the spec whose version is reported (default: the body's); the live
    version is reported only when the phase reported is Succeeded."""
    props = outcome_properties(body) if body is not None else {"PHASE": "Unknown"}
    props.update(override)
    values = {key: props.get(key, "") for key in PROPERTY_KEYS}
    spec = deployed if deployed is not None else (body or {}).get("spec")
    status = (body or {}).get("status") or {}
    live = status.get("live") if values["PHASE"] == "Succeeded" else None
    live = live if isinstance(live, dict) else None
    values.update(version_properties(spec, live))
    lines = [
        f"{PROPERTY_PREFIX}{key}={value}\n"
        for key, value in values.items()
        if survives_property_parser(value)
    ]
    meta = (body or {}).get("metadata") or {}
    document = {key.lower(): value for key, value in values.items()}
    document["rollout"] = str(meta.get("name") or rollout)
    document["namespace"] = str(meta.get("namespace") or namespace)
    return "".join(lines) + _json_line(document)


def progress_line(body: JsonObj) -> str:
    """One line of what changed: phase, step, weight, queue, message."""
    status = body.get("status") or {}
    parts = [f"phase={effective_phase(body)}"]
    for key, label in (("stepLabel", "step"), ("weight", "weight"), ("queueLabel", "queue")):
        if status.get(key) is not None:
            parts.append(f"{label}={status[key]}")
    if status.get("message"):
        parts.append(f"message={status['message']!r}")
    # stderr is in the same log the parser reads: never let a message pose as a property.
    return " ".join(parts).replace(PROPERTY_PREFIX, "SPINNAKER-PROPERTY-")


def _fingerprint(spec: JsonObj) -> str | None:
    try:
        return CanaryRolloutSpec.model_validate(spec).run_fingerprint()
    except ValidationError:
        return None


@dataclass
class Waited:
    """How a wait ended: the last body seen, and whether it settled, was replaced, or
    was stopped from outside (SIGTERM); `first`, the first body seen, holds the spec
    waited for (the version reported, even when a newer spec replaced it)."""

    body: JsonObj | None
    done: bool
    replaced: bool = False
    stopped: bool = False
    first: JsonObj | None = None

    @property
    def deployed(self) -> JsonObj | None:
        """The spec waited for."""
        spec = (self.first or {}).get("spec")
        return spec if isinstance(spec, dict) else None


async def wait_settled(
    session: Session,
    name: str,
    namespace: str,
    timeout: float,  # noqa: ASYNC109 - the deadline also ends a watch in progress
    progress: TextIO | None,
    pin_spec: bool = False,
    stop: asyncio.Event | None = None,
) -> Waited:
    """Follow the rollout until its current spec's run is over.

    `pin_spec`: the version first seen is the one waited for; if a different spec
    (another version, not a pause or abort) replaces it, stop and say so.
    `stop`: set from outside to end the wait early (`stopped`)."""
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
            fingerprint = _fingerprint(body.get("spec") or {})
            if result.first is None:
                result.first = body
            if pinned is None:
                pinned = fingerprint
            elif pin_spec and fingerprint != pinned:
                result.replaced = True
                return
            if settled(body):
                result.done = True
                return

    following = asyncio.ensure_future(until_settled())
    halting = asyncio.ensure_future(stop.wait()) if stop is not None else None
    tasks = [t for t in (following, halting) if t is not None]
    try:  # a timeout leaves result.done False
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if following in done:
        following.result()  # a CliError from following the rollout ends the wait
    elif halting is not None and halting in done:
        result.stopped = True
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
        out.write(properties(None, name, REASON="Error", MESSAGE=str(exc)))
        return EXIT_TIMEOUT

    async def main() -> int:
        # Orca cancels a Run Job stage by deleting its Job: the pod gets SIGTERM and
        # a grace period, time enough for one patch.
        terminated = asyncio.Event()
        loop = asyncio.get_running_loop()
        abort_on_term = bool(getattr(args, "abort_on_term", False))
        if abort_on_term:
            loop.add_signal_handler(signal.SIGTERM, terminated.set)
        namespace = getattr(args, "namespace", None) or ""
        try:
            session = client.track(
                await client.connect(args.kubeconfig, args.context, args.namespace)
            )
            namespace = session.namespace
            progress = None if args.quiet else sys.stderr
            waited = await wait_settled(
                session, name, namespace, timeout, progress, pin_spec=True, stop=terminated
            )
            if waited.stopped:
                return await _terminated(session, name, namespace, out)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            out.write(properties(None, name, namespace, REASON="Error", MESSAGE=str(exc)))
            return EXIT_TIMEOUT
        finally:
            if abort_on_term:
                loop.remove_signal_handler(signal.SIGTERM)
        body, deployed = waited.body, waited.deployed
        if waited.replaced:
            generation = (body or {}).get("metadata", {}).get("generation")
            message = f"the spec was replaced by a newer version (generation {generation})"
            print(f"error: {name}: {message}", file=sys.stderr)
            out.write(
                properties(
                    body,
                    name,
                    namespace,
                    deployed,
                    PHASE="Superseded",
                    REASON="SpecChanged",
                    MESSAGE=message,
                )
            )
            return EXIT_FAILED
        if not waited.done:
            phase = effective_phase(body) if body else "Unknown"
            print(
                f"error: {name} did not finish within {args.timeout} (phase {phase})",
                file=sys.stderr,
            )
            out.write(
                properties(
                    body,
                    name,
                    namespace,
                    deployed,
                    REASON="Timeout",
                    MESSAGE=f"not finished within {args.timeout}",
                )
            )
            return EXIT_TIMEOUT
        assert body is not None
        out.write(properties(body, name, namespace, deployed))
        return EXIT_SUCCEEDED if effective_phase(body) == "Succeeded" else EXIT_FAILED

    code = client.run(main)
    out.flush()
    return code


async def _terminated(session: Session, name: str, namespace: str, out: TextIO) -> int:
    """SIGTERM with --abort-on-term: abort the rollout if its run has not ended."""
    try:
        request = await client.request_abort(session.kube, namespace, name)
    except (ApiException, Conflict, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise CliError(f"abort on SIGTERM failed: {client.explain(exc, session.server)}") from exc
    body = request.body
    if body is None:
        raise CliError(f'canaryrollout "{name}" not found in namespace "{namespace}"')
    if request.aborted:
        message = "the waiter was stopped (SIGTERM); abort requested (spec.abort=true)"
    else:
        message = f"the waiter was stopped (SIGTERM); the run had ended ({effective_phase(body)})"
    print(f"{name}: {message}", file=sys.stderr)
    # After the abort patch the generation-aware phase is Pending; report the phase
    # the run was in.
    phase = str((body.get("status") or {}).get("phase") or "Pending")
    out.write(properties(body, PHASE=phase, REASON="Terminated", MESSAGE=message))
    return EXIT_TERMINATED
