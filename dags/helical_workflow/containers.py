"""The ``docker`` and ``kubernetes`` backends: operators that run the runner image.

Both build an operator for one runner command from the model's profile; the
DAG's task executes it in place (``operator.execute(context)``), so the graph
is the same whatever the backend. Rendering needs no engine or cluster, which
is how the tests check these specs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from . import profiles

IMAGE_ENV = "HELICAL_RUNNER_IMAGE"
DEFAULT_IMAGE = "helical-runner:0.1.0-cpu"
NAMESPACE_ENV = "HELICAL_RUNNER_NAMESPACE"
DEFAULT_NAMESPACE = "helical"
SERVICE_ACCOUNT_ENV = "HELICAL_RUNNER_SERVICE_ACCOUNT"
DEFAULT_SERVICE_ACCOUNT = "helical-runner"
# Node label carrying the GPU type (set on the GPU node groups by terraform/charts).
GPU_TYPE_LABEL_ENV = "HELICAL_GPU_TYPE_LABEL"
DEFAULT_GPU_TYPE_LABEL = "helical.ai/gpu-type"
# Scale-up of a GPU node (~5 min) plus pulling a multi-GB CUDA image: 20 minutes.
STARTUP_TIMEOUT_S = 1200
# The runner image's non-root user (runners/helical-runner/Dockerfile).
RUNNER_UID = 10001
# Where the runner writes helical's model cache and scratch files in a container.
CACHE_DIR = "/var/cache/helical"
XCOM_FILE = "/airflow/xcom/return.json"


def image() -> str:
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def _json_command(argv: list[str], *, to_file: str | None) -> tuple[list[str], list[str]]:
    """Entry point + args that leave the runner's JSON where the operator reads results.

    Kubernetes: the xcom sidecar reads ``/airflow/xcom/return.json``. Docker: the
    operator returns the last log line, so the JSON is squeezed onto one line.
    The runner's exit code is kept either way.
    """
    if to_file:
        script = f'exec helical-runner "$@" > {to_file}'
    else:
        script = (
            'out=$(helical-runner "$@"); rc=$?; printf "%s" "$out" | tr -d "\\n"; echo; exit $rc'
        )
    return ["/bin/sh", "-c", script, "helical-runner"], argv


# ------------------------------------------------------------------ docker


def docker_operator(
    *,
    task_id: str,
    argv: list[str],
    profile: dict[str, Any],
    env: dict[str, str],
    data_dir: Path | None,
    output_dir: Path | None,
    want_json: bool = False,
):
    """A ``DockerOperator`` running one runner command.

    Data folder mounted read-only and the output folder read-write at the same
    paths as on the host (so URIs mean the same inside); no network (the model
    store is a mounted folder), non-root, container removed afterwards, GPUs
    requested from the profile.
    """
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    mounts = []
    if data_dir:
        mounts.append(
            Mount(target=str(data_dir), source=str(data_dir), type="bind", read_only=True)
        )
    if output_dir:
        mounts.append(
            Mount(target=str(output_dir), source=str(output_dir), type="bind", read_only=False)
        )
    store = env.get("HELICAL_RUNNER_MODEL_STORE", "")
    if store and not store.startswith("s3://"):
        mounts.append(Mount(target=store, source=store, type="bind", read_only=True))
    gpu = (profile.get("resources") or {}).get("gpu") or {}
    devices = (
        [DeviceRequest(count=int(gpu["count"]), capabilities=[["gpu"]])] if gpu.get("count") else []
    )
    entrypoint, command = _json_command(argv, to_file=None) if want_json else (None, argv)
    s3 = bool(env.get("HELICAL_RUNNER_S3_ENDPOINT_URL")) or any(a.startswith("s3://") for a in argv)
    return DockerOperator(
        task_id=task_id,
        image=image(),
        entrypoint=entrypoint,
        command=command,
        environment={**env, "CACHE_DIR_HELICAL_PREFIX": CACHE_DIR, "HOME": CACHE_DIR},
        mounts=mounts,
        mount_tmp_dir=False,
        tmp_dir="/tmp",
        user=f"{RUNNER_UID}:{RUNNER_UID}",
        # No network unless data lives in S3: a local job has nothing to reach.
        network_mode="bridge" if s3 else "none",
        auto_remove="success",
        device_requests=devices,
        mem_limit=_docker_memory((profile.get("resources") or {}).get("memory")),
        do_xcom_push=want_json,
        xcom_all=False,
        docker_url=os.environ.get("DOCKER_HOST", "unix://var/run/docker.sock"),
    )


def _docker_memory(quantity: str | None) -> str | None:
    """Kubernetes quantities (``24Gi``) in Docker's spelling (``24g``)."""
    if not quantity:
        return None
    m = re.fullmatch(r"(\d+)([KMGT])i?", str(quantity))
    return f"{m.group(1)}{m.group(2).lower()}" if m else str(quantity)


