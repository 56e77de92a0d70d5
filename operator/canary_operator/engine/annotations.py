"""The annotations by which humans (and kubectl canary) steer a rollout."""

from __future__ import annotations

from canary_operator.engine.types import Rollout

RESUME_ANNOTATION = "canary-operator.dev/resume"
RETRY_ANNOTATION = "canary-operator.dev/retry"
PROMOTE_ANNOTATION = "canary-operator.dev/promote"  # = run number: skip to promotion
# For humans, when a cleanup can never finish: give the lock up without a verified
# cleanup. The next holder cleans the target before its first step.
FORCE_RELEASE_ANNOTATION = "canary-operator.dev/force-release"
# = run number: that run may roll out a version older than the one live on the target.
ALLOW_OLDER_ANNOTATION = "canary-operator.dev/allow-older"
# = the run (<uid>/<run>) whose promotion this rollout puts back: the rollout is an undo
# (`kubectl canary undo`), the user's explicit choice of a version the target ran before.
UNDO_ANNOTATION = "canary-operator.dev/undo"


def retry_requested(rollout: Rollout) -> bool:
    """retry=N asks for run N: honoured once, when N is above the current run (a stale
    or lower value must not start runs over and over)."""
    retry = rollout.annotations.get(RETRY_ANNOTATION, "")
    return retry.isascii() and retry.isdigit() and int(retry) > rollout.status.run


def undoes(rollout: Rollout) -> str | None:
    """The run whose promotion this rollout undoes (None: not an undo)."""
    return rollout.annotations.get(UNDO_ANNOTATION) or None
