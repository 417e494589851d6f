"""Each backend's runner task, rendered for real without an engine or a cluster.

kubernetes: the pod the KubernetesPodOperator would create, built by the
operator itself and validated (strict) against the Kubernetes 1.31 schema.
docker: the DockerOperator's arguments (mounts, user, network, GPUs).
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from helical_workflow import backend, containers, profiles, runner

K8S_VERSION = "1.31"
SHARD = {
    "dataset": "s3://datasets/pbmc/pbmc.h5ad",
    "dataset_name": "pbmc",
    "model": "geneformer",
    "start": 0,
    "stop": 50000,
    "output": "s3://outputs/run1/pbmc/shards/geneformer/000000000-000050000.h5ad",
    "sha256": "ab" * 32,
    "overrides": {"batch_size": 16},
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
    profile = profiles.load_profile("geneformer")
    op = containers.kubernetes_operator(
        task_id="embed_gpu_nvidia_a10g",
        argv=runner.embed_args(SHARD, labels=LABELS),
        profile=profile,
        env=runner.passthrough_env(),
        timeout_s=profile["timeout_minutes"] * 60,
    )
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
    assert (
        pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    )
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", containers.CACHE_DIR} <= mounts


def test_pod_operator_options_survive_scale_up_and_clean_up():
    op = containers.kubernetes_operator(
        task_id="t",
        argv=["validate", "--input", "s3://b/x.h5ad", "--json"],
        profile=profiles.load_profile("uce"),
        env={},
    )
    assert op.startup_timeout_seconds >= 900  # GPU node scale-up + multi-GB image pull
    assert op.on_finish_action.value == "delete_pod"
    assert op.do_xcom_push is False


def test_json_commands_write_the_xcom_file_and_keep_the_exit_code():
    op = containers.kubernetes_operator(
        task_id="validate",
        argv=runner.validate_args("s3://b/x.h5ad"),
        profile=profiles.load_profile("scgpt"),
        env={},
        want_json=True,
    )
    spec = _render(op)
    kubernetes_validate.validate(spec, K8S_VERSION, strict=True)
    main = next(c for c in spec["spec"]["containers"] if c["name"] == "base")
    assert main["command"][:2] == ["/bin/sh", "-c"] and "exec helical-runner" in main["command"][2]
    assert containers.XCOM_FILE in main["command"][2]
    assert any(c["name"] == "airflow-xcom-sidecar" for c in spec["spec"]["containers"])


def test_uce_profile_lands_on_l40s_nodes():
    op = containers.kubernetes_operator(
        task_id="t", argv=["embed"], profile=profiles.load_profile("uce"), env={}
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
def docker_op(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    store = tmp_path / "store"
    shard = {
        **SHARD,
        "dataset": str(data / "pbmc.h5ad"),
        "output": str(tmp_path / "runs/r1/pbmc/shards/geneformer/0-10.h5ad"),
    }
    return containers.docker_operator(
        task_id="embed_gpu_nvidia_a10g",
        argv=runner.embed_args(shard, labels=LABELS),
        profile=profiles.load_profile("geneformer"),
        env={"HELICAL_RUNNER_MODEL_STORE": str(store)},
        data_dir=runner.data_folder([shard["dataset"]]),
        output_dir=tmp_path / "runs",
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
    assert op.auto_remove == "success"
    assert op.command[:2] == ["embed", "--input"]
    (gpus,) = op.device_requests
    assert gpus["Count"] == 1 and gpus["Capabilities"] == [["gpu"]]
    assert op.mem_limit == "24g"
    assert op.environment["CACHE_DIR_HELICAL_PREFIX"] == containers.CACHE_DIR


def test_docker_json_command_squeezes_to_one_line_and_keeps_exit_code():
    op = containers.docker_operator(
        task_id="validate",
        argv=runner.validate_args("/d/x.h5ad"),
        profile=profiles.load_profile("scgpt"),
        env={},
        data_dir=Path("/d"),
        output_dir=None,
        want_json=True,
    )
    assert op.entrypoint[:2] == ["/bin/sh", "-c"] and "exit $rc" in op.entrypoint[2]
    assert op.do_xcom_push is True and op.xcom_all is False


def test_docker_exit_code_parsed_from_the_operator_error():
    from airflow.providers.docker.exceptions import DockerContainerFailedException

    exc = DockerContainerFailedException(
        "Docker container failed: {'StatusCode': 75, 'Error': None}"
    )
    assert containers.docker_exit_code(exc) == 75


def test_backend_is_chosen_by_configuration(monkeypatch):
    monkeypatch.delenv("HELICAL_BACKEND", raising=False)
    assert backend.backend_name() == "local"
    for name in ("docker", "kubernetes", "LOCAL"):
        monkeypatch.setenv("HELICAL_BACKEND", name)
        assert backend.backend_name() == name.lower()
    monkeypatch.setenv("HELICAL_BACKEND", "slurm")
    with pytest.raises(ValueError, match="slurm"):
        backend.backend_name()
