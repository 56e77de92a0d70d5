"""Watch-fed local stores of what the operator reads, as client-go's informers and
listers are for Argo Rollouts: each resource is listed once, then kept current by a
watch from that list's resourceVersion (relisted when the server answers 410 Gone),
so a reconcile reads memory and costs only its writes.

What a store keeps is stripped on ingest (managedFields, the last-applied annotation,
pod specs): planning never reads them, and with a thousand rollouts they would be
most of the operator's memory.

`CachedKube` is a `Kube` whose GET and LIST of a cached resource are answered from its
store once that store has synced (before that, and for anything not cached, they go to
the API server). Its writes go to the API server and their answers into the store, so
a reconcile reads what it just wrote even before the watch brings it. Reads that
correctness needs fresh (the fencing check, the takeover check, cleanup verification,
the target read before a run starts) use the plain `Kube`, each with a comment why.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from canary_operator.kube.api import (
    JsonObj,
    Kube,
    ResourceKind,
    WrappedKube,
    is_dry_run,
    parse_path,
)

log = logging.getLogger(__name__)

# (event type, object): ADDED, MODIFIED, DELETED (a relist reports what it found
# changed or gone the same way).
Handler = Callable[[str, JsonObj], None]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
WATCH_TIMEOUT_SECONDS = 290  # the server ends a watch after this; we then resume it
MAX_BACKOFF_SECONDS = 30.0


DEPLOYMENTS = ResourceKind("apps", "v1", "deployments")
SERVICES = ResourceKind("", "v1", "services")
PODS = ResourceKind("", "v1", "pods")
JOBS = ResourceKind("batch", "v1", "jobs")
LEASES = ResourceKind("coordination.k8s.io", "v1", "leases")
HTTPROUTES = ResourceKind("gateway.networking.k8s.io", "v1", "httproutes")


def newer_or_same(candidate: JsonObj, current: JsonObj) -> bool:
    """Whether `candidate` is not older than `current`. resourceVersions are opaque,
    but every API server backed by etcd makes them increasing integers, and that is the
    only case compared: a watch event delayed behind our own write must not put the
    older object back (the next write would then meet a 409 and cost a retry)."""
    new = str(candidate["metadata"].get("resourceVersion") or "")
    old = str(current["metadata"].get("resourceVersion") or "")
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


def copy_json(value: Any) -> Any:
    """A deep copy of decoded JSON (dicts, lists and immutable scalars): what readers
    of a store get, so that no reader changes it. Twice as fast as copy.deepcopy,
    which keeps a memo for cycles and shared objects that JSON never has."""
    kind = type(value)
    if kind is dict:
        return {k: copy_json(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
    if kind is list:
        return [copy_json(v) if type(v) in _CONTAINERS else v for v in value]
    return value


_CONTAINERS = (dict, list)


def strip(obj: JsonObj, kind: ResourceKind) -> JsonObj:
    """What planning needs of an object (a shallow copy; the input is left alone)."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    stripped = {**obj, "metadata": meta}
    if kind == PODS:
        # Pods are read for their role, phase and container states, and for the node
        # of one that will not go (a cleanup blocked names it): of the spec, nodeName.
        node = (obj.get("spec") or {}).get("nodeName")
        stripped.pop("spec", None)
        if node:
            stripped["spec"] = {"nodeName": node}
    return stripped


def _parse_selector(selector: str | None) -> list[tuple[str, str | None]]:
    """The equality and existence terms of a label selector ("a=b,c")."""
    terms: list[tuple[str, str | None]] = []
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term or " in " in term or " notin " in term or term.startswith("!"):
            raise ValueError(f"selector term {term!r} is not supported by the cache")
        key, eq, value = term.partition("=")
        terms.append((key.strip(), value.strip().lstrip("=") if eq else None))
    return terms


def matches(labels: dict[str, str] | None, selector: str | None) -> bool:
    labels = labels or {}
    for key, value in _parse_selector(selector):
        if key not in labels or (value is not None and labels[key] != value):
            return False
    return True


