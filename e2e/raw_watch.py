"""A watch that survives a broken connection: `e2e/watch.py`'s Watch, read from the
API server directly (list, then watch from the list's resourceVersion) and resumed
from the last resourceVersion it saw whenever the stream ends (a timeout, an API
server or etcd that stalled: other suites on the shared cluster SIGSTOP etcd). A
`kubectl get -w` that loses its stream just ends, and a test reading it would take
silence for absence. If the server can no longer resume (410 Gone), the watch says
so (`gaps`): the evidence is incomplete and the tests that read it fail.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from typing import Any

from e2e.api_proxy import Credentials
from e2e.watch import Seen, Watch
from tests.harness.cluster import Cluster

PATHS = {
    "leases": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "services": "/api/v1/namespaces/{ns}/services",
    "jobs": "/apis/batch/v1/namespaces/{ns}/jobs",
    "canaryrollouts": "/apis/canary-operator.dev/v1alpha1/namespaces/{ns}/canaryrollouts",
}


class RawWatch(Watch):
    def __init__(self, cluster: Cluster, namespace: str, resource: str) -> None:
        super().__init__(cluster, namespace, resource)
        self.credentials = Credentials(cluster)
        self.path = PATHS[resource].format(ns=namespace)
        self.gaps: list[str] = []
        self.resumes = 0
        self.last_error = ""
        self.listed = threading.Event()
        self._stop = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None

    def __enter__(self) -> RawWatch:
        self._thread = threading.Thread(
            target=self._run, name=f"watch-{self.resource}", daemon=True
        )
        self._thread.start()
        if not self.listed.wait(30):
            raise RuntimeError(f"could not list {self.resource}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked on it
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.credentials.close()

    def _connect(self) -> http.client.HTTPSConnection:
        url = urllib.parse.urlsplit(self.credentials.server)
        conn = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port or 443, context=self.credentials.ssl, timeout=90
        )
        self._conn = conn
        return conn

    def _get(self, query: dict[str, str]) -> http.client.HTTPResponse:
        conn = self._connect()
        headers = {"Accept": "application/json", **self.credentials.headers}
        conn.request("GET", f"{self.path}?{urllib.parse.urlencode(query)}", headers=headers)
        return conn.getresponse()

    def _add(self, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(Seen(len(self.events), time.monotonic(), kind, obj))

    def _run(self) -> None:
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._list()
                rv = self._watch(rv)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._stop.is_set():
                    return
                self.resumes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(0.5)

    def _list(self) -> str:
        response = self._get({})
        body = json.loads(response.read())
        if response.status != 200:
            raise ValueError(f"list {self.resource}: HTTP {response.status}")
        kind = str(body.get("kind", "")).removesuffix("List")
        for item in body.get("items") or []:
            item.setdefault("kind", kind)
            self._add("ADDED", item)
        self.listed.set()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str:
        query = {
            "watch": "true",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "60",
        }
        response = self._get(query)
        if response.status == 410:
            self.gaps.append(f"resourceVersion {rv} expired (410): events may be missing")
            return ""
        if response.status != 200:
            raise ValueError(f"watch {self.resource}: HTTP {response.status}")
        while not self._stop.is_set():
            line = response.readline()
            if not line:
                return rv  # the server ended the stream: resume from here
            event = json.loads(line)
            obj = event["object"]
            if event["type"] == "ERROR":
                if obj.get("code") == 410:
                    self.gaps.append(f"watch from {rv} expired (410): events may be missing")
                    return ""
                raise ValueError(f"watch {self.resource}: {obj}")
            rv = str(obj["metadata"]["resourceVersion"])
            if event["type"] != "BOOKMARK":
                self._add(event["type"], obj)
        return rv
