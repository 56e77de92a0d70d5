"""Who holds a Lease, as a run that does not hold it judges: a run of this operator
(which rollout, which run, whether it may have ended) or a foreign holder, and whom
the queue leaves out as holding it. Shared by the Lease protocol (lease.py) and the
controller's wake-ups, so that both rank the same runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from canary_operator.kube.api import JsonObj
from canary_operator.lock.queue import Candidate
from canary_operator.lock.renewer import holder_of, run_of, uid_of

LEASE_DURATION_SECONDS = 30
HOLDER_ANNOTATION = "canary-operator.dev/holder"
# The holderIdentity this operator wrote: a Lease whose holderIdentity differs was
# written by someone else (a foreign holder), whatever other annotations it kept.
IDENTITY_ANNOTATION = "canary-operator.dev/holder-identity"
UID_LENGTH = 36  # a Kubernetes uid (a UUID in its text form)


@dataclass(frozen=True)
class Holder:
    """Who holds a Lease, as a run that does not hold it judges."""

    identity: str | None
    rollout: str | None  # the holder rollout's name, for a run of ours
    shown: str | None  # how status names the holder
    phase: str | None
    queue_uid: str | None  # the holder as the queue leaves it out
    maybe_free: bool  # nobody holds it, or its holder may have ended (checked fresh)

    @classmethod
    def of(cls, lease: JsonObj | None, me: Candidate, candidates: list[Candidate]) -> Holder:
        identity = holder_of(lease)[0] if lease is not None else None
        if lease is None or identity is None:
            return cls(None, None, None, None, None, maybe_free=True)
        annotations = lease["metadata"].get("annotations") or {}
        if not ours(identity, annotations):
            # Someone else's holder: left alone until its lease expires (lease.py).
            duration = (lease.get("spec") or {}).get("leaseDurationSeconds")
            shown = (
                f"{identity}, not a run of this operator: taken once unrenewed for "
                f"{duration or LEASE_DURATION_SECONDS}s"
            )
            return cls(identity, None, shown, None, None, maybe_free=True)
        name = annotations.get(HOLDER_ANNOTATION)
        uid = uid_of(identity)
        if uid == me.uid:
            # An earlier run of this very rollout (this run does not hold it): that run
            # ended, and its release is on its way or was lost.
            return cls(identity, name, name or identity, None, None, maybe_free=True)
        holder = next((c for c in candidates if c.uid == uid), None)
        left_out = queue_uid(identity, candidates)  # None: the holder's run has ended
        ended = holder is None or not holder.active or left_out is None
        phase = holder.phase.value if holder is not None else None
        return cls(identity, name, name or identity, phase, left_out, maybe_free=ended)


def queue_uid(identity: str | None, candidates: Iterable[Candidate]) -> str | None:
    """The rollout the queue leaves out as holding the lock: the holder's, unless that
    rollout has gone on to a later run, which then waits in its place in the queue
    (that run's arrival) like anyone else; only the holding run is left out."""
    uid, run = uid_of(identity), run_of(identity)
    holder = next((c for c in candidates if c.uid == uid), None)
    moved_on = holder is not None and run not in (None, holder.run)
    return None if moved_on else uid


def earlier_run(identity: str | None, me: Candidate) -> bool:
    """Whether `identity` names a run of `me`'s rollout before `me`'s run."""
    run = run_of(identity)
    return uid_of(identity) == me.uid and run is not None and run < me.run


def ours(identity: str, annotations: dict[str, str]) -> bool:
    """Whether a run of this operator wrote the holder: the identity it wrote is kept
    beside it. (Written before runs were named: a bare rollout uid with the holder
    annotation.)"""
    written = annotations.get(IDENTITY_ANNOTATION)
    if written is not None:
        return written == identity
    return HOLDER_ANNOTATION in annotations and len(identity) == UID_LENGTH