class Informer:
    """One resource (in one namespace, or all), optionally narrowed by a label
    selector: a store kept current by list+watch, and handlers told of changes."""

    def __init__(
        self,
        kube: Kube,
        kind: ResourceKind,
        namespace: str | None = None,
        label_selector: str | None = None,
        handlers: Iterable[Handler] = (),
        complete: bool = False,
    ) -> None:
        self.kube = kube
        self.kind = kind
        # Whether every object of this kind that reads ask for by name carries the
        # selector's labels, so that absence from the store means absence.
        self.complete = complete
        self.namespace = namespace
        self.label_selector = label_selector
        self.handlers = list(handlers)
        self.synced = asyncio.Event()
        self._store: dict[tuple[str, str], JsonObj] = {}
        self._resource_version: str | None = None
        self._task: asyncio.Task[None] | None = None
        # Counts, for tests and metrics: lists done, watch events applied.
        self.lists = 0
        self.events = 0

    # ------------------------------------------------------------------ reads

    def covers(self, namespace: str | None, label_selector: str | None) -> bool:
        """Whether a read of `namespace` with `label_selector` sees only objects this
        informer holds (its own selector's terms must be implied by the read's)."""
        if self.namespace is not None and namespace != self.namespace:
            return False
        if not self.label_selector:
            return True
        try:
            wanted = dict(_parse_selector(label_selector))
        except ValueError:
            return False
        for key, value in _parse_selector(self.label_selector):
            if key not in wanted or (value is not None and wanted[key] != value):
                return False
        return True

    def get(self, namespace: str, name: str) -> JsonObj | None:
        obj = self._store.get((namespace, name))
        return copy_json(obj) if obj is not None else None

    def list(self, namespace: str | None, label_selector: str | None) -> builtins.list[JsonObj]:
        return [
            copy_json(obj)
            for (ns, _), obj in list(self._store.items())
            if (namespace is None or ns == namespace)
            and matches(obj["metadata"].get("labels"), label_selector)
        ]

    # ----------------------------------------------------------------- writes

    def put(self, obj: JsonObj) -> None:
        """An object this process just wrote (the server's answer)."""
        meta = obj.get("metadata") or {}
        if "name" not in meta or not matches(meta.get("labels"), self.label_selector):
            return
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return
        key = (meta.get("namespace") or "", meta["name"])
        if key not in self._store and self._watch_reached(obj):
            # The watch has delivered this version or a later one and the object is not
            # here: it was deleted since, or by this very version (an immediate DELETE
            # answers with the object at the deletion's own resourceVersion).
            return
        self._apply("MODIFIED", obj, notify=False)

    def _watch_reached(self, obj: JsonObj) -> bool:
        """Whether the list+watch has already delivered `obj`'s resourceVersion (only
        integer versions compare, as in newer_or_same; otherwise: not known to)."""
        version = str(obj["metadata"].get("resourceVersion") or "")
        watched = self._resource_version or ""
        return version.isdigit() and watched.isdigit() and int(watched) >= int(version)

    def _apply(self, event_type: str, obj: JsonObj, notify: bool = True) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        current = self._store.get(key)
        if event_type == "DELETED":
            if current is not None and not newer_or_same(obj, current):
                return  # a recreated object is already here
            self._store.pop(key, None)
        else:
            if current is not None and not newer_or_same(obj, current):
                return
            if current is not None and current["metadata"].get("uid") != meta.get("uid"):
                event_type = "ADDED"  # recreated under the same name
            self._store[key] = strip(obj, self.kind)
        if notify:
            self._notify(event_type, obj)

    def _notify(self, event_type: str, obj: JsonObj) -> None:
        for handler in self.handlers:
            try:
                handler(event_type, obj)
            except Exception:  # one broken handler must not stop the watch
                log.exception("handler of %s failed", self.kind.plural)

    # ------------------------------------------------------------ list+watch

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"informer {self.kind.plural}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._resource_version is None:
                    await self._relist()
                await self._watch()
                failures = 0
            except asyncio.CancelledError:
                raise
            except _Gone:
                self._resource_version = None  # too old to resume: list again
            except Exception as exc:
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures) * random.uniform(0.8, 1.2)
                log.warning(
                    "watch of %s failed (attempt %d), again in %.1fs: %s",
                    self.kind.plural,
                    failures,
                    delay,
                    exc,
                )
                if isinstance(exc, ApiException) and exc.status == 410:
                    self._resource_version = None
                await asyncio.sleep(delay)  # backoff between reconnects, not a sync

    async def _relist(self) -> None:
        query: dict[str, Any] = {}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        result = await self.kube.request("GET", self.kind.path(self.namespace), query=query)
        self.lists += 1
        items: list[JsonObj] = result.get("items") or []
        listed = {
            "metadata": {"resourceVersion": (result.get("metadata") or {}).get("resourceVersion")}
        }
        seen: set[tuple[str, str]] = set()
        for item in items:
            meta = item["metadata"]
            key = (meta.get("namespace") or "", meta["name"])
            seen.add(key)
            current = self._store.get(key)
            if current is None:
                self._apply("ADDED", item)
            elif current["metadata"].get("resourceVersion") != meta.get("resourceVersion"):
                # _apply keeps an entry newer than the list (our write that raced it).
                self._apply("MODIFIED", item)
        for key in [k for k in self._store if k not in seen]:
            if not newer_or_same(listed, self._store[key]):
                continue  # written by us after the list was taken: the watch will tell
            gone = self._store.pop(key)
            self._notify("DELETED", gone)
        self._resource_version = str(result.get("metadata", {}).get("resourceVersion") or "")
        self.synced.set()

    async def _watch(self) -> None:
        query: dict[str, Any] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
            "resourceVersion": self._resource_version or "",
        }
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        async for event in self.kube.watch(self.kind.path(self.namespace), query):
            event_type = event.get("type")
            obj = event.get("object") or {}
            if event_type == "ERROR":
                if int(obj.get("code") or 0) == 410:
                    raise _Gone()
                raise RuntimeError(f"watch error: {obj.get('message') or obj}")
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self._resource_version = str(version)
            if event_type == "BOOKMARK":
                continue
            if event_type in ("ADDED", "MODIFIED", "DELETED"):
                self.events += 1
                self._apply(event_type, obj)


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Cache:
    """The informers of one operator process: per resource, one per watched namespace
    (namespaced mode) or one for the cluster."""

    def __init__(self, kube: Kube, namespaces: Iterable[str] = ()) -> None:
        self.kube = kube
        self.namespaces = tuple(namespaces)
        self._informers: dict[ResourceKind, list[Informer]] = {}

    def add(
        self,
        kind: ResourceKind,
        label_selector: str | None = None,
        handlers: Iterable[Handler] = (),
        complete: bool = False,
    ) -> list[Informer]:
        scopes: tuple[str | None, ...] = self.namespaces or (None,)
        informers = [
            Informer(self.kube, kind, namespace, label_selector, handlers, complete)
            for namespace in scopes
        ]
        self._informers.setdefault(kind, []).extend(informers)
        return informers

    def informers(self) -> builtins.list[Informer]:
        return [i for group in self._informers.values() for i in group]

    def start(self) -> None:
        for informer in self.informers():
            informer.start()

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop() for i in self.informers()))

    def serving(
        self, kind: ResourceKind, namespace: str | None, label_selector: str | None = None
    ) -> Informer | None:
        """The synced informer that can answer this read, if any."""
        for informer in self._informers.get(kind, []):
            if informer.synced.is_set() and informer.covers(namespace, label_selector):
                return informer
        return None

    def serving_selective(self, kind: ResourceKind, namespace: str) -> Informer | None:
        """A synced informer of this kind narrowed by a label selector, if any."""
        for informer in self._informers.get(kind, []):
            if (
                informer.synced.is_set()
                and informer.label_selector
                and informer.namespace in (None, namespace)
            ):
                return informer
        return None

    def put(self, kind: ResourceKind, obj: JsonObj) -> None:
        for informer in self._informers.get(kind, []):
            informer.put(obj)


