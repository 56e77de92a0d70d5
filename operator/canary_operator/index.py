"""The rollouts as this process last saw them (the watch, or its own writes), and
their specs parsed once per generation: what a reconcile plans from and who shares a
lock, without asking the API server."""

from __future__ import annotations

from pydantic import ValidationError

from canary_operator.api.models import CanaryRolloutSpec, Phase
from canary_operator.kube.api import JsonObj
from canary_operator.kube.cache import copy_json, newer_or_same, strip
from canary_operator.kube.rollouts import ROLLOUTS
from canary_operator.lock.keys import lock_keys
from canary_operator.lock.queue import UNSEEN, Candidate

# How many parsed specs are kept (the oldest parsed goes first).
PARSED_SPECS = 4096
_parsed_specs: dict[tuple[str, int], CanaryRolloutSpec] = {}


def parse_spec(body: JsonObj) -> CanaryRolloutSpec:
    """The spec, parsed once per generation of a rollout: every watch event and every
    reconcile asks for it, and the API server bumps metadata.generation on each change
    of a custom resource's spec (status and metadata writes leave it). Callers do not
    change the model they get."""
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid"), meta.get("generation")
    if uid is None or generation is None:
        return CanaryRolloutSpec.model_validate(body.get("spec") or {})
    key = (str(uid), int(generation))
    spec = _parsed_specs.get(key)
    if spec is None:
        spec = CanaryRolloutSpec.model_validate(body.get("spec") or {})
        if len(_parsed_specs) >= PARSED_SPECS:
            del _parsed_specs[next(iter(_parsed_specs))]  # the oldest parsed
        _parsed_specs[key] = spec
    return spec


def candidate(body: JsonObj) -> Candidate | None:
    """A rollout as the lock queue sees it (None if its spec cannot be read)."""
    try:
        spec = parse_spec(body)
    except ValidationError:
        return None
    meta = body["metadata"]
    status = body.get("status") or {}
    return Candidate(
        name=meta["name"],
        uid=meta["uid"],
        applied=_applied(meta, status),
        phase=Phase(status.get("phase") or Phase.PENDING),
        policy=spec.policy,
        deleting=bool(meta.get("deletionTimestamp")),
        queued_at=_seen(status),
        run=max(int(status.get("run") or 0), 1),
        next_applied=status.get("nextVersionSince"),
    )


def _seen(status: JsonObj) -> str:
    """When the operator first saw this run's spec (microseconds), to order runs
    applied within one second: an edit's versionSince; a new rollout's queuing."""
    since = str(status.get("versionSince") or "")
    if "." in since:
        return since
    return str(status.get("queuedAt") or UNSEEN)


def _applied(meta: JsonObj, status: JsonObj) -> str:
    """When the spec of the rollout's current run was applied, to the second: a new
    rollout's creation; an edit's first sight by the operator (status.versionSince);
    UNSEEN for an edit not yet recorded. Whole seconds, because creationTimestamp has
    no more; within one second the order of queuing decides (Candidate.queued_at)."""
    created = str(meta.get("creationTimestamp") or "")
    observed = status.get("observedGeneration")
    if observed is None:
        return created
    if observed != meta.get("generation"):
        return UNSEEN
    since = status.get("versionSince")
    return f"{since[:19]}Z" if since else created


class RolloutIndex:
    """Rollouts as last seen by the watch (or as this process last wrote them)."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], JsonObj] = {}  # (namespace, name) -> body
        # (namespace, name) -> (as the lock queue sees it, lock keys, target Deployment),
        # parsed once per change; rollouts whose spec cannot be read are left out.
        self._entries: dict[tuple[str, str], tuple[Candidate, tuple[str, ...], str]] = {}
        self._by_lock: dict[tuple[str, str], set[str]] = {}  # (namespace, lock key) -> names
        # (namespace, target Deployment) -> names: a Deployment's events find its
        # rollouts without walking every rollout (ended ones of other targets included).
        self._by_target: dict[tuple[str, str], set[str]] = {}
        self._phases: dict[tuple[str, str], Phase] = {}  # (namespace, uid) -> phase
        self._uids: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid

    def update(self, body: JsonObj, deleted: bool = False) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        known = self._bodies.get(key)
        if (
            not deleted
            and known is not None
            and known["metadata"].get("uid") == body["metadata"].get("uid")
            and not newer_or_same(body, known)
        ):
            return  # a watch event older than what this process wrote
        body = strip(body, ROLLOUTS)
        by_uid = (key[0], body["metadata"]["uid"])
        previous = self._uids.pop(key, None)
        if previous is not None and previous != by_uid[1]:
            self._phases.pop((key[0], previous), None)  # recreated under the same name
        old = self._entries.pop(key, None)
        if old is not None:
            for lock_key in old[1]:
                self._by_lock.get((key[0], lock_key), set()).discard(key[1])
            _discard(self._by_target, (key[0], old[2]), key[1])
        if deleted:
            self._phases.pop(by_uid, None)
            self._bodies.pop(key, None)
            return
        self._uids[key] = by_uid[1]
        phase = (body.get("status") or {}).get("phase") or Phase.PENDING.value
        self._phases[by_uid] = Phase(phase)
        self._bodies[key] = body
        me = candidate(body)
        if me is None:
            return
        spec = parse_spec(body)
        keys = lock_keys(spec)
        self._entries[key] = (me, keys, spec.target.deployment)
        for lock_key in keys:
            self._by_lock.setdefault((key[0], lock_key), set()).add(key[1])
        self._by_target.setdefault((key[0], spec.target.deployment), set()).add(key[1])

    def body(self, namespace: str, name: str) -> JsonObj | None:
        """The rollout as last seen (a copy: the reconcile may change it)."""
        found = self._bodies.get((namespace, name))
        return copy_json(found) if found is not None else None

    def candidate(self, namespace: str, name: str) -> Candidate | None:
        entry = self._entries.get((namespace, name))
        return entry[0] if entry is not None else None

    def active(self, namespace: str, uid: str) -> bool:
        """Whether the rollout with this uid exists (as last seen) and has not ended."""
        phase = self._phases.get((namespace, uid))
        return phase is not None and not phase.terminal

    def sharing_lock(self, namespace: str, lock_key: str) -> list[Candidate]:
        names = self._by_lock.get((namespace, lock_key), set())
        return [self._entries[(namespace, n)][0] for n in sorted(names)]

    def targeting(self, namespace: str, deployment: str) -> list[Candidate]:
        names = self._by_target.get((namespace, deployment), set())
        return [self._entries[(namespace, n)][0] for n in sorted(names)]


def _discard(groups: dict[tuple[str, str], set[str]], key: tuple[str, str], name: str) -> None:
    """Take `name` out of its group, and the group once empty (targets come and go)."""
    group = groups.get(key)
    if group is not None:
        group.discard(name)
        if not group:
            del groups[key]
