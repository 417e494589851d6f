"""The ``docker`` and ``kubernetes`` backends: operators that run the runner image.

``RunnerDockerOperator`` (a ``DockerOperator``) and ``RunnerPodOperator`` (a
``KubernetesPodOperator``) are the DAG's tasks themselves, mapped with
``.partial().expand_kwargs()`` over the jobs of :mod:`helical_workflow.jobs`:
Airflow runs them, so ``on_kill`` reaches the container or pod, a pod is
reattached after a worker restart, and the UI shows the container or pod.
Each turns one runner job into its platform's spec in ``__init__`` (rendering
needs no engine or cluster, which is how the tests check the specs) and maps
the runner's exit code to retry or not (:class:`helical_workflow.steps.RunnerStep`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException
from docker.types import DeviceRequest, Mount
from kubernetes.client import models as k8s

from . import profiles, runner
from .steps import RunnerStep

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
# The image's WORKDIR (runners/helical-runner/Dockerfile), writable scratch on a read-only root.
WORK_DIR = "/work"
# Docker network of the runner containers (compose: the internal `helical-runner`
# network that reaches the Pushgateway and nothing else).
DOCKER_NETWORK_ENV = "HELICAL_DOCKER_NETWORK"
DOCKER_GPUS_ENV = "HELICAL_DOCKER_GPUS"
# Seconds a killed task's container gets to stop before it is removed by force.
KILL_GRACE_S = 2
# Label on every runner container and pod (how the tests and operators find them).
RUNNER_LABELS = {
    "app.kubernetes.io/name": "helical-runner",
    "app.kubernetes.io/part-of": "helical-workflow",
}
# Pods that scale-down must not evict mid-run: cluster-autoscaler and Karpenter.
EVICTION_SAFE_ANNOTATIONS = {
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    "karpenter.sh/do-not-disrupt": "true",
}
# Pending reasons that a retry cannot fix (the image itself is wrong).
FATAL_PENDING_REASONS = (
    "InvalidImageName",
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
)


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


def _result_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Kubernetes steps that return a value but print no JSON: an empty JSON object for
    the xcom sidecar once the runner succeeded (the operator adds the job's result)."""
    script = f'helical-runner "$@" || exit $?; echo "{{}}" > {XCOM_FILE}'
    return ["/bin/sh", "-c", script, "helical-runner"], argv


def _container_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "CACHE_DIR_HELICAL_PREFIX": CACHE_DIR, "HOME": CACHE_DIR}


# ------------------------------------------------------------------ docker


def docker_network(env: dict[str, str], argv: list[str]) -> str:
    """``HELICAL_DOCKER_NETWORK`` when set (compose: the internal runner network, which
    reaches the Pushgateway); otherwise no network unless the step needs one (S3 data,
    an S3 endpoint or a Pushgateway: the default bridge)."""
    chosen = os.environ.get(DOCKER_NETWORK_ENV, "").strip()
    if chosen:
        return chosen
    needs = (
        env.get("HELICAL_RUNNER_S3_ENDPOINT_URL")
        or env.get("HELICAL_RUNNER_PUSHGATEWAY")
        or any(a.startswith("s3://") for a in argv)
    )
    return "bridge" if needs else "none"


def docker_gpus(image_ref: str | None = None) -> bool:
    """Whether containers get the profile's GPUs: ``HELICAL_DOCKER_GPUS`` = ``profile``
    or ``none``; by default only a CUDA image asks for them (the CPU image runs on
    engines without a GPU runtime, where a GPU request fails the container start)."""
    setting = os.environ.get(DOCKER_GPUS_ENV, "").strip().lower()
    if setting:
        return setting == "profile"
    return "cuda" in (image_ref or image())


def docker_mounts(
    *, data_dir: Path | None, output_dir: Path | None, env: dict[str, str]
) -> list[Mount]:
    """Data (and the model store) read-only, outputs read-write, at the host paths
    (so URIs mean the same inside). Nothing else of the host."""
    mounts = []
    if data_dir:
        mounts.append(
            Mount(target=str(data_dir), source=str(data_dir), type="bind", read_only=True)
        )
    if output_dir:
        _runner_owned_folder(output_dir)
        mounts.append(
            Mount(target=str(output_dir), source=str(output_dir), type="bind", read_only=False)
        )
    store = env.get("HELICAL_RUNNER_MODEL_STORE", "")
    if store and not store.startswith("s3://"):
        mounts.append(Mount(target=store, source=store, type="bind", read_only=True))
    return mounts


