"""An in-memory API server behind a real `Kube`: `FakeKube.request` answers from a store,
so every Kube method (get, list, create, replace, merge_patch, apply, delete, the
/status PUT) and every wrapper of one (ReadOnce, FencedWrites) runs unchanged.

What it models, and how far:
- resourceVersion: one counter for the whole store, stamped on every write; a write
  naming a resourceVersion (PUT, a merge patch's or an apply's metadata, a DELETE's
  preconditions) that is not the stored one is a 409, raised as `Conflict` exactly like
  `Kube.request` does; so is a DELETE's or PUT's uid that is not the stored one (a
  patch naming another uid is a 422, as the API server answers); a missing object is
  `ApiException(status=404)`;
- PUT/PATCH of an object leave its `status` alone; PUT of `<object>/status` changes
  only the status (both bump the resourceVersion); `generation` goes up with the spec;
- merge patch is RFC 7386 (null deletes); server-side apply is create-or-merge (no
  field ownership, no conflicts between managers);
- DELETE of an object with finalizers sets its deletionTimestamp (it goes once a
  write empties them); otherwise it is removed at once, whatever the
  propagationPolicy (a Foreground delete, which really waits for the dependents
  through a `foregroundDeletion` finalizer, is modelled as immediate removal); the
  policies asked for are kept in `deletions`;
- list with labelSelector terms `a=b`, `a!=b` and bare `a` (has the label), comma-separated;
- `dryRun` writes answer as if written and store nothing;
- no watch, no field selectors, no logs subresource, no admission.

Each request is logged in `requests` as e.g. "GET deployments/web", "GET pods" (a
list), "PATCH canaryrollouts/r", "PUT canaryrollouts/r/status", "POST jobs?dryRun";
`bodies` has each write's logged name and the body sent (a DELETE's preconditions);
`fail_next` makes the next matching request fail after being logged. Views made with
`view()` share the store and keep their own log (e.g. the cached and the fresh Kube);
`store.requests` has every view's, in the order sent, and `store.sent` the same with
the view that sent each.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.kube.api import Conflict, JsonObj, Kube, parse_path
from canary_operator.kube.cache import copy_json

Key = tuple[str, str, str, str]  # (group, plural, namespace, name)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of `target` by `patch` (neither is changed)."""
    if not isinstance(patch, dict):
        return copy_json(patch)
    result = copy_json(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def matches(labels: Mapping[str, str], selector: str | None) -> bool:
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


def _copy(obj: JsonObj) -> JsonObj:
    copied: JsonObj = copy_json(obj)
    return copied


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Store:
    objects: dict[Key, JsonObj] = field(default_factory=dict)
    versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    uids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    version: int = 0
    requests: list[str] = field(default_factory=list)  # every view's, in order
    sent: list[tuple[Any, str]] = field(default_factory=list)  # (the view, its request)

    def stamp(self, obj: JsonObj) -> JsonObj:
        self.version = next(self.versions)
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj


def _error(status: int, reason: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = b""
    return exc


class FakeKube(Kube):
    def __init__(self, api_client: ApiClient, store: Store | None = None) -> None:
        super().__init__(api_client)
        self.store = store or Store()
        self.requests: list[str] = []
        self.deletions: list[tuple[str, str]] = []  # (what, propagationPolicy)
        self.bodies: list[tuple[str, Any]] = []  # (logged request, body sent): writes
        self._failures: list[tuple[str, str, Exception]] = []

    def view(self) -> FakeKube:
        """Another client of the same cluster, with its own request log."""
        return FakeKube(self.api_client, self.store)

    # ---------------------------------------------------------------- for tests

    def put(self, resource_path: str, obj: JsonObj) -> JsonObj:
        """Store `obj` (status and all) under `resource_path`'s collection, as if the
        cluster had it; returns the stored copy. Not logged."""
        where = parse_path(resource_path)
        assert where is not None, resource_path
        kind, namespace, _, _ = where
        stored = copy_json(obj)
        meta = stored.setdefault("metadata", {})
        if namespace:
            meta.setdefault("namespace", namespace)
        meta.setdefault("uid", f"uid-{next(self.store.uids)}")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", now())
        key = (kind.group, kind.plural, namespace or "", meta["name"])
        self.store.objects[key] = self.store.stamp(stored)
        return _copy(stored)

    def stored(self, resource_path: str) -> JsonObj | None:
        """The object as stored (a copy), without a request."""
        key, _ = self._key(resource_path)
        found = self.store.objects.get(key)
        return copy_json(found) if found is not None else None

    def fail_next(self, method: str, where: str, exc: Exception) -> None:
        """The next `method` request whose logged target starts with `where` (e.g.
        "httproutes", "deployments/web") raises `exc` (an ApiException of 409 as
        Conflict) instead of being served."""
        self._failures.append((method, where, exc))

    def clear(self) -> None:
        self.requests.clear()
        self.store.requests.clear()
        self.store.sent.clear()
        self.deletions.clear()
        self.bodies.clear()

    # ---------------------------------------------------------------- the server

    def _key(self, resource_path: str) -> tuple[Key, str]:
        where = parse_path(resource_path)
        assert where is not None, resource_path
        kind, namespace, name, sub = where
        return (kind.group, kind.plural, namespace or "", name or ""), sub

    async def request(
        self,
        method: str,
        resource_path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        key, sub = self._key(resource_path)
        dry = bool(query and dict(query).get("dryRun"))
        target = "/".join(p for p in (key[1], key[3], sub) if p)
        entry = f"{method} {target}" + ("?dryRun" if dry else "")
        self.requests.append(entry)
        self.store.requests.append(entry)
        self.store.sent.append((self, entry))
        if method != "GET":
            self.bodies.append((entry, copy_json(body)))
        for failure in self._failures:
            if failure[0] == method and target.startswith(failure[1]):
                self._failures.remove(failure)
                exc = failure[2]
                self._count(method, resource_path, query, getattr(exc, "status", 0) or 500)
                if isinstance(exc, ApiException) and exc.status == 409:
                    raise Conflict(f"{method} {resource_path}: {exc.reason}") from exc
                raise exc
        try:
            selector = dict(query or {}).get("labelSelector")
            answer = self._serve(method, key, sub, copy_json(body), content_type, dry, selector)
        except ApiException as exc:
            self._count(method, resource_path, query, exc.status)
            if exc.status == 409:
                raise Conflict(f"{method} {resource_path}: {exc.reason}") from exc
            raise
        self._count(method, resource_path, query, 200)
        return answer

    def _serve(
        self,
        method: str,
        key: Key,
        sub: str,
        body: Any,
        content_type: str,
        dry: bool,
        selector: str | None,
    ) -> Any:
        objects = self.store.objects
        if method == "GET" and not key[3]:
            items = [
                copy_json(o)
                for (group, plural, ns, _), o in sorted(objects.items())
                if (group, plural) == key[:2]
                and (not key[2] or ns == key[2])
                and matches(o["metadata"].get("labels") or {}, selector)
            ]
            return {"items": items, "metadata": {"resourceVersion": str(self.store.version)}}
        if method == "POST":
            key = (*key[:3], body["metadata"]["name"])
        current = objects.get(key)
        if method == "GET":
            if current is None:
                raise _error(404, "Not Found")
            return copy_json(current)
        if method == "POST" or (method == "PATCH" and "apply" in content_type and not current):
            if current is not None:
                raise _error(409, "AlreadyExists")
            body.setdefault("metadata", {}).update(name=key[3])
            return self._store(key, self._created(key, body), dry)
        if current is None:
            raise _error(404, "Not Found")
        wanted = (body.get("preconditions") if method == "DELETE" else body.get("metadata")) or {}
        if wanted.get("uid") not in (None, current["metadata"].get("uid")):
            # As the API server answers (checked on a real one): a DELETE's or PUT's uid
            # precondition is a 409; a patch may not change the uid, a 422.
            if method == "PATCH":
                raise _error(422, "metadata.uid: Invalid value: field is immutable")
            raise _error(409, "the UID in the precondition does not match the UID in record")
        if wanted.get("resourceVersion") not in (None, current["metadata"]["resourceVersion"]):
            raise _error(409, "the object has been modified")
        if method == "DELETE":
            self.deletions.append(("/".join(key[1::2]), body.get("propagationPolicy", "")))
            if current["metadata"].get("finalizers"):
                meta = current["metadata"]
                if not dry and not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now()
                    self.store.stamp(current)
                return copy_json(current)
            if not dry:
                del objects[key]
            return {"kind": "Status", "status": "Success"}
        if sub == "status":
            new = {**current, "status": body.get("status")}
        else:
            new = body if method == "PUT" else merge(current, body)
            new = {**new, "status": current.get("status")}
            if new.get("spec") != current.get("spec"):
                new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new = {k: v for k, v in new.items() if v is not None}
        for kept in ("uid", "creationTimestamp", "deletionTimestamp", "namespace"):
            if kept in current["metadata"]:
                new["metadata"][kept] = current["metadata"][kept]
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            if not dry:
                del objects[key]
            return copy_json(new)
        return self._store(key, new, dry)

    def _created(self, key: Key, body: JsonObj) -> JsonObj:
        meta = body["metadata"]
        if key[2]:
            meta["namespace"] = key[2]
        meta.update(uid=f"uid-{next(self.store.uids)}", generation=1, creationTimestamp=now())
        return body

    def _store(self, key: Key, obj: JsonObj, dry: bool) -> JsonObj:
        if dry:
            return _copy(obj)
        self.store.objects[key] = self.store.stamp(obj)
        return _copy(obj)
