"""The whole DAG with HELICAL_BACKEND=docker on a real Docker engine.

Debian's engine is started by scripts/docker-engine.sh and the runner image
built by scripts/docker-image.sh (cached: a second build is a cache hit).
A second real Airflow (scheduler, api-server, dag-processor) parses the DAG
with the docker backend; every runner step is a RunnerDockerOperator
starting a container of the runner image. Marker ``docker`` (run by
``make test``; ``-m 'not docker'`` leaves it out).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import airflow_client.client as af
import pytest
from harness import REPO, Airflow, DockerEvents

from conftest import GOOD_RUN_MODELS, RUNNER_PY, good_run_conf, run_root_of

pytestmark = pytest.mark.docker

RUN_TIMEOUT = 900
LABEL = "app.kubernetes.io/name=helical-runner"


def docker(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, check=check, timeout=120
    )


@pytest.fixture(scope="module")
def engine() -> dict:
    """The private engine and the runner image (built once, then cached)."""
    script = str(REPO / "scripts/docker-engine.sh")
    was_running = subprocess.run([script, "status"], capture_output=True).returncode == 0
    out = subprocess.run(
        [str(REPO / "scripts/docker-engine.sh"), "start"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    host = out.stdout.strip().split("=", 1)[1]
    env = {**os.environ, "DOCKER_HOST": host}
    start = time.monotonic()
    build = subprocess.run(
        [str(REPO / "scripts/docker-image.sh")], env=env, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr[-3000:]
    print(f"runner image ready in {time.monotonic() - start:.0f} s")
    yield env
    if not was_running:
        subprocess.run([script, "stop"], capture_output=True)


class ContainerWatch:
    """Every runner container the engine runs: its create events (the engine's own
    log) and, while each lives, how it was configured (docker inspect)."""

    def __init__(self, env: dict):
        self.env = env
        self.events = DockerEvents(env, LABEL)
        self.inspected: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.is_set():
            ids = docker("ps", "-q", "--no-trunc", "--filter", f"label={LABEL}", env=self.env)
            for cid in ids.stdout.split():
                if cid not in self.inspected:
                    got = docker("inspect", cid, env=self.env, check=False)
                    if got.returncode == 0:
                        self.inspected[cid] = json.loads(got.stdout)[0]
            time.sleep(0.2)

    def running(self, step: str) -> list[str]:
        ids = docker(
            "ps",
            "-q",
            "--filter",
            f"label={LABEL}",
            "--filter",
            f"label=helical.ai/step={step}",
            env=self.env,
        )
        return ids.stdout.split()

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.events.close()


@pytest.fixture(scope="module")
def shared(data_dir, runner_env):
    """Data, model store and outputs where the runner's user (uid 10001) can reach them,
    as a user would set them up: pytest's own folders are private to root (0700)."""
    root = Path(tempfile.mkdtemp(prefix="helical-docker-e2e-", dir="/var/tmp"))
    root.chmod(0o755)
    shutil.copytree(data_dir, root / "data")
    shutil.copytree(runner_env["HELICAL_RUNNER_MODEL_STORE"], root / "model-store")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    (root / "runs").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_airflow(engine, workdir, runner_env, shared):
    outputs = shared / "runs"
    env = {
        **runner_env,
        "HELICAL_RUNNER_MODEL_STORE": str(shared / "model-store"),
        "HELICAL_BACKEND": "docker",
        "DOCKER_HOST": engine["DOCKER_HOST"],
        "HELICAL_OUTPUT_ROOT": str(outputs),
        "HELICAL_RETRY_DELAY_S": "1",
    }
    deployment = Airflow(workdir / "airflow-docker-home", parallelism=2, extra_env=env)
    with deployment:
        yield deployment


@pytest.fixture(scope="module")
def watch(engine):
    w = ContainerWatch(engine)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def docker_good_run(docker_airflow, watch, shared):
    start = time.monotonic()
    run_id = docker_airflow.trigger(good_run_conf(shared / "data"))
    state = docker_airflow.wait(run_id, RUN_TIMEOUT)
    elapsed = time.monotonic() - start
    print(f"docker backend: 2 datasets x 2 models x 2 shards in {elapsed:.0f} s")
    return run_id, state


def _tis(airflow, run_id, task_id=None):
    return [t for t in airflow.task_instances(run_id) if task_id in (None, t.task_id)]


