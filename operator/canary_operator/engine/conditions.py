"""One way to set a status condition (metav1.Condition semantics)."""

from __future__ import annotations

from datetime import datetime

from canary_operator.api.models import CanaryRolloutStatus, Condition
from canary_operator.api.timestamps import iso


def set_condition(
    status: CanaryRolloutStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
    *,
    to_end: bool = False,
) -> None:
    """Set condition `type_` on `status`. lastTransitionTime changes only when the
    condition's status ("True"/"False") does; the same status and reason update the
    message in place. `to_end`: the condition is always written anew at the end of the
    list, as a failed cleanup attempt records it (its order is part of the status)."""
    text = "True" if value else "False"
    conditions = status.conditions or []
    existing = next((c for c in conditions if c.type == type_), None)
    if existing and existing.status == text and existing.reason == reason and not to_end:
        existing.message = message
        existing.observed_generation = generation
        return
    changed = Condition(
        type=type_,
        status=text,
        reason=reason,
        message=message,
        last_transition_time=(
            existing.last_transition_time if existing and existing.status == text else iso(now)
        ),
        observed_generation=generation,
    )
    status.conditions = [c for c in conditions if c.type != type_] + [changed]