class CachedKube(WrappedKube):
    """A Kube that reads cached resources from their stores and writes through."""

    def __init__(self, kube: Kube, cache: Cache) -> None:
        super().__init__(kube)
        self.cache = cache
        self.hits = 0  # reads answered from a store (tests count them)

    async def get(self, resource_path: str) -> JsonObj | None:
        where = parse_path(resource_path)
        if where is not None and where[2] is not None and not where[3]:
            kind, namespace, name, _ = where
            if namespace is not None and name is not None:
                informer = self.cache.serving(kind, namespace)
                if informer is not None:
                    self.hits += 1
                    return informer.get(namespace, name)
                # A store narrowed by labels holds the object if it carries them; its
                # absence there proves nothing, so that case asks the API server.
                selective = self.cache.serving_selective(kind, namespace)
                found = selective.get(namespace, name) if selective is not None else None
                if found is not None or (selective is not None and selective.complete):
                    self.hits += 1
                    return found
        return await self.direct.get(resource_path)

    async def list(
        self, resource_path: str, label_selector: str | None = None
    ) -> builtins.list[JsonObj]:
        where = parse_path(resource_path)
        if where is not None and where[2] is None:
            kind, namespace, _, _ = where
            informer = self.cache.serving(kind, namespace, label_selector)
            if informer is not None:
                self.hits += 1
                return informer.list(namespace, label_selector)
        return await self.direct.list(resource_path, label_selector)

    def answered(self, method: str, resource_path: str, query: Any, result: Any) -> None:
        if not isinstance(result, dict) or "metadata" not in result or is_dry_run(query):
            return
        # A DELETE answered with the object means it is still there, being deleted
        # (finalizers, a Foreground deletion waiting for its dependents): keep that
        # version too, so the next reconcile does not ask to delete it again.
        deleting = method == "DELETE" and bool(result["metadata"].get("deletionTimestamp"))
        if method in ("POST", "PUT", "PATCH") or deleting:
            where = parse_path(resource_path)
            if where is not None and not where[3]:
                self.cache.put(where[0], result)  # seen before the watch brings it
