"""Which version a run rolls out, how old it is, and what the target runs.

"Older" compares the ages of specs (status.versionSince), never version strings."""

from __future__ import annotations

from collections.abc import Mapping

from canary_operator.api.models import LiveVersion, Phase
from canary_operator.api.timestamps import parse_any_time, precise
from canary_operator.engine.annotations import ALLOW_OLDER_ANNOTATION, undoes
from canary_operator.engine.context import Context
from canary_operator.engine.types import PromotionRecord


def image_label(images: dict[str, str] | Mapping[str, str]) -> str:
    """The short form of a version: each image's last path element (web:2.0)."""
    return ",".join(sorted(image.rsplit("/", 1)[-1] for image in images.values()))


def version_text(images: Mapping[str, str]) -> str:
    return ",".join(f"{c}={i}" for c, i in sorted(images.items()))


def record_version_age(ctx: Context) -> None:
    """status.versionSince: when this spec was first seen. The first spec is as old as
    the rollout (creationTimestamp, the API server's clock); a changed spec is as old as
    the reconcile that first saw it. A retry keeps it (same spec, same age)."""
    status, fingerprint = ctx.status, ctx.rollout.spec.run_fingerprint()
    if status.fingerprint is not None and status.fingerprint != fingerprint:
        # Seen during the previous run (note_next_version), or now.
        status.version_since = status.next_version_since or precise(ctx.now)
    elif status.version_since is None:
        status.version_since = ctx.rollout.created or precise(ctx.now)
    status.fingerprint = fingerprint
    status.next_version_since = None


def note_next_version(ctx: Context) -> None:
    """A spec changed while a run goes on: when it was first seen is the next run's
    place in the lock's queue (lock/queue.py) and its age, so an edit made during a
    run ranks behind rollouts applied before it and ahead of those applied after, as
    the order of the applies says, not the moment the run happens to end."""
    status = ctx.status
    changed = status.fingerprint not in (None, ctx.rollout.spec.run_fingerprint())
    if changed and status.phase != Phase.PENDING:
        status.next_version_since = status.next_version_since or precise(ctx.now)
    else:
        status.next_version_since = None


def older_than_live(ctx: Context) -> str | None:
    """Why this run must not start because the target runs a newer version, or None.

    "Older" compares the ages of the two specs, never version strings: this run's
    status.versionSince against the versionSince recorded with the target's last
    promotion. A run of the very spec that is live (same rollout, same fingerprint) is
    never older. The user may let one run through (annotation allow-older=<run>); an
    undo is the user's explicit choice of an earlier version (engine/undo_run.py checks
    instead that what it undoes is still live)."""
    target = ctx.obs.target
    record = target.promotion if target is not None else None
    status, rollout = ctx.status, ctx.rollout
    if record is None or status.version_since is None or undoes(rollout) is not None:
        return None
    if record.uid == rollout.uid and record.fingerprint == status.fingerprint:
        return None
    mine, live = parse_any_time(status.version_since), parse_any_time(record.version_since)
    if mine is None or live is None or live <= mine:
        return None
    if rollout.annotations.get(ALLOW_OLDER_ANNOTATION) == str(status.run):
        return None
    return (
        f"target {rollout.spec.target.deployment} runs {version_text(record.images)}, promoted "
        f"by {record.rollout} run {record.run} at {record.promoted_at}; that version "
        f"(since {record.version_since}) is newer than this one (since "
        f"{status.version_since}), so this run was refused and nothing was changed. To roll "
        f"this older version out anyway: kubectl canary retry {rollout.name} --allow-older"
    )


def record_live(ctx: Context) -> None:
    """status.live: what the target runs, from its promotion record, and whether it
    still runs it (a client-side `kubectl apply` of an older manifest reverts the
    images and keeps the record: that shows as drift). A target seen without a record
    (its only promotion undone) runs no promoted version: status.live goes."""
    target = ctx.obs.target
    record: PromotionRecord | None = target.promotion if target is not None else None
    if target is None:
        return
    if record is None:
        ctx.status.live = None
        return
    now_runs = {c: target.images.get(c, "") for c in record.images}
    drifted = (
        version_text({c: i or "(none)" for c, i in now_runs.items()})
        if now_runs != dict(record.images)
        else None
    )
    ctx.status.live = LiveVersion(
        rollout=record.rollout,
        uid=record.uid,
        run=record.run,
        version=version_text(record.images),
        label=image_label(record.images) + (" (drifted)" if drifted else ""),
        version_since=record.version_since,
        promoted_at=record.promoted_at,
        this_rollout=record.uid == ctx.rollout.uid,
        drifted=drifted,
    )
