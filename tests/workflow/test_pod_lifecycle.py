"""RunnerPodOperator's life cycle through KubernetesPodOperator's real code.

No Kubernetes API server can run here, so the Kubernetes client is faked at
its API boundary (``CoreV1Api``: create/read/list/patch/delete pods, pod
logs, events) by a small in-memory cluster whose "kubelet" moves each pod
Pending -> Running -> terminated. Everything above that edge is the
provider's own code: pod creation, startup wait, log following, reattach,
cleanup, deletion, ``on_kill``.
"""

from __future__ import annotations

import copy
import threading
import time
from datetime import UTC, datetime

import pytest
from airflow.sdk.exceptions import AirflowFailException
from kubernetes.client import ApiClient, ApiException
from kubernetes.client import models as k8s

from helical_workflow import containers, jobs, profiles, runner

SHARD = {
    "dataset": "s3://datasets/pbmc/pbmc.h5ad",
    "dataset_name": "pbmc",
    "model": "geneformer",
    "shards": [
        {
            "start": 0,
            "stop": 500,
            "output": "s3://outputs/run1/pbmc/shards/geneformer/000000000-000000500.h5ad",
        }
    ],
    "sha256": "ab" * 32,
    "overrides": {},
    "timeout_minutes": 180,
    "run_root": "s3://outputs/run1",
}


class FakeLogResponse:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, amt=None, decode_content=True):
        if self.data:
            yield self.data

    def release_conn(self):
        pass

    def close(self):
        pass


class FakeCluster:
    """The slice of ``CoreV1Api`` the pod operator uses, over an in-memory cluster.

    :param exit_code: the runner container's exit code once it terminates.
    :param log: the lines the runner prints.
    :param run_reads: pod reads while Running before the container terminates
        (``None``: runs until deleted).
    :param stuck: ``("unschedulable", msg)`` or ``("waiting", reason, msg)``: never starts.
    """

    def __init__(self, *, exit_code=0, log=(), run_reads=3, stuck=None):
        self.exit_code = exit_code
        self.log = list(log)
        self.run_reads = run_reads
        self.stuck = stuck
        self.pods: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        # the real serializer (CoreV1Api.api_client): it makes no connection by itself
        self.api_client = ApiClient()

    # ------------------------------------------------------------ pods
    def create_namespaced_pod(self, namespace, body, **_):
        body = copy.deepcopy(body)
        name = body["metadata"]["name"]
        with self.lock:
            self.pods[name] = {"body": body, "reads": 0}
            self.calls.append(("create", name))
        return self._pod(name)

    def read_namespaced_pod(self, name, namespace, **_):
        with self.lock:
            if name not in self.pods:
                raise ApiException(status=404, reason="Not Found")
            self.pods[name]["reads"] += 1
            self.calls.append(("read", name))
        return self._pod(name)

    def list_namespaced_pod(self, namespace, label_selector="", **_):
        items = [self._pod(n) for n, p in list(self.pods.items()) if _selects(label_selector, p)]
        return k8s.V1PodList(items=items)

    def patch_namespaced_pod(self, name, namespace, body, **_):
        labels = self.pods[name]["body"]["metadata"].setdefault("labels", {})
        labels.update(body["metadata"]["labels"])
        return self._pod(name)

    def delete_namespaced_pod(self, name, namespace, *args, **_):
        with self.lock:
            self.calls.append(("delete", name))
            if self.pods.pop(name, None) is None:
                raise ApiException(status=404, reason="Not Found")

    def read_namespaced_pod_log(self, name, namespace, container, timestamps=False, **_):
        with self.lock:
            if name not in self.pods:
                raise ApiException(status=404, reason="Not Found")
            self.calls.append(("log", name))
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ") if timestamps else ""
        return FakeLogResponse("".join(f"{stamp}{line}\n" for line in self.log).encode())

    def list_namespaced_event(self, namespace, field_selector="", **_):
        items = []
        if self.stuck and self.stuck[0] == "unschedulable":
            items.append(
                k8s.CoreV1Event(
                    metadata=k8s.V1ObjectMeta(name="e1", resource_version="1"),
                    involved_object=k8s.V1ObjectReference(name=field_selector.split("=")[-1]),
                    type="Warning",
                    reason="FailedScheduling",
                    message=self.stuck[1],
                )
            )
        return k8s.CoreV1EventList(items=items, metadata=k8s.V1ListMeta(resource_version="1"))

    # ------------------------------------------------------------ kubelet
    def _pod(self, name) -> k8s.V1Pod:
        entry = self.pods[name]
        body = entry["body"]
        meta = body["metadata"]
        container = body["spec"]["containers"][0]
        pod = k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=meta["namespace"],
                labels=dict(meta.get("labels") or {}),
                annotations=dict(meta.get("annotations") or {}),
            ),
            spec=k8s.V1PodSpec(
                containers=[
                    k8s.V1Container(name=c["name"], image=c.get("image"))
                    for c in body["spec"]["containers"]
                ]
            ),
            status=k8s.V1PodStatus(phase="Pending"),
        )
        now = datetime.now(UTC)
        scheduled = k8s.V1PodCondition(type="PodScheduled", status="True")
        if self.stuck and self.stuck[0] == "unschedulable":
            pod.status.conditions = [
                k8s.V1PodCondition(
                    type="PodScheduled",
                    status="False",
                    reason="Unschedulable",
                    message=self.stuck[1],
                )
            ]
            return pod
        pod.status.conditions = [scheduled]
        state = k8s.V1ContainerState()
        if self.stuck:
            state.waiting = k8s.V1ContainerStateWaiting(reason=self.stuck[1], message=self.stuck[2])
        elif self.run_reads is None or entry["reads"] <= self.run_reads:
            pod.status.phase = "Running"
            state.running = k8s.V1ContainerStateRunning(started_at=now)
        else:
            message = None
            if self.exit_code and container.get("terminationMessagePolicy") == (
                "FallbackToLogsOnError"
            ):
                message = "\n".join(self.log[-80:])  # what the kubelet does
            pod.status.phase = "Succeeded" if self.exit_code == 0 else "Failed"
            state.terminated = k8s.V1ContainerStateTerminated(
                exit_code=self.exit_code, finished_at=now, message=message
            )
        pod.status.container_statuses = [
            k8s.V1ContainerStatus(
                name=container["name"],
                image=container["image"],
                image_id="",
                ready=state.running is not None,
                restart_count=0,
                state=state,
            )
        ]
        return pod


