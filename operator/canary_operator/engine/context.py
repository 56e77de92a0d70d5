"""The per-call context of one plan: the rollout, what was observed, and the plan
being built (its status a copy of the rollout's, so the input is never changed)."""

from __future__ import annotations

from canary_operator.api.models import Phase
from canary_operator.engine.conditions import set_condition
from canary_operator.engine.types import Action, Emit, Observed, Plan, Rollout

# Polling is only a safety net: progress is driven by watch events on the rollout,
# its Deployments, Jobs and the Lease. These bound how stale a missed event can leave us.
POLL_RUNNING = 5.0
POLL_WAITING = 15.0

StepResult = tuple[bool, str] | None  # (succeeded, message); None: still running


class Context:
    """Per-call helpers bound to one rollout and one observation."""

    def __init__(self, rollout: Rollout, obs: Observed, last_step: int | None = None) -> None:
        self.rollout = rollout
        self.last_step = last_step  # no step after this one starts in this plan
        self.spec = rollout.spec
        self.obs = obs
        self.now = obs.now
        self.status = rollout.status.model_copy(deep=True)
        self.plan = Plan(status=self.status)
        self.waiting_for_resume = False  # an inconclusive analysis holds like a pause

    def act(self, *actions: Action) -> None:
        self.plan.actions.extend(actions)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.act(Emit(reason, message, warning))

    def set_condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        set_condition(
            self.status, type_, status, reason, message, self.now, self.rollout.generation
        )

    def enter(self, phase: Phase, message: str, announce: bool = True) -> None:
        """`announce`: record the new phase as an Event (unless another Event of the
        same plan says it better)."""
        if self.status.phase != phase and announce:
            self.event(phase.value, message)
        self.status.phase = phase
        self.status.message = message