def docker_exit_code(exc: BaseException) -> int | None:
    """The container's exit code from a ``DockerContainerFailedException``."""
    m = re.search(r"'StatusCode': (-?\d+)", str(exc))
    return int(m.group(1)) if m else None


# -------------------------------------------------------------- kubernetes


def kubernetes_operator(
    *,
    task_id: str,
    argv: list[str],
    profile: dict[str, Any],
    env: dict[str, str],
    timeout_s: int | None = None,
    want_json: bool = False,
):
    """A ``KubernetesPodOperator`` running one runner command as its own pod.

    Requests = limits from the profile (Guaranteed QoS; GPUs via
    ``nvidia.com/gpu``), a node selector and toleration for the profile's GPU
    type, the IRSA service account, a restricted security context, the pod
    deleted when done, and a startup timeout long enough for node scale-up.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    resources = profile.get("resources") or {}
    limits = {"cpu": str(resources.get("cpu", "1")), "memory": str(resources.get("memory", "4Gi"))}
    node_selector: dict[str, str] = {}
    tolerations = []
    gpu_type = profiles.gpu_type(profile)
    if gpu_type:
        limits["nvidia.com/gpu"] = str(resources["gpu"]["count"])
        label = os.environ.get(GPU_TYPE_LABEL_ENV) or DEFAULT_GPU_TYPE_LABEL
        node_selector[label] = gpu_type
        tolerations.append(
            k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        )
    if want_json:
        cmds, arguments = _json_command(argv, to_file=XCOM_FILE)
    else:
        cmds, arguments = ["helical-runner"], argv
    volumes = [
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
        k8s.V1Volume(name="cache", empty_dir=k8s.V1EmptyDirVolumeSource()),
    ]
    mounts = [
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        k8s.V1VolumeMount(name="cache", mount_path=CACHE_DIR),
    ]
    return KubernetesPodOperator(
        task_id=task_id,
        name="helical-runner",
        random_name_suffix=True,
        namespace=os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE,
        service_account_name=os.environ.get(SERVICE_ACCOUNT_ENV) or DEFAULT_SERVICE_ACCOUNT,
        image=image(),
        image_pull_policy="IfNotPresent",
        cmds=cmds,
        arguments=arguments,
        env_vars=[
            k8s.V1EnvVar(name=k, value=v)
            for k, v in {**env, "CACHE_DIR_HELICAL_PREFIX": CACHE_DIR, "HOME": CACHE_DIR}.items()
        ],
        container_resources=k8s.V1ResourceRequirements(requests=dict(limits), limits=limits),
        node_selector=node_selector or None,
        tolerations=tolerations or None,
        annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        labels={
            "app.kubernetes.io/name": "helical-runner",
            "app.kubernetes.io/part-of": "helical-workflow",
        },
        volumes=volumes,
        volume_mounts=mounts,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=RUNNER_UID,
            run_as_group=RUNNER_UID,
            fs_group=RUNNER_UID,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        automount_service_account_token=True,  # IRSA needs the projected token
        startup_timeout_seconds=STARTUP_TIMEOUT_S,
        active_deadline_seconds=timeout_s,
        on_finish_action="delete_pod",
        get_logs=True,
        log_events_on_failure=True,
        do_xcom_push=want_json,
        in_cluster=os.environ.get("HELICAL_K8S_IN_CLUSTER", "true").lower() == "true",
    )


def pod_exit_code(pod) -> int | None:
    """The runner container's exit code from a finished pod, if it terminated."""
    statuses = getattr(getattr(pod, "status", None), "container_statuses", None) or []
    for status in statuses:
        if status.name == "base" and status.state and status.state.terminated:
            return int(status.state.terminated.exit_code)
    return None
