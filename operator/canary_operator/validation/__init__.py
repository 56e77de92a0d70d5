"""Validation of a rollout against the cluster, before its run touches anything.

The schema (OpenAPI + CEL) refuses what it can at `kubectl apply`; what needs the
cluster is checked here at the start of a run (engine/spec_checks.py checks what needs
neither):

- `images.py`: the containers named by `images` exist in the target and each is named
  once; image references are well formed;
- `fields.py`: names that identify items (steps, parallel items, cleanup steps,
  metrics) differ; where the spec names Secrets and Jobs;
- `routes.py`: the router's objects (HTTPRoute; NGINX stable Ingress and the canary
  Ingress's name; Istio VirtualServices and DestinationRule) exist and are usable;
- `cluster.py`: `ClusterValidator` reads them, and the Secrets (and keys) named by
  webhooks (test, metric provider and cleanup webhooks; their `urlFrom` and headers),
  and has the API server validate every Job of every step and of the cleanup and the
  canary's pod template (server-side dry-run).

Each problem is a plain sentence that starts with the field it is about
(`spec.steps[2].test.job: ...`), so the user knows what to fix. An answer that says
nothing of the spec (a timeout, a 500) is raised instead: the run waits, untouched.
"""

from canary_operator.validation.cluster import ClusterValidator, SpecValidator, secret_problem
from canary_operator.validation.fields import (
    SecretUse,
    job_templates,
    name_problems,
    secret_uses,
    webhook_headers,
    webhooks,
)
from canary_operator.validation.images import (
    REFERENCE_MAX,
    image_problem,
    image_problems,
)
from canary_operator.validation.refusals import api_refusal, refused_for_good
from canary_operator.validation.routes import RouteChecks, ingress_problems, route_problem

__all__ = [
    "REFERENCE_MAX",
    "ClusterValidator",
    "RouteChecks",
    "SecretUse",
    "SpecValidator",
    "api_refusal",
    "image_problem",
    "image_problems",
    "ingress_problems",
    "job_templates",
    "name_problems",
    "refused_for_good",
    "route_problem",
    "secret_problem",
    "secret_uses",
    "webhook_headers",
    "webhooks",
]
