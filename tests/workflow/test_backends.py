"""Each backend's runner operator, rendered for real without an engine or a cluster.

kubernetes: the pod RunnerPodOperator (a KubernetesPodOperator) would create,
built by the operator itself from the job the plan hands it, and validated
(strict) against the Kubernetes 1.31 schema. docker: RunnerDockerOperator's
arguments (mounts, user, network, GPUs). Pod behaviour against a faked API:
test_pod_lifecycle.py; real containers: test_docker_e2e.py.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from helical_workflow import backend, containers, jobs, local, profiles, runner

K8S_VERSION = "1.31"
SHARD = {
    "dataset": "s3://datasets/pbmc/pbmc.h5ad",
    "dataset_name": "pbmc",
    "model": "geneformer",
    "shards": [
        {
            "start": 0,
            "stop": 50000,
            "output": "s3://outputs/run1/pbmc/shards/geneformer/000000000-000050000.h5ad",
        }
    ],
    "sha256": "ab" * 32,
    "overrides": {"batch_size": 16},
    "timeout_minutes": 180,
    "run_root": "s3://outputs/run1",
}
LABELS = runner.run_labels(
    dag_id="helical_embedding", task_id="embed_gpu_nvidia_a10g", run_id="r1", shard="0:50000"
)


def _render(op) -> dict:
    pod = op.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


@pytest.fixture
def pod(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("HELICAL_RUNNER_PUSHGATEWAY", "http://pushgateway.monitoring:9091")
    (job,) = jobs.embed_jobs(
        [SHARD], dag_id="helical_embedding", task_id="embed_gpu_nvidia_a10g", run_id="r1"
    )
    op = containers.RunnerPodOperator(task_id="embed_gpu_nvidia_a10g", **job)
    spec = _render(op)
    # kept for humans only (tmp, never committed)
    rendered = tmp_path / "rendered" / "runner-pod.yaml"
    rendered.parent.mkdir()
    rendered.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


def test_pod_spec_is_valid_kubernetes(pod):
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_pod_runs_the_shard_with_the_profile_resources(pod):
    (container,) = pod["spec"]["containers"]
    assert container["args"][:2] == ["embed", "--input"]
    assert "--cells" in container["args"] and "0:50000" in container["args"]
    assert container["args"][container["args"].index("--batch-size") + 1] == "16"
    assert "dag_id=helical_embedding" in container["args"]
    res = container["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"}
    assert pod["spec"]["nodeSelector"] == {"helical.ai/gpu-type": "nvidia-a10g"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    assert pod["spec"]["activeDeadlineSeconds"] == 180 * 60
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HELICAL_RUNNER_PUSHGATEWAY"] == "http://pushgateway.monitoring:9091"
    assert not any(k.startswith("AIRFLOW") or "SECRET" in k for k in env)


def test_pod_is_locked_down(pod):
    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "helical"
    assert spec["serviceAccountName"] == "helical-runner"
    annotations = pod["metadata"]["annotations"]
    # neither cluster-autoscaler nor Karpenter may evict a running runner on scale-down
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", containers.CACHE_DIR, containers.WORK_DIR} <= mounts


def test_pod_operator_options_survive_scale_up_and_clean_up():
    op = containers.RunnerPodOperator(
        task_id="t",
        runner_args=["embed", "--input", "s3://b/x.h5ad"],
        job_resources=profiles.load_profile("uce")["resources"],
    )
    assert op.startup_timeout_seconds >= 900  # GPU node scale-up + multi-GB image pull
    assert op.on_finish_action.value == "delete_pod"
    assert op.reattach_on_restart is True  # a restarted worker finds its pod again
    assert op.get_logs is True  # the log is followed to the end before the pod is deleted
    assert op.termination_message_policy == "FallbackToLogsOnError"
    assert op.do_xcom_push is False


def test_json_commands_write_the_xcom_file_and_keep_the_exit_code():
    (job,) = jobs.validate_jobs([{"uri": "s3://b/x.h5ad", "name": "x"}])
    op = containers.RunnerPodOperator(task_id="validate", **job)
    spec = _render(op)
    kubernetes_validate.validate(spec, K8S_VERSION, strict=True)
    main = next(c for c in spec["spec"]["containers"] if c["name"] == "base")
    assert main["command"][:2] == ["/bin/sh", "-c"] and "exec helical-runner" in main["command"][2]
    assert containers.XCOM_FILE in main["command"][2]
    assert any(c["name"] == "airflow-xcom-sidecar" for c in spec["spec"]["containers"])


def test_uce_profile_lands_on_l40s_nodes():
    op = containers.RunnerPodOperator(
        task_id="t", runner_args=["embed"], job_resources=profiles.load_profile("uce")["resources"]
    )
    spec = _render(op)
    assert spec["spec"]["nodeSelector"] == {"helical.ai/gpu-type": "nvidia-l40s"}
    assert spec["spec"]["containers"][0]["resources"]["limits"]["memory"] == "48Gi"


def test_pod_exit_code_is_read_from_the_runner_container():
    from kubernetes.client import models as k8s

    def pod(code):
        state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code))
        status = k8s.V1ContainerStatus(
            name="base", state=state, image="i", image_id="", ready=False, restart_count=0
        )
        return k8s.V1Pod(status=k8s.V1PodStatus(container_statuses=[status]))

    assert containers.pod_exit_code(pod(75)) == 75
    assert containers.pod_exit_code(pod(2)) == 2
    assert containers.pod_exit_code(None) is None


# ------------------------------------------------------------------ docker


@pytest.fixture
def docker_op(tmp_path, monkeypatch):
    monkeypatch.delenv("HELICAL_DOCKER_NETWORK", raising=False)
    monkeypatch.setenv("HELICAL_DOCKER_GPUS", "profile")
    monkeypatch.delenv("HELICAL_RUNNER_PUSHGATEWAY", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    store = tmp_path / "store"
    monkeypatch.setenv("HELICAL_RUNNER_MODEL_STORE", str(store))
    shard = {
        **SHARD,
        "dataset": str(data / "pbmc.h5ad"),
        "shards": [
            {
                "start": 0,
                "stop": 10,
                "output": str(tmp_path / "runs/r1/pbmc/shards/geneformer/0-10.h5ad"),
            }
        ],
    }
    return containers.RunnerDockerOperator(
        task_id="embed_gpu_nvidia_a10g",
        runner_args=runner.embed_args(shard, labels=LABELS),
        job_resources=profiles.load_profile("geneformer")["resources"],
        data_paths=[shard["dataset"]],
        output_root=str(tmp_path / "runs"),
    ), tmp_path


def test_docker_mounts_data_read_only_and_outputs_read_write(docker_op):
    op, tmp = docker_op
    mounts = {m["Target"]: m for m in op.mounts}
    assert mounts[str(tmp / "data")]["ReadOnly"] is True
    assert mounts[str(tmp / "store")]["ReadOnly"] is True
    assert mounts[str(tmp / "runs")]["ReadOnly"] is False
    assert all(m["Source"] == m["Target"] for m in op.mounts)  # URIs mean the same inside


def test_docker_container_is_non_root_offline_removed_and_gets_gpus(docker_op):
    op, _ = docker_op
    assert op.image == containers.DEFAULT_IMAGE
    assert op.user == "10001:10001"
    assert op.network_mode == "none"
    assert op.auto_remove == "force"  # removed whatever happens, also by on_kill
    assert op.command[:2] == ["embed", "--input"]
    (gpus,) = op.device_requests
    assert gpus["Count"] == 1 and gpus["Capabilities"] == [["gpu"]]
    assert op.mem_limit == "24g"
    assert op.environment["CACHE_DIR_HELICAL_PREFIX"] == containers.CACHE_DIR


def test_docker_json_command_squeezes_to_one_line_and_keeps_exit_code():
    (job,) = jobs.validate_jobs([{"uri": "/d/x.h5ad", "name": "x"}])
    op = containers.RunnerDockerOperator(task_id="validate", **job)
    assert op.entrypoint[:2] == ["/bin/sh", "-c"] and "exit $rc" in op.entrypoint[2]
    assert op.do_xcom_push is True and op.xcom_all is False
    assert [m["Target"] for m in op.mounts] == ["/d"]
    # the one-line JSON the container prints last becomes the step's result
    assert op._finish({}, '{"n_cells": 5}') == {"n_cells": 5, "uri": "/d/x.h5ad", "name": "x"}


def test_docker_network_honours_the_setting(monkeypatch):
    monkeypatch.delenv("HELICAL_RUNNER_PUSHGATEWAY", raising=False)
    monkeypatch.delenv("HELICAL_DOCKER_NETWORK", raising=False)
    assert containers.docker_network({}, ["validate", "--input", "/d/x.h5ad"]) == "none"
    assert containers.docker_network({}, ["validate", "--input", "s3://b/x.h5ad"]) == "bridge"
    # metrics need the Pushgateway: never silently cut off
    assert (
        containers.docker_network({"HELICAL_RUNNER_PUSHGATEWAY": "http://pg:9091"}, []) == "bridge"
    )
    monkeypatch.setenv("HELICAL_DOCKER_NETWORK", "helical-runner")
    assert containers.docker_network({}, ["validate", "--input", "/d/x.h5ad"]) == "helical-runner"
    op = containers.RunnerDockerOperator(task_id="t", runner_args=["validate"])
    assert op.network_mode == "helical-runner"


def test_docker_exit_code_parsed_from_the_operator_error():
    from airflow.providers.docker.exceptions import DockerContainerFailedException

    exc = DockerContainerFailedException(
        "Docker container failed: {'StatusCode': 75, 'Error': None}"
    )
    assert containers.docker_exit_code(exc) == 75


def test_backend_is_chosen_by_configuration(monkeypatch):
    monkeypatch.delenv("HELICAL_BACKEND", raising=False)
    assert backend.backend_name() == "local"
    assert backend.runner_operator() is local.LocalRunnerOperator
    monkeypatch.setenv("HELICAL_BACKEND", "docker")
    assert backend.runner_operator() is containers.RunnerDockerOperator
    monkeypatch.setenv("HELICAL_BACKEND", "kubernetes")
    assert backend.runner_operator() is containers.RunnerPodOperator
    for name in ("docker", "kubernetes", "LOCAL"):
        monkeypatch.setenv("HELICAL_BACKEND", name)
        assert backend.backend_name() == name.lower()
    monkeypatch.setenv("HELICAL_BACKEND", "slurm")
    with pytest.raises(ValueError, match="slurm"):
        backend.backend_name()


def test_the_cpu_image_asks_for_no_gpu_unless_told(monkeypatch):
    monkeypatch.delenv("HELICAL_DOCKER_GPUS", raising=False)
    gpu = profiles.load_profile("geneformer")["resources"]
    op = containers.RunnerDockerOperator(task_id="t", runner_args=["embed"], job_resources=gpu)
    assert op.device_requests == []  # helical-runner:0.1.0-cpu on an engine without GPUs
    cuda = containers.RunnerDockerOperator(
        task_id="t", runner_args=["embed"], job_resources=gpu, image="helical-runner:0.1.0-cuda"
    )
    assert cuda.device_requests[0]["Count"] == 1


def test_result_steps_return_through_the_xcom_sidecar_after_success():
    merge = {
        "dataset": "s3://d/x.h5ad",
        "dataset_name": "x",
        "model": "uce",
        "shards": ["s3://o/r/x/shards/uce/0-5.h5ad"],
        "output": "s3://o/r/x/embeddings/uce.h5ad",
        "run_root": "s3://o/r",
    }
    (job,) = jobs.merge_jobs([merge])
    op = containers.RunnerPodOperator(task_id="merge", **job)
    spec = _render(op)
    kubernetes_validate.validate(spec, K8S_VERSION, strict=True)
    main = next(c for c in spec["spec"]["containers"] if c["name"] == "base")
    # the runner's exit code decides; only a success leaves the (empty) result
    assert "|| exit $?" in main["command"][2] and containers.XCOM_FILE in main["command"][2]
    assert op.do_xcom_push is True
    assert op._finish({}, {}) == job["job_result"]
