"""What the state machine sees (observations) and what it asks for (actions).

Both are plain immutable values so the machine stays pure: the reconciler fills an
`Observed` from the API, calls `plan()`, then executes the returned actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from canary_operator.api.models import (
    AnalysisStepSpec,
    CanaryRolloutSpec,
    CanaryRolloutStatus,
    ContainerLogTail,
    JobTemplate,
    MeasurementStatus,
    WebhookSpec,
)
from canary_operator.engine.promotion_records import PrePromotion as PrePromotion
from canary_operator.engine.promotion_records import PromotionRecord as PromotionRecord


@dataclass(frozen=True)
class Rollout:
    """The resource as the machine needs it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: CanaryRolloutSpec
    status: CanaryRolloutStatus
    deleting: bool = False
    has_finalizer: bool = True
    annotations: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None  # metadata.creationTimestamp


@dataclass(frozen=True)
class LockView:
    """The per-target lock as seen from one rollout (computed by the lock manager)."""

    name: str
    held: bool = False
    token: int | None = None  # the target lock's fencing token
    # Every lock the run holds, with its token (the target's, and its group's): each
    # is confirmed before a write to the target.
    tokens: tuple[tuple[str, int], ...] = ()
    holder: str | None = None
    holder_phase: str | None = None
    position: int = 0
    waiting: int = 0
    busy: bool = False  # another rollout holds it
    superseded_by: str | None = None  # a newer waiting rollout replaces this one
    recovered_from: str | None = None  # taken over from a stale holder
    renew_error: str | None = None  # the last renewal of a held lease failed (and why)
    acquired: bool = False  # taken in this very reconcile
    # The versions of the free Leases that acquisition was conditional on ("" for one
    # it created; None after a takeover): they stood unchanged and free from when they
    # were read until the acquisition (lock/run_lock.py read_stands).
    acquired_over: str | None = None


@dataclass(frozen=True)
class StableRecord:
    """What the operator wrote on the target before it first scaled it down (replicas
    router, mode Shift; annotation canary-operator.dev/stable-replicas): the replicas to
    restore, and the replicas it last wrote, so that a count someone else wrote since
    (a user, an HPA) is told apart. Durable on the target itself: it survives an
    operator restart, and a recovery cleanup by another rollout reads it too."""

    original: int
    written: int
    # Cleanup removes the canary once the stable has `original` ready pods, or (when the
    # stable cannot create its pods) at least this many: the floor the run kept.
    floor: int = 1


@dataclass(frozen=True)
class WorkloadView:
    """A Deployment's observed state."""

    replicas: int
    ready: int
    available: int
    updated: int
    current: bool  # the controller has observed the latest generation
    promoted_by: str | None = None  # annotation naming the run that promoted it
    promotion: PromotionRecord | None = None
    images: Mapping[str, str] = field(default_factory=dict)  # container -> image now
    # Why its pods cannot come up, read from the Deployment's conditions and its pods
    # (ReplicaFailure, image errors, unschedulable): waiting would not cure it.
    failure: str | None = None
    stable_record: StableRecord | None = None  # on the target only (see StableRecord)
    # On the target only: its pod template's hash, and what its last promotion replaced.
    template_hash: str | None = None
    pre_promotion: PrePromotion | None = None

    @property
    def rolled_out(self) -> bool:
        return (
            self.current
            and self.updated == self.replicas
            and self.available == self.replicas
            and self.ready == self.replicas
        )


@dataclass(frozen=True)
class JobView:
    name: str
    succeeded: bool = False
    failed: bool = False
    message: str = ""
    cleanup: bool = False  # a user cleanup Job (kept), not a test Job (deleted by cleanup)
    kept: bool = False  # a failed test Job kept for its logs (spec.cleanupPolicy.keepFailedJobs)


@dataclass(frozen=True)
class RouteView:
    """Traffic as the router reads it back."""

    weight: int  # percent of traffic going to the canary
    error: str | None = None
    # The route still names the canary (a 0 % backend, a header match): not yet reset.
    references_canary: bool = False
    # What the reset still waits for besides the route (the stable Deployment scaled
    # back to its original replicas and ready, after a Shift run), in words.
    restoring: str | None = None

    @property
    def reset(self) -> bool:
        """100 % stable, the stable at its original size, and nothing left that could
        send a request to the canary."""
        return self.weight == 0 and not self.references_canary and self.restoring is None


@dataclass(frozen=True)
class Lingering:
    """An object of the canary (pod, Deployment, Service, Job) that is being deleted
    but is still there: its deletionTimestamp is set. Cleanup waits for it; one whose
    deletion is long overdue blocks the cleanup (engine/cleanup_blocked.py)."""

    kind: str  # lower case, as kubectl names it: pod, deployment, service, job
    name: str
    # metadata.deletionTimestamp: when the deletion is due (for a pod, the request's
    # time plus its grace period; for other objects, the request's time).
    due: datetime
    finalizers: tuple[str, ...] = ()
    node: str | None = None  # a pod's spec.nodeName
    # What the pod's own status says about its node, if anything (e.g. evicted because
    # its node is unreachable, or removed by the pod GC because its node is gone).
    node_problem: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """The answer of a webhook call that ran in the background."""

    ok: bool
    message: str


class Need(Enum):
    """What a provisional plan asks to have observed before it decides."""

    # The run holds its lock and has not started: target and canary objects read from
    # the API server itself.
    START = "start"
    # The spec checked against the cluster, the target read fresh (obs.spec_problems
    # then holds the findings).
    VALIDATION = "validation"
    # Log tails of the failed test Jobs jobs_wanting_logs names (obs.job_logs).
    JOB_LOGS = "jobLogs"
    # A new run that passed its checks asks for its lock (the head of a free lock takes it).
    LOCK = "lock"
    # A cleanup about to be declared verified: everything read from the API server itself.
    VERIFICATION = "verification"