def _runner_owned_folder(folder: Path) -> None:
    """The run's output folder, writable by the runner's non-root user.

    A worker running as root (the DAG's own tests, a root Celery worker) hands a
    folder it creates to the runner user; otherwise the output root must already
    be writable by uid 10001 (docs/workflow.md, Docker backend).
    """
    if folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(folder, RUNNER_UID, RUNNER_UID)
    else:
        # A non-root worker (compose: uid 50000 in the runner group) under a setgid
        # output root: the folder keeps the runner group and is writable for it.
        folder.chmod(0o2775)


class RunnerDockerOperator(RunnerStep, DockerOperator):
    """One ``helical-runner`` command in its own container of the runner image.

    Non-root, the data mounted read-only and the outputs read-write, no network
    unless configured or needed, GPUs from the profile, the container removed
    whatever happens (``auto_remove="force"``: also by ``on_kill``, which stops it).
    """

    def __init__(
        self,
        *,
        runner_args: list[str],
        job_label: str = "",
        want_json: bool = False,
        job_result: dict[str, Any] | None = None,
        data_paths: list[str] | None = None,
        output_root: str | None = None,
        job_resources: dict[str, Any] | None = None,
        timeout_s: int | None = None,
        **kwargs: Any,
    ) -> None:
        env = runner.passthrough_env()
        argv = [str(a) for a in runner_args]
        gpu = ((job_resources or {}).get("gpu") or {}) if docker_gpus(kwargs.get("image")) else {}
        entrypoint, command = _json_command(argv, to_file=None) if want_json else (None, argv)
        output_dir = Path(output_root) if output_root and "://" not in output_root else None
        kwargs.setdefault("image", image())
        kwargs.setdefault("docker_url", os.environ.get("DOCKER_HOST", "unix://var/run/docker.sock"))
        super().__init__(
            entrypoint=entrypoint,
            command=command,
            environment=_container_env(env),
            mounts=docker_mounts(
                data_dir=runner.data_folder(list(data_paths or [])), output_dir=output_dir, env=env
            ),
            mount_tmp_dir=False,
            tmp_dir="/tmp",
            user=f"{RUNNER_UID}:{RUNNER_UID}",
            network_mode=docker_network(env, argv),
            auto_remove="force",
            device_requests=(
                [DeviceRequest(count=int(gpu["count"]), capabilities=[["gpu"]])]
                if gpu.get("count")
                else []
            ),
            mem_limit=_docker_memory((job_resources or {}).get("memory")),
            labels={**RUNNER_LABELS, "helical.ai/step": argv[0] if argv else ""},
            do_xcom_push=bool(want_json or job_result),
            xcom_all=False,
            **kwargs,
        )
        self._init_step(
            runner_args=argv,
            job_label=job_label,
            want_json=want_json,
            job_result=job_result,
            data_paths=data_paths,
            output_root=output_root,
            job_resources=job_resources,
            timeout_s=timeout_s,
        )

    def on_kill(self) -> None:
        """Stop the container within seconds and remove it.

        Airflow gives ``on_kill`` a few seconds before it kills the task process,
        and the runner as PID 1 gets no default SIGTERM handling, so the
        provider's plain ``stop`` (10 s) could be cut short and leave the
        container behind; a short stop, then a forced removal, cannot.
        """
        container = getattr(self, "container", None)
        if not container or not self.hook.client_created:
            return
        self.log.info("stopping and removing runner container %s", container["Id"][:12])
        for action in (
            lambda: self.cli.stop(container["Id"], timeout=KILL_GRACE_S),
            lambda: self.cli.remove_container(container["Id"], force=True),
        ):
            try:
                action()
            except Exception as exc:  # gone already, or the engine refused: say so, go on
                self.log.warning("runner container %s: %s", container["Id"][:12], exc)

    def execute(self, context: Any) -> Any:
        ti = context.get("ti")
        if ti is not None:
            self.labels = {**(self.labels or {}), **task_instance_labels(ti)}
            self._remove_earlier_tries()
        try:
            out = super().execute(context)
        except DockerContainerFailedException as exc:
            lines = [runner_line for runner_line in (exc.logs or [])]
            lines = [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in lines]
            self._fail(docker_exit_code(exc), runner.error_line(lines) or str(exc))
        return self._finish(context, out)

    def _remove_earlier_tries(self) -> None:
        """Force-remove containers an earlier try of this task instance left behind.

        A worker that dies (SIGKILL, OOM, a node gone) never runs ``on_kill``, so its
        runner container goes on writing the same shard files; the retry must not
        run beside it. Containers are found by the task instance's labels.
        """
        filters = {"label": [f"{k}={v}" for k, v in self.labels.items() if k in TI_LABEL_KEYS]}
        try:
            stale = self.cli.containers(all=True, filters=filters)
        except Exception as exc:  # the engine unreachable: the run itself will say so
            self.log.warning("could not list earlier runner containers: %s", exc)
            return
        for container in stale:
            self.log.warning(
                "removing runner container %s left by an earlier try (%s)",
                container["Id"][:12],
                container.get("Status", ""),
            )
            try:
                self.cli.remove_container(container["Id"], force=True)
            except Exception as exc:
                self.log.warning("runner container %s: %s", container["Id"][:12], exc)