def test_every_task_succeeds_each_step_in_its_own_container(docker_airflow, docker_good_run, watch):
    run_id, state = docker_good_run
    bad = {
        (t.task_id, t.map_index): str(t.state)
        for t in _tis(docker_airflow, run_id)
        if str(t.state.value if t.state else None) not in ("success", "skipped")
    }
    assert state == "success", bad
    created = watch.events("create")
    steps = [e["Actor"]["Attributes"].get("helical.ai/step") for e in created]
    # 2 validate + 4 embed (warm: 2 shards each) + 4 merge + 2 report + 1 provenance,
    # each its own container
    for step, n in {"validate": 2, "embed": 4, "merge": 4, "report": 2, "provenance": 1}.items():
        assert steps.count(step) >= n, (step, steps)
    seen = list(watch.inspected.values())
    assert len(seen) >= 5, "too few containers observed while running"
    data_mounts = []
    for c in seen:
        assert c["Config"]["User"] == "10001:10001"  # non-root
        assert c["HostConfig"]["NetworkMode"] == "none"  # nothing to reach for local data
        data_mounts += [m for m in c["Mounts"] if "/data/" in m["Destination"] + "/"]
    assert data_mounts, "no container had the data mounted"
    assert all(m["RW"] is False for m in data_mounts), data_mounts  # data read-only
    # nothing left behind
    assert docker("ps", "-aq", "--filter", f"label={LABEL}", env=watch.env).stdout.strip() == ""


@pytest.mark.parametrize("dataset", ["pbmc_a", "pbmc_b"])
@pytest.mark.parametrize("model", GOOD_RUN_MODELS)
def test_outputs_equal_the_local_backends(
    airflow, good_run, docker_airflow, docker_good_run, dataset, model
):
    assert good_run[1] == "success" and docker_good_run[1] == "success"
    local = run_root_of(airflow, good_run[0]) / dataset / "embeddings" / f"{model}.h5ad"
    other = (
        run_root_of(docker_airflow, docker_good_run[0]) / dataset / "embeddings" / f"{model}.h5ad"
    )
    code = (
        "import anndata, numpy as np, sys; a, b = (anndata.read_h5ad(p) for p in sys.argv[1:3]);"
        "k = sys.argv[3]; assert list(a.obs_names) == list(b.obs_names), 'rows differ';"
        "d = float(np.abs(np.asarray(a.obsm[k]) - np.asarray(b.obsm[k])).max()); print(d);"
        "assert d <= 1e-5, d"
    )
    out = subprocess.run(
        [str(RUNNER_PY), "-c", code, str(local), str(other), f"X_{model}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_bad_dataset_fails_at_validate_without_retry(docker_airflow, shared):
    run_id = docker_airflow.trigger(
        {"datasets": [str(shared / "data" / "corrupt" / "corrupt.h5ad")], "models": ["geneformer"]}
    )
    assert docker_airflow.wait(run_id, RUN_TIMEOUT) == "failed"
    (bad,) = _tis(docker_airflow, run_id, "validate")
    assert str(bad.state.value) == "failed" and bad.try_number == 1
    log = docker_airflow.log(run_id, bad)
    assert "not retried" in log and "helical-runner" in log


def _first_running(watch, step, deadline_s=240) -> str:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ids = watch.running(step)
        if ids:
            return ids[0]
        time.sleep(0.2)
    raise TimeoutError(f"no {step} container started within {deadline_s} s")


def test_a_runner_killed_in_its_container_is_retried(docker_airflow, watch, shared):
    run_id = docker_airflow.trigger(
        {"datasets": [str(shared / "data" / "small_d" / "small_d.h5ad")], "models": ["geneformer"]}
    )
    cid = _first_running(watch, "embed")
    docker("kill", "--signal", "KILL", cid, env=watch.env)  # the runner (PID 1) dies
    assert docker_airflow.wait(run_id, RUN_TIMEOUT) == "success"
    (embed,) = _tis(docker_airflow, run_id, "embed_gpu_nvidia_a10g")
    assert embed.try_number == 2, "killed once, retried once"
    first_try = docker_airflow.api(af.TaskInstanceApi).get_log(
        "helical_embedding", run_id, embed.task_id, 1, map_index=embed.map_index, full_content=True
    )
    assert "exit 137" in str(first_try.content)


def test_marking_an_embed_task_failed_stops_and_removes_its_container(
    docker_airflow, watch, shared
):
    run_id = docker_airflow.trigger(
        {"datasets": [str(shared / "data" / "small_c" / "small_c.h5ad")], "models": ["geneformer"]}
    )
    cid = _first_running(watch, "embed")
    (embed,) = [
        t for t in _tis(docker_airflow, run_id) if t.task_id.startswith("embed_gpu_nvidia_a10g")
    ]
    docker_airflow.api(af.TaskInstanceApi).patch_task_instance(
        "helical_embedding",
        run_id,
        embed.task_id,
        af.PatchTaskInstanceBody(new_state=af.TaskInstanceState.FAILED),
        map_index=embed.map_index,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if docker("inspect", cid, env=watch.env, check=False).returncode != 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the container outlived its task (on_kill did not stop and remove it)")
    docker_airflow.wait(run_id, RUN_TIMEOUT)
    (embed,) = _tis(docker_airflow, run_id, "embed_gpu_nvidia_a10g")
    assert str(embed.state.value) == "failed"