@dataclass(frozen=True)
class Observed:
    now: datetime
    lock: LockView
    target: WorkloadView | None
    canary: WorkloadView | None = None
    baseline: WorkloadView | None = None
    canary_service: bool = False
    route: RouteView = RouteView(weight=0)
    jobs: Mapping[str, JobView] = field(default_factory=dict)
    canary_pods: int = 0
    # The canary's objects being deleted but still there (see Lingering).
    lingering: tuple[Lingering, ...] = ()
    # Calls to user endpoints (webhooks, metric measurements) run in the background,
    # never inside a reconcile. Their answers, keyed like the action that asked for
    # them, come back here until the status that records them is written; `in_flight`
    # names the calls still running.
    checks: Mapping[str, CheckResult] = field(default_factory=dict)
    measurements: Mapping[str, MeasurementStatus] = field(default_factory=dict)
    in_flight: frozenset[str] = frozenset()
    # What the operator's configuration forbids in this spec (e.g. a Job naming a
    # ServiceAccount it may not use): the run is refused before it touches anything.
    policy_problems: tuple[str, ...] = ()
    # What the start-of-run validation (validation.py) found wrong against the cluster:
    # read only while the run has not started; a problem ends it InvalidSpec untouched.
    spec_problems: tuple[str, ...] = ()
    # Log tails of failed test Jobs (by Job name) that the status does not hold yet:
    # read before cleanup deletes the Jobs (see evidence.jobs_wanting_logs).
    job_logs: Mapping[str, tuple[ContainerLogTail, ...]] = field(default_factory=dict)
    # The needs this observation already answers (see Need, Plan.observe_next).
    answered: frozenset[Need] = frozenset()


# ---------------------------------------------------------------------- actions


@dataclass(frozen=True)
class AddFinalizer:
    pass


@dataclass(frozen=True)
class RemoveFinalizer:
    pass


@dataclass(frozen=True)
class ReleaseLock:
    pass


@dataclass(frozen=True)
class EnsureCanary:
    """Create or scale the canary Deployment (and its Service)."""

    replicas: int


@dataclass(frozen=True)
class ScaleStable:
    """Set the stable Deployment's replicas (replicas router, mode Shift), recording
    `original` on it (StableRecord) in the same write."""

    replicas: int
    original: int
    floor: int = 1


@dataclass(frozen=True)
class SetRouteWeight:
    weight: int


@dataclass(frozen=True)
class ResetRoute:
    """Send 100 % of traffic to stable and remove canary routing."""


@dataclass(frozen=True)
class DeleteCanaryObjects:
    """Delete canary/baseline Deployments, the canary Service and the test Jobs; the
    Jobs named in `keep_jobs` (failed, keepFailedJobs) are marked kept instead."""

    keep_jobs: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnsureJob:
    name: str
    template: JobTemplate
    step_label: str


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class PromoteStable:
    """Put the new version into the stable Deployment, marked with `run_id` and the
    promotion record (which version, how old) that later runs compare themselves with."""

    run_id: str
    version_since: str = ""
    # An undo (engine/undo_run.py): the target's whole pod template becomes the one in
    # the spec, exactly (a replace), not an apply of only the fields the spec names.
    exact: bool = False


@dataclass(frozen=True)
class UndoPromotion:
    """Put the target back as it was before the promotion by run `run_id` (its pod
    template and promotion record, from its PrePromotion), if it still carries it."""

    run_id: str


@dataclass(frozen=True)
class CallWebhook:
    """Have this webhook called in the background (once per key; asking again while
    it runs or after it answered does nothing)."""

    key: str
    webhook: WebhookSpec
    step_label: str


@dataclass(frozen=True)
class Measure:
    """Take one measurement of every metric of an analysis step, in the background.
    The key names the step and the measurement's index, so an answer is recorded once."""

    key: str
    analysis: AnalysisStepSpec
    roles: tuple[str, ...]  # canary, and baseline or stable for a statistical judge


@dataclass(frozen=True)
class Emit:
    reason: str
    message: str
    warning: bool = False


Action = (
    AddFinalizer
    | RemoveFinalizer
    | ReleaseLock
    | EnsureCanary
    | ScaleStable
    | SetRouteWeight
    | ResetRoute
    | DeleteCanaryObjects
    | EnsureJob
    | DeleteJob
    | PromoteStable
    | UndoPromotion
    | CallWebhook
    | Measure
    | Emit
)

CHECK_ACTIONS = (CallWebhook, Measure)
# Writes to objects of the target (shared with other rollouts of it): each is preceded
# by a check that the lock is still held with the run's token (fencing).
TARGET_EFFECTS = (
    EnsureCanary,
    ScaleStable,
    SetRouteWeight,
    ResetRoute,
    DeleteCanaryObjects,
    EnsureJob,
    DeleteJob,
    PromoteStable,
    UndoPromotion,
)


@dataclass
class Plan:
    """The next status and the actions that lead there.

    With `observe_next` set the plan is provisional: the caller acts on none of its
    actions and writes none of its status; it observes what is asked, adds it to
    `Observed.answered`, and plans again. A provisional plan carries the input status
    object itself (not a copy) and no actions."""

    status: CanaryRolloutStatus
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # seconds; None = wait for an event
    observe_next: Need | None = None
    # Which step asked for which action (a plan may run several steps in turn).
    owners: list[tuple[Action, int]] = field(default_factory=list, compare=False, repr=False)

    def owner(self, action: Action) -> int | None:
        """The index of the step that asked for this very action (None: no step did)."""
        return next((step for a, step in self.owners if a is action), None)

    def requeue(self, seconds: float) -> None:
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = max(0.0, seconds)