#: Labels naming the task instance a runner container belongs to.
TI_LABEL_KEYS = (
    "helical.ai/dag-id",
    "helical.ai/run-id",
    "helical.ai/task-id",
    "helical.ai/map-index",
)


def task_instance_labels(ti: Any) -> dict[str, str]:
    """Docker labels of one task instance (all tries), values as Airflow names them."""
    values = (ti.dag_id, ti.run_id, ti.task_id, str(getattr(ti, "map_index", -1)))
    return dict(zip(TI_LABEL_KEYS, values, strict=True))


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


def pod_resources(job_resources: dict[str, Any] | None) -> tuple[dict, dict, list]:
    """Limits (= requests: Guaranteed QoS), node selector and tolerations of a profile."""
    resources = job_resources or {}
    limits = {"cpu": str(resources.get("cpu", "1")), "memory": str(resources.get("memory", "4Gi"))}
    node_selector: dict[str, str] = {}
    tolerations = []
    gpu_type = profiles.gpu_type({"resources": resources})
    if gpu_type:
        limits["nvidia.com/gpu"] = str(resources["gpu"]["count"])
        label = os.environ.get(GPU_TYPE_LABEL_ENV) or DEFAULT_GPU_TYPE_LABEL
        node_selector[label] = gpu_type
        tolerations.append(
            k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        )
    return limits, node_selector, tolerations


