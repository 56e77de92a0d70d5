"""How the reconcile tells failures apart: what a retry may cure and what the API
server refused for good (kube/api.py `describe` words them for the user)."""

from __future__ import annotations

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.kube.api import Conflict, JsonObj
from canary_operator.validation import refused_for_good

# Failures a retry may cure: the run keeps its lock, says what fails and backs off.
TRANSIENT = (ApiException, Conflict, aiohttp.ClientError, TimeoutError, OSError)


class RetryLater(Exception):
    """An API call failed in a way a retry may cure; the status says so, the work
    queue retries with backoff."""

    described = True  # the status and an Event tell it: no traceback in the log


class StaleView(Exception):
    """The rollout as this reconcile read it is not the rollout as it is: another
    operator process acting on the same run has moved it on. Nothing is done on a view
    like that; the reconcile starts again from the fresh one."""

    def __init__(self, fresh: JsonObj | None) -> None:
        super().__init__("the rollout changed since it was read")
        self.fresh = fresh


def refused(exc: BaseException) -> bool:
    """The API server rejected the request itself (400, 422, or a 500 for an object
    it cannot type): sending it again cannot succeed."""
    return refused_for_good(exc) and not (isinstance(exc, ApiException) and exc.status == 403)
