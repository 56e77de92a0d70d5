"""The seed examples (examples/*.yaml) adapted to the real node, what the tests
read from it while a rollout runs (test Job logs, Service endpoints), and the
traffic checks every terminal state ends with (100 % of requests on stable)."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.harness.cluster import Cluster, wait_for
from tests.harness.realnode import (
    DEMO_IMAGE,
    POD_PLACEMENT,
    RUNNER_IMAGE,
    Measurement,
    RealNode,
    measure,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PURPOSE_LABEL = "canary-operator.dev/purpose"
ROLE_LABEL = "canary-operator.dev/role"


def _real_pod_spec(pod: dict[str, Any]) -> None:
    """Place a pod on the real node; local images only; quick to stop."""
    pod.update(copy.deepcopy(POD_PLACEMENT))
    pod["terminationGracePeriodSeconds"] = 1
    pod["enableServiceLinks"] = False
    for c in pod.get("containers", []):
        c["imagePullPolicy"] = "Never"


def _job_templates(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for step in steps:
        for item in [step, *step.get("parallel", [])]:
            job = (item.get("test") or {}).get("job") or item.get("job")
            if job:
                found.append(job)
    return found


def real_example(
    example: str,
    stable_tag: str,
    canary_tag: str,
    replicas: int | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """examples/<example> with the demo app's images, its pods and Jobs on the real node.

    The test Jobs keep their commands except `wget -q` -> `wget -S`: the container log
    then shows the HTTP exchange (status line and headers) with the canary.
    """
    docs = [d for d in yaml.safe_load_all((EXAMPLES / example).read_text()) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            if replicas is not None:
                doc["spec"]["replicas"] = replicas
            pod = doc["spec"]["template"]["spec"]
            _real_pod_spec(pod)
            app = pod["containers"][0]
            app["image"] = f"{DEMO_IMAGE}:{stable_tag}"
            app["readinessProbe"] = {
                "httpGet": {"path": "/ready", "port": "http"},
                "periodSeconds": 1,
                "failureThreshold": 2,
            }
            app["resources"] = {"limits": {"memory": "64Mi"}}
        elif doc["kind"] == "CanaryRollout":
            spec = doc["spec"]
            spec["images"][0]["image"] = f"{DEMO_IMAGE}:{canary_tag}"
            if steps is not None:
                spec["steps"] = steps
            for job in [*_job_templates(spec["steps"]), *_job_templates(spec.get("cleanup", []))]:
                job_spec = job["spec"]
                job_spec["activeDeadlineSeconds"] = 120
                pod = job_spec["template"]["spec"]
                _real_pod_spec(pod)
                for c in pod["containers"]:
                    c["image"] = RUNNER_IMAGE
                    c["command"] = [a.replace("wget -qO-", "wget -S -O-") for a in c["command"]]
                # The kwok stand-in for a failing test; the real node fails for real.
                (job_spec["template"].get("metadata") or {}).pop("annotations", None)
    return docs


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


class JobLogs:
    """Collects the container log of every finished test Job pod in a namespace while
    a rollout runs (cleanup deletes the Jobs, and their logs with them)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.logs: dict[str, str] = {}  # pod name -> log
        self.phases: dict[str, str] = {}
        self.jobs: dict[str, str] = {}  # pod name -> job name
        self.errors: list[str] = []
        self._test_jobs: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobLogs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:  # a transient API error: try again next round
                self.errors.append(repr(exc))
            self._stop.wait(0.3)

    def _poll(self) -> None:
        # The purpose label is on the Jobs the operator creates, not on their pods.
        jobs = self.cluster.get_json(
            "jobs", "-n", self.namespace, "-l", f"{PURPOSE_LABEL}=test", timeout=20
        )["items"]
        self._test_jobs.update(j["metadata"]["name"] for j in jobs)
        pods = self.cluster.get_json(
            "pods", "-n", self.namespace, "-l", "batch.kubernetes.io/job-name", timeout=20
        )["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            job = pod["metadata"]["labels"]["batch.kubernetes.io/job-name"]
            phase = pod.get("status", {}).get("phase", "")
            if job not in self._test_jobs or name in self.logs:
                continue
            if phase not in ("Succeeded", "Failed"):
                continue
            out = self.cluster.kubectl(
                "logs", "-n", self.namespace, name, "--all-containers", check=False, timeout=20
            )
            if out.returncode == 0:
                self.logs[name] = out.stdout
                self.phases[name] = phase
                self.jobs[name] = job


def service_cluster_ip(cluster: Cluster, namespace: str, name: str) -> tuple[str, int]:
    svc = cluster.get_json("service", name, "-n", namespace)
    return svc["spec"]["clusterIP"], int(svc["spec"]["ports"][0]["port"])


def ready_endpoints(cluster: Cluster, namespace: str, service: str) -> set[str]:
    """Names of the pods behind a Service that are ready, from its EndpointSlices."""
    slices = cluster.get_json(
        "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
    )["items"]
    return {
        (ep.get("targetRef") or {}).get("name", "?")
        for s in slices
        for ep in s.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready")
    }


def pods_by_role(cluster: Cluster, namespace: str, app: str = "web") -> dict[str, set[str]]:
    """Live pods of the app by role: "canary" (the operator's) or "stable"."""
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]
    roles: dict[str, set[str]] = {"canary": set(), "stable": set()}
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        role = pod["metadata"].get("labels", {}).get(ROLE_LABEL)
        roles["canary" if role else "stable"].add(pod["metadata"]["name"])
    return roles


