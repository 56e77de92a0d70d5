"""What a promotion leaves on the target Deployment, as the machine reads it: the
record of what was promoted (PromotionRecord) and what it replaced (PrePromotion)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionRecord:
    """What the operator wrote on the target when it last promoted it (annotation
    canary-operator.dev/promotion): which rollout, run and version, and how old that
    version is (`version_since`, the promoting spec's age), so later runs can tell
    whether they are older than what is live."""

    rollout: str
    uid: str
    run: int
    fingerprint: str
    images: Mapping[str, str]  # container -> image, as promoted
    version_since: str
    promoted_at: str


@dataclass(frozen=True)
class PrePromotion:
    """What the target was before a promotion (annotation
    canary-operator.dev/pre-promotion, written in the promotion's own write): the pod
    template it replaced, by hash and images, and the run whose promotion it was. A
    cleanup undoes that run's promotion from it while the promotion is incomplete; on
    the target itself, it survives an operator restart."""

    run_id: str  # the promoting run (engine.labels.run_id)
    images: Mapping[str, str]  # container -> image of the template replaced
    template_hash: str  # of the template replaced (kube.objects.template_hash)