def _selects(selector: str, pod: dict) -> bool:
    labels = pod["body"]["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "!=" in term:
            key, value = term.split("!=")
            if labels.get(key) == value:
                return False
        else:
            key, value = term.split("=")
            if labels.get(key) != value:
                return False
    return True


class FakeTI:
    def __init__(self, try_number=1):
        self.dag_id = "helical_embedding"
        self.task_id = "embed_gpu_nvidia_a10g"
        self.run_id = "manual__r1"
        self.map_index = 0
        self.try_number = try_number
        self.xcoms: dict = {}

    def xcom_push(self, key, value):
        self.xcoms[key] = value


class FakeDag:
    dag_id = "helical_embedding"


def _context(try_number=1) -> dict:
    ti = FakeTI(try_number)
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id, "dag": FakeDag()}


def _operator(cluster: FakeCluster, **kwargs) -> containers.RunnerPodOperator:
    (job,) = jobs.embed_jobs(
        [SHARD], dag_id="helical_embedding", task_id="embed_gpu_nvidia_a10g", run_id="manual__r1"
    )
    op = containers.RunnerPodOperator(
        task_id="embed_gpu_nvidia_a10g",
        startup_check_interval_seconds=0.05,
        base_container_status_polling_interval=0.05,
        **{**job, **kwargs},
    )
    # the edge: the API client and the hook that would build it from kube config;
    # everything above it is the provider's code
    op.__dict__["hook"] = FakeHook(cluster)
    op.__dict__["client"] = cluster
    return op


class FakeHook:
    """KubernetesHook as far as the operator asks it (no kube config exists here)."""

    is_in_cluster = False

    def __init__(self, cluster: FakeCluster):
        self.core_v1_client = cluster

    def get_pod(self, name, namespace):
        return self.core_v1_client.read_namespaced_pod(name, namespace)


RUNNER_LOG = [
    "helical-runner: embedding pbmc cells 0:500 with geneformer",
    "helical-runner: wrote 500 cells",
]


def test_a_pod_runs_its_log_is_read_in_full_then_it_is_deleted(capsys):
    cluster = FakeCluster(exit_code=0, log=RUNNER_LOG)
    assert _operator(cluster).execute(_context()) is None
    (created,) = [n for c, n in cluster.calls if c == "create"]
    kinds = [c for c, n in cluster.calls if n == created]
    assert "log" in kinds and kinds[-1] == "delete"
    assert max(i for i, k in enumerate(kinds) if k == "log") < kinds.index("delete")
    out = capsys.readouterr().out
    assert "wrote 500 cells" in out  # the last line reached the task log
    assert cluster.pods == {}