class RunnerPodOperator(RunnerStep, KubernetesPodOperator):
    """One ``helical-runner`` command as its own pod.

    Requests = limits from the profile (GPUs via ``nvidia.com/gpu``), a node
    selector and toleration for the profile's GPU type, the IRSA service
    account, a restricted security context, annotations that keep
    cluster-autoscaler and Karpenter from evicting it, a startup timeout long
    enough for node scale-up, reattach after a worker restart (``durable``),
    the log followed to the end before the pod is deleted, and
    ``FallbackToLogsOnError`` so the runner's last line is the pod's
    termination message.
    """

    def __init__(
        self,
        *,
        runner_args: list[str],
        job_label: str = "",
        want_json: bool = False,
        job_result: dict[str, Any] | None = None,
        data_paths: list[str] | None = None,
        output_root: str | None = None,
        job_resources: dict[str, Any] | None = None,
        timeout_s: int | None = None,
        **kwargs: Any,
    ) -> None:
        argv = [str(a) for a in runner_args]
        limits, node_selector, tolerations = pod_resources(job_resources)
        if want_json:
            cmds, arguments = _json_command(argv, to_file=XCOM_FILE)
        elif job_result:
            cmds, arguments = _result_command(argv)
        else:
            cmds, arguments = ["helical-runner"], argv
        kwargs.setdefault("image", image())
        kwargs.setdefault("namespace", os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE)
        kwargs.setdefault(
            "in_cluster", os.environ.get("HELICAL_K8S_IN_CLUSTER", "true").lower() == "true"
        )
        kwargs.setdefault("startup_timeout_seconds", STARTUP_TIMEOUT_S)
        super().__init__(
            name="helical-runner",
            random_name_suffix=True,
            service_account_name=os.environ.get(SERVICE_ACCOUNT_ENV) or DEFAULT_SERVICE_ACCOUNT,
            image_pull_policy="IfNotPresent",
            cmds=cmds,
            arguments=arguments,
            env_vars=[
                k8s.V1EnvVar(name=k, value=v)
                for k, v in _container_env(runner.passthrough_env()).items()
            ],
            container_resources=k8s.V1ResourceRequirements(requests=dict(limits), limits=limits),
            node_selector=node_selector or None,
            tolerations=tolerations or None,
            annotations=dict(EVICTION_SAFE_ANNOTATIONS),
            labels=dict(RUNNER_LABELS),
            volumes=[
                k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
                k8s.V1Volume(name="cache", empty_dir=k8s.V1EmptyDirVolumeSource()),
                # the image's working directory: UCE writes scratch files there
                k8s.V1Volume(name="work", empty_dir=k8s.V1EmptyDirVolumeSource()),
            ],
            volume_mounts=[
                k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
                k8s.V1VolumeMount(name="cache", mount_path=CACHE_DIR),
                k8s.V1VolumeMount(name="work", mount_path=WORK_DIR),
            ],
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
            termination_message_policy="FallbackToLogsOnError",
            active_deadline_seconds=int(timeout_s) if timeout_s else None,
            durable=True,
            on_finish_action="delete_pod",
            get_logs=True,
            log_events_on_failure=True,
            do_xcom_push=bool(want_json or job_result),
            **kwargs,
        )
        self._init_step(
            runner_args=argv,
            job_label=job_label,
            want_json=want_json,
            job_result=job_result,
            data_paths=data_paths,
            output_root=output_root,
            job_resources=job_resources,
            timeout_s=timeout_s,
        )

    def execute(self, context: Any) -> Any:
        return self._finish(context, super().execute(context))

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None) -> None:
        """The operator's own cleanup (logs already read, pod deleted), then the
        runner's exit code, or the reason a pod never started, decides retry or not."""
        code, reason = None, ""
        if remote_pod is not None and not self._killed:
            try:
                remote_pod = self.pod_manager.read_pod(remote_pod)
            except Exception:  # deleted already, or the API is down: judge the last state seen
                self.log.warning("could not re-read pod %s", remote_pod.metadata.name)
            code = pod_exit_code(remote_pod)
            if code is None:
                reason = pending_reason(remote_pod, self._pod_events(remote_pod))
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            if code is not None:
                self._fail(code, runner.error_line(str(exc).splitlines()[1:]))
            message = f"{self.what}: runner pod did not run to the end: {reason or exc}"
            if reason.split(":")[0] in FATAL_PENDING_REASONS:
                self._fail(runner.EXIT_BAD_INPUT, message)
            self.log.warning(message)
            raise runner.RunnerTransientError(message) from exc

    def _pod_events(self, pod) -> list:
        try:
            return list(self.pod_manager.read_pod_events(pod).items or [])
        except Exception:
            return []


def pod_exit_code(pod) -> int | None:
    """The runner container's exit code from a finished pod, if it terminated."""
    statuses = getattr(getattr(pod, "status", None), "container_statuses", None) or []
    for status in statuses:
        if status.name == "base" and status.state and status.state.terminated:
            return int(status.state.terminated.exit_code)
    return None


def pending_reason(pod, events: list) -> str:
    """Why a pod never ran: its container's waiting reason (``ImagePullBackOff``...),
    the scheduler's verdict (``Unschedulable``) or the last warning event."""
    status = getattr(pod, "status", None)
    for cs in getattr(status, "container_statuses", None) or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting and waiting.reason:
            return f"{waiting.reason}: {waiting.message or ''}".rstrip(": ")
    for cond in getattr(status, "conditions", None) or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason:
            return f"{cond.reason}: {cond.message or ''}".rstrip(": ")
    warnings = [e for e in events if getattr(e, "type", "") == "Warning"]
    if warnings:
        return f"{warnings[-1].reason}: {warnings[-1].message or ''}".rstrip(": ")
    return ""