def wait_serving(cluster: Cluster, namespace: str, replicas: int, service: str = "web") -> None:
    wait_for(
        lambda: len(ready_endpoints(cluster, namespace, service)) == replicas,
        180,
        interval=0.5,
        message=f"{replicas} ready endpoints behind the {service} Service",
    )


def wait_routed(
    real_node: RealNode, cluster: Cluster, namespace: str, pods: int, service: str = "web"
) -> None:
    """Until each of `pods` pods has answered through the Service's ClusterIP: ready
    endpoints are in the EndpointSlice a moment before kube-proxy's rules send them
    traffic, and a measurement started in between undercounts the newest pods."""
    real_node.assert_guarded()
    ip, port = service_cluster_ip(cluster, namespace, service)
    answered: set[str] = set()

    def all_answered() -> bool:
        answered.update(p for p in measure(ip, port, 50).by_pod if p)
        return len(answered) >= pods

    wait_for(all_answered, 60, interval=0.2, message=f"{pods} pods answering via {service}")


def measure_service(
    real_node: RealNode, cluster: Cluster, namespace: str, label: str, requests: int
) -> Measurement:
    """``requests`` GETs through the web Service's ClusterIP (guards checked first)."""
    real_node.assert_guarded()
    ip, port = service_cluster_ip(cluster, namespace, "web")
    m = measure(ip, port, requests)
    print(f"[{label}] {m.describe()}")
    return m


def assert_all_stable(
    real_node: RealNode,
    cluster: Cluster,
    namespace: str,
    version: str,
    label: str,
    requests: int,
) -> Measurement:
    """100 % of requests answered by stable pods (none by a canary pod), all 200."""
    roles = pods_by_role(cluster, namespace)
    assert not roles["canary"], f"canary pods still exist after cleanup: {roles['canary']}"
    # Endpoints of deleted canary pods leave kube-proxy within a second or two.
    wait_for(
        lambda: ready_endpoints(cluster, namespace, "web") <= roles["stable"],
        60,
        interval=0.3,
        message="the Service's endpoints to be stable pods only",
    )
    m = measure_service(real_node, cluster, namespace, label, requests)
    assert m.errors == {}, f"requests failed: {m.errors}"
    assert m.by_version == {version: requests}, m.describe()
    strangers = set(m.by_pod) - roles["stable"]
    assert not strangers, f"answered by pods that are not stable pods: {strangers}"
    return m