def test_the_pod_carries_profile_resources_gpu_placement_and_eviction_safety():
    cluster = FakeCluster(exit_code=0, log=RUNNER_LOG)
    op = _operator(cluster)
    op.execute(_context())
    (name,) = [n for c, n in cluster.calls if c == "create"]
    pod = op.pod_request_obj  # the request the API server received
    assert pod.metadata.name == name
    assert pod.metadata.annotations["karpenter.sh/do-not-disrupt"] == "true"
    assert pod.metadata.annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    limits = pod.spec.containers[0].resources.limits
    profile = profiles.load_profile("geneformer")["resources"]
    assert limits == {
        "cpu": str(profile["cpu"]),
        "memory": profile["memory"],
        "nvidia.com/gpu": str(profile["gpu"]["count"]),
    }
    assert pod.spec.containers[0].resources.requests == limits
    assert pod.spec.node_selector == {"helical.ai/gpu-type": profile["gpu"]["type"]}
    # the labels a restarted worker searches by
    assert {"dag_id", "task_id", "run_id", "map_index"} <= set(pod.metadata.labels)


def test_exit_2_fails_without_retry_and_names_the_runner_error():
    log = [*RUNNER_LOG[:1], "helical-runner: error: input has no counts (pbmc.h5ad)"]
    cluster = FakeCluster(exit_code=2, log=log)
    with pytest.raises(AirflowFailException, match="not retried: helical-runner: error: input"):
        _operator(cluster).execute(_context())
    assert cluster.pods == {}  # deleted all the same


def test_exit_75_is_retried():
    log = ["helical-runner: transient error: S3 read timed out"]
    cluster = FakeCluster(exit_code=75, log=log)
    with pytest.raises(runner.RunnerTransientError, match=r"exit 75.*S3 read timed out"):
        _operator(cluster).execute(_context())
    assert cluster.pods == {}


def test_a_pod_pending_past_the_startup_timeout_fails_with_its_reason_and_is_deleted():
    reason = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    cluster = FakeCluster(stuck=("unschedulable", reason))
    op = _operator(cluster, startup_timeout_seconds=1)
    start = time.monotonic()
    with pytest.raises(runner.RunnerTransientError, match="Unschedulable: 0/3 nodes are available"):
        op.execute(_context())
    assert time.monotonic() - start < 30
    assert cluster.pods == {} and ("delete", op.pod.metadata.name) in cluster.calls


def test_an_image_that_cannot_be_pulled_fails_at_once_and_the_pod_is_deleted():
    cluster = FakeCluster(stuck=("waiting", "ImagePullBackOff", 'Back-off pulling image "x"'))
    op = _operator(cluster, startup_timeout_seconds=30)
    with pytest.raises(AirflowFailException, match="ImagePullBackOff"):
        op.execute(_context())
    assert cluster.pods == {}


def test_a_restarted_worker_reattaches_to_the_running_pod_instead_of_creating_another():
    cluster = FakeCluster(exit_code=0, log=RUNNER_LOG, run_reads=6)
    # try 1: the worker creates the pod, then dies (no cleanup runs on a killed worker)
    first = _operator(cluster)
    ctx1 = _context(try_number=1)
    first.pod_request_obj = first.build_pod_request_obj(ctx1)
    first.get_or_create_pod(first.pod_request_obj, ctx1)
    (created,) = [n for c, n in cluster.calls if c == "create"]
    # try 2 on a fresh worker: the same task instance's labels find the pod
    second = _operator(cluster)
    second.execute(_context(try_number=2))
    assert [n for c, n in cluster.calls if c == "create"] == [created], "a second pod was created"
    assert second.pod.metadata.name == created
    assert cluster.pods == {}


def test_on_kill_deletes_the_running_pod():
    cluster = FakeCluster(exit_code=0, log=RUNNER_LOG, run_reads=None)  # runs until deleted
    op = _operator(cluster)
    errors = []

    def run():
        try:
            op.execute(_context())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not any(c == "log" for c, _ in cluster.calls) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert op.pod is not None, "the pod never started"
    op.on_kill()  # task marked failed / timed out
    assert ("delete", op.pod.metadata.name) in cluster.calls
    assert cluster.pods == {}
    thread.join(30)
    assert not thread.is_alive(), "the task kept waiting on a deleted pod"
